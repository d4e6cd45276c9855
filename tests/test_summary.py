"""summarize() against the 1998 paper's own counts (section II-B), and honest counts for the
variants, all computed from the modules."""

import json

import pytest
import torch
from torch import nn

from lenet5.models import ARCHITECTURES, LAYER_NAMES, build
from lenet5.models.layers import MaskedConv2d
from lenet5.summary import LayerRow, Summary, format_table, summarize

# Section II-B: (output shape, trainable parameters, fixed parameters, connections).
PAPER = {
    "c1": ((6, 28, 28), 156, 0, 122_304),
    "s2": ((6, 14, 14), 12, 0, 5_880),
    "c3": ((16, 10, 10), 1_516, 0, 151_600),
    "s4": ((16, 5, 5), 32, 0, 2_000),
    "c5": ((120, 1, 1), 48_120, 0, 48_120),
    "f6": ((84,), 10_164, 0, 10_164),
    "output": ((10,), 0, 840, 840),
}


def test_classic_matches_the_paper_layer_by_layer():
    summary = summarize(build("classic"))
    assert tuple(row.name for row in summary.layers) == LAYER_NAMES
    for row in summary.layers:
        assert (row.output_shape, row.trainable, row.fixed, row.connections) == PAPER[row.name]
    assert summary.trainable == 60_000
    assert summary.connections == 340_908
    assert summary.fixed == 840


def test_counts_come_from_the_modules():
    # Give C3 full connectivity: the counts must follow the modules, not a typed-in table.
    model = build("classic")
    model.c3.conv = MaskedConv2d(torch.ones(16, 6, dtype=torch.bool))
    row = summarize(model).layers[LAYER_NAMES.index("c3")]
    assert row.trainable == 16 * 6 * 25 + 16
    assert row.connections == 16 * 10 * 10 * (6 * 25 + 1)


def test_twin_counts():
    summary = {row.name: row for row in summarize(build("twin")).layers}
    branch = 16 * 10 * 10 * (6 * 5 * 5 + 1) + 16 * 5 * 5 * 2 * 2  # convolution, max-pool
    assert summary["c3"].connections == 2 * branch + 16 * 5 * 5 * 2  # two branches, their sum
    assert summary["c3"].trainable == 2 * (16 * 6 * 5 * 5 + 16)
    assert summary["s2"].connections == 6 * 14 * 14 * 2 * 2  # max-pool: k * k inputs, no bias
    assert summary["s4"].connections == 0 and summary["s4"].trainable == 0


def test_modern_counts_batch_norm_statistics_as_fixed():
    model = build("modern")
    summary = summarize(model)
    statistics = sum(
        m.running_mean.numel() + m.running_var.numel()
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    )
    assert summary.fixed == statistics
    assert summary.trainable <= 62_000


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_totals_equal_the_models_parameters(name):
    model = build(name)
    summary = summarize(model)
    assert summary.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert summary.connections > 0
    assert summary.input_shape == (1, 32, 32)


def test_summarize_leaves_the_model_untouched(capsys):
    model = build("modern").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summarize(model)
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert capsys.readouterr().out == ""


def test_to_dict_is_json_ready():
    summary = summarize(build("classic"))
    data = json.loads(json.dumps(summary.to_dict()))
    assert data["totals"] == {"trainable": 60_000, "fixed": 840, "connections": 340_908}
    assert [layer["name"] for layer in data["layers"]] == list(LAYER_NAMES)
    assert data["layers"][0]["output_shape"] == [6, 28, 28]


def test_format_table():
    table = format_table(summarize(build("classic")))
    lines = table.splitlines()
    assert "60,000" in lines[-1] and "340,908" in lines[-1] and lines[-1].startswith("total")
    for name in LAYER_NAMES:
        assert any(line.startswith(name) for line in lines)
    assert "122,304" in table and "151,600" in table
    # Aligned: the counts' columns end at the same place on every row below the title.
    assert len({len(line) for line in lines[1:]}) == 1


def test_summary_is_frozen():
    summary = Summary("m", (1, 32, 32), (LayerRow("c1", (6, 28, 28), 1, 0, 2),))
    with pytest.raises(AttributeError):
        summary.model = "other"


class Doubling(nn.Module):
    def forward(self, x):
        return 2 * x


def test_unknown_module_type_is_refused():
    model = build("twin")
    model.f6[2] = Doubling()
    with pytest.raises(TypeError, match="Doubling"):
        summarize(model)
