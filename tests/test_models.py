"""The three networks against independent references: the 1998 paper's Table I, constants and
initialisation for classic; a hand-written functional forward for twin; the API contract."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lenet5.models import ARCHITECTURES, LAYER_NAMES, Classic, Modern, Twin, activations, build
from lenet5.models.classic import DIGIT_BITMAPS, digit_bitmaps
from lenet5.models.layers import MaskedConv2d, Squash, Subsampling

NAMES = sorted(ARCHITECTURES)

# Table I of the paper, typed from the paper as lists of S2 maps per C3 map.
PAPER_TABLE_I = [
    [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [0, 4, 5], [0, 1, 5],
    [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [0, 3, 4, 5], [0, 1, 4, 5], [0, 1, 2, 5],
    [0, 1, 3, 4], [1, 2, 4, 5], [0, 2, 3, 5],
    [0, 1, 2, 3, 4, 5],
]  # fmt: skip


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def images(n: int, seed: int = 0) -> torch.Tensor:
    # Inputs in the paper's range: background -0.1, foreground 1.175.
    g = torch.Generator().manual_seed(seed)
    return -0.1 + 1.275 * torch.rand(n, 1, 32, 32, generator=g)


# --- classic: the paper's layers ---------------------------------------------------------


def test_c3_connection_table_is_table_one():
    table = Classic().c3.conv.table
    expected = torch.zeros(16, 6, dtype=torch.bool)
    for c3_map, s2_maps in enumerate(PAPER_TABLE_I):
        expected[c3_map, s2_maps] = True
    assert torch.equal(table, expected)
    # And the dense kernel bank is nonzero exactly where the table connects.
    dense = Classic().c3.conv.dense_weight()
    assert torch.equal(dense.abs().sum(dim=(2, 3)) > 0, expected)


def test_c3_equals_sum_of_per_map_convolutions():
    conv = Classic().c3.conv
    x = torch.randn(3, 6, 14, 14)
    kernels = iter(conv.weight)  # row-major order of the table
    maps = []
    for c3_map, s2_maps in enumerate(PAPER_TABLE_I):
        total = conv.bias[c3_map]
        for s2_map in s2_maps:
            kernel = next(kernels).view(1, 1, 5, 5)
            total = total + F.conv2d(x[:, s2_map : s2_map + 1], kernel)
        maps.append(total)
    expected = torch.cat(maps, dim=1)
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.Adam(params, lr=1e-2, weight_decay=1e-2),
        lambda params: torch.optim.SGD(params, lr=1e-1, momentum=0.9, weight_decay=1e-2),
    ],
    ids=["adam", "sgd"],
)
def test_masked_c3_weights_stay_zero_under_training(make_optimizer):
    torch.manual_seed(0)
    model = Classic()
    optimizer = make_optimizer(model.parameters())
    before = model.c3.conv.dense_weight().detach().clone()
    x, y = images(8), torch.arange(8) % 10
    for _ in range(5):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    table = model.c3.conv.table
    after = model.c3.conv.dense_weight().detach()
    assert torch.all(after[~table] == 0)
    assert not torch.allclose(after[table], before[table])  # the real kernels did train
    assert trainable(model) == 60_000
    assert model.c3.conv.weight.shape == (60, 5, 5)


def test_squashing_function():
    f = Squash()
    values = f(torch.tensor([1.0, -1.0, 0.0]))
    torch.testing.assert_close(values, torch.tensor([1.0, -1.0, 0.0]), atol=1e-4, rtol=0)
    # Bounded by A = 1.7159.
    assert f(torch.tensor(100.0)).item() == pytest.approx(1.7159)


def test_subsampling_is_coefficient_times_block_sum_plus_bias():
    layer = Subsampling(2)
    x = torch.randn(3, 2, 4, 6)
    blocks = x.view(3, 2, 2, 2, 3, 2).sum(dim=(3, 5))  # sum of each 2x2 block
    expected = blocks * layer.weight.view(1, 2, 1, 1) + layer.bias.view(1, 2, 1, 1)
    torch.testing.assert_close(layer(x), expected)


def test_rbf_prototypes_are_fixed_plus_minus_one_bitmaps():
    model = Classic()
    prototypes = model.output.prototypes
    assert prototypes.shape == (10, 84)
    assert set(prototypes.unique().tolist()) == {-1.0, 1.0}
    assert not prototypes.requires_grad
    assert all(p is not prototypes for p in model.parameters())
    assert "output.prototypes" in model.state_dict()
    assert not any(name.startswith("output") for name, _ in model.named_parameters())
    distances = torch.cdist(prototypes, prototypes, p=0)  # differing pixels per pair
    off_diagonal = distances[~torch.eye(10, dtype=torch.bool)]
    assert off_diagonal.min() >= 8  # distinct, and not by a pixel or two


def test_rbf_bitmaps_are_seven_by_twelve():
    bitmaps = digit_bitmaps()
    assert len(bitmaps) == 10
    for bitmap in bitmaps:
        assert len(bitmap) == 12
        assert all(len(row) == 7 and set(row) <= {"#", "."} for row in bitmap)


def test_docs_show_the_same_bitmaps():
    docs = Path(__file__).resolve().parents[1] / "docs" / "networks.md"
    if not docs.exists():
        pytest.skip("docs/networks.md not present")
    # The drawing in the source, digit labels included, appears verbatim in the docs.
    assert DIGIT_BITMAPS.strip("\n") in docs.read_text()


def test_penalties_are_negated_scores_and_nonnegative():
    model = Classic()
    x = images(5)
    penalties = model.penalties(x)
    assert torch.equal(penalties, -model(x))
    assert torch.all(penalties >= 0)
    # Penalty i is the squared distance from F6's output to prototype i.
    f6 = activations(model, x)["f6"]
    expected = ((f6[:, None, :] - model.output.prototypes) ** 2).sum(-1)
    torch.testing.assert_close(penalties, expected)


def fan_in_layers(model: Classic):
    """(name, weight and bias values, fan-in) per unit group, fan-in typed from the paper."""
    yield "c1", [model.c1.conv.weight, model.c1.conv.bias], 25
    yield "s2", [model.s2.subsample.weight, model.s2.subsample.bias], 4
    conv = model.c3.conv
    kernels = iter(conv.weight)
    for c3_map, s2_maps in enumerate(PAPER_TABLE_I):
        own = [next(kernels) for _ in s2_maps]
        yield f"c3 map {c3_map}", [*own, conv.bias[c3_map : c3_map + 1]], 25 * len(s2_maps)
    yield "s4", [model.s4.subsample.weight, model.s4.subsample.bias], 4
    yield "c5", [model.c5.conv.weight, model.c5.conv.bias], 16 * 5 * 5
    yield "f6", [model.f6.linear.weight, model.f6.linear.bias], 120


def test_classic_initialisation_is_uniform_in_2_4_over_fan_in():
    torch.manual_seed(0)
    model = Classic()
    c3_fan_ins = set()
    for name, tensors, fan_in in fan_in_layers(model):
        values = torch.cat([t.detach().flatten() for t in tensors])
        bound = 2.4 / fan_in
        assert values.abs().max() <= bound, name
        if values.numel() >= 50:  # enough draws to reach the edges of the range
            assert values.abs().max() > 0.9 * bound, name
        if name.startswith("c3"):
            c3_fan_ins.add(fan_in)
    assert c3_fan_ins == {75, 100, 150}
    # The subsampling layers have only 12 and 32 values each: check the fill over many draws.
    draws = torch.cat([Subsampling(16).weight.detach() for _ in range(20)])
    assert draws.abs().max() > 0.9 * 2.4 / 4


def test_masked_conv_connected_inverts_dense_weight():
    conv = Classic().c3.conv
    assert torch.equal(conv.connected(conv.dense_weight()), conv.weight)
    marked = torch.arange(16 * 6).view(16, 6, 1, 1).expand(16, 6, 5, 5)  # pair id everywhere
    pair_ids = conv.connected(marked)[:, 0, 0]
    expected = [6 * c3_map + s2_map for c3_map, maps in enumerate(PAPER_TABLE_I) for s2_map in maps]
    assert pair_ids.tolist() == expected


def test_masked_conv_fan_in_per_map():
    conv = MaskedConv2d(((1, 1, 0), (1, 1, 1)), kernel_size=3)
    assert conv.fan_in().tolist() == [18, 27]
    assert conv.weight.shape == (5, 3, 3)


# --- twin: against the original written out functionally ----------------------------------


def test_twin_matches_functional_computation():
    torch.manual_seed(0)
    model = Twin()
    x = images(4)
    conv_c1, conv_a, conv_b = model.c1[0], model.c3.branches[0][0], model.c3.branches[1][0]
    conv_c5, linear_f6, linear_out = model.c5[0], model.f6[1], model.output

    h = F.max_pool2d(F.relu(F.conv2d(x, conv_c1.weight, conv_c1.bias)), 2)
    a = F.max_pool2d(F.relu(F.conv2d(h, conv_a.weight, conv_a.bias)), 2)
    b = F.max_pool2d(F.relu(F.conv2d(h, conv_b.weight, conv_b.bias)), 2)
    h = F.relu(F.conv2d(a + b, conv_c5.weight, conv_c5.bias)).view(4, -1)
    h = F.relu(F.linear(h, linear_f6.weight, linear_f6.bias))
    logits = F.linear(h, linear_out.weight, linear_out.bias)

    torch.testing.assert_close(model(x), logits)
    # The original returns log_softmax of these; cross-entropy on logits is the same loss.
    y = torch.tensor([3, 1, 4, 1])
    torch.testing.assert_close(
        F.cross_entropy(model(x), y), F.nll_loss(F.log_softmax(logits, dim=1), y)
    )


def test_twin_has_the_original_parameter_count():
    # 156 + 2 * 2,416 + 48,120 + 10,164 + 850, as activatedgeek/LeNet-5.
    assert trainable(Twin()) == 156 + 2 * (16 * 6 * 25 + 16) + 48_120 + 10_164 + 850


# --- modern ----------------------------------------------------------------------------


def test_modern_fits_the_budget_and_keeps_the_shape():
    model = Modern()
    assert trainable(model) <= 62_000
    model.eval()
    shapes = {name: tuple(a.shape[1:]) for name, a in activations(model, images(2)).items()}
    assert shapes["c1"][0] == 6 and shapes["c3"][0] == 16
    assert shapes["c5"][0] == 120 and shapes["f6"] == (84,)


# --- all networks: the shared contract ------------------------------------------------------

EXPECTED_SHAPES = {
    "classic": {"c3": (16, 10, 10), "s4": (16, 5, 5)},
    "modern": {"c3": (16, 10, 10), "s4": (16, 5, 5)},
    # Twin pools inside each C3 branch before the sum; its s4 is an identity.
    "twin": {"c3": (16, 5, 5), "s4": (16, 5, 5)},
}
COMMON_SHAPES = {
    "c1": (6, 28, 28),
    "s2": (6, 14, 14),
    "c5": (120, 1, 1),
    "f6": (84,),
    "output": (10,),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [1, 7])
def test_output_shape(name, batch):
    model = build(name).eval()  # eval: batch norm cannot train on a batch of one
    assert model(images(batch)).shape == (batch, 10)
    if batch > 1:
        assert model.train()(images(batch)).shape == (batch, 10)


@pytest.mark.parametrize("name", NAMES)
def test_activations_by_layer_name(name):
    model = build(name).eval()
    x = images(3)
    acts = activations(model, x)
    assert tuple(acts) == LAYER_NAMES
    expected = {**COMMON_SHAPES, **EXPECTED_SHAPES[name]}
    for layer, tensor in acts.items():
        assert tuple(tensor.shape) == (3, *expected[layer]), layer
    # The last stage is the forward pass (classic's output layer gives the penalties).
    sign = -1 if name == "classic" else 1
    torch.testing.assert_close(sign * acts["output"], model(x))


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = build(name)
    F.cross_entropy(model(images(16)), torch.arange(16) % 10).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name
    if name == "classic":  # each of C3's 60 kernels, not only the tensor as a whole
        assert torch.all(model.c3.conv.weight.grad.abs().sum(dim=(1, 2)) > 0)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    source, target = build(name).eval(), build(name).eval()
    target.load_state_dict(source.state_dict())
    x = images(2)
    torch.testing.assert_close(target(x), source(x))


def test_build_and_registry():
    assert set(ARCHITECTURES) == {"classic", "twin", "modern"}
    for name, cls in ARCHITECTURES.items():
        model = build(name)
        assert type(model) is cls
        assert model.input_size == 32
        assert all(hasattr(model, layer) for layer in LAYER_NAMES)
    with pytest.raises(ValueError, match="classic, modern, twin"):
        build("lenet7")


def test_classic_trainable_parameters_are_exactly_the_papers():
    assert trainable(Classic()) == 60_000
