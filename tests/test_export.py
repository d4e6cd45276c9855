"""ONNX export of all three networks, checked against an independent reference: ONNX Runtime
run here on the exported file, compared with PyTorch on the whole MNIST test set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lenet5 import cli, data, experiment, export, predict, runs
from lenet5.train import TrainConfig

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# One input mapping per network, so every InputSpec field travels through the metadata.
SETUPS = {
    "classic": (data.InputSpec("pad", "paper"), "map"),  # the paper's mapping and criterion
    "twin": (data.InputSpec("resize", "unit"), "cross_entropy"),  # the reference recipe's
    "modern": (data.InputSpec("pad", "standard"), "cross_entropy"),
}
TRAIN_IMAGES, EVAL_IMAGES = 2000, 500  # 1 epoch: enough for clear-cut predictions


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mnist_dir, test_split):
    """arch -> (run directory, ExportResult): tiny runs, trained and exported once."""
    train = data.load_split("mnist", "train", mnist_dir)
    root = tmp_path_factory.mktemp("export")
    results = {}
    for arch, (spec_in, loss) in SETUPS.items():
        spec = experiment.RunSpec(
            arch,
            "mnist",
            spec_in,
            TrainConfig(epochs=1, batch_size=50, lr=3e-3, loss=loss, device="cpu"),
            limit_train=TRAIN_IMAGES,
        )
        loaded = experiment.Data(
            data.prepare(train.images[:TRAIN_IMAGES], spec_in),
            train.labels[:TRAIN_IMAGES],
            data.prepare(test_split.images[:EVAL_IMAGES], spec_in),
            test_split.labels[:EVAL_IMAGES],
            spec_in,
        )
        run_dir = root / arch
        experiment.train_run(spec, run_dir, loaded)
        results[arch] = (
            run_dir,
            export.export_run(run_dir, root / f"{arch}.onnx", data_dir=mnist_dir),
        )
    return results


def torch_scores(run_dir, images_u8) -> np.ndarray:
    spec, model = experiment.load_run(run_dir)
    with torch.no_grad():
        return model(data.to_float(data.prepare(images_u8, spec.input), spec.input)).numpy()


def runtime_scores(path, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["scores"], {"images": inputs})[0]


@pytest.mark.parametrize("arch", list(SETUPS))
def test_onnx_runtime_matches_pytorch_on_the_whole_test_set(exported, test_split, arch):
    run_dir, result = exported[arch]
    assert result.parity.ok and result.parity.n == len(test_split) == 10_000
    # Independently of export.check_parity: ONNX Runtime on the file as written.
    spec, _ = experiment.load_run(run_dir)
    inputs = data.to_float(data.prepare(test_split.images, spec.input), spec.input).numpy()
    expected = torch_scores(run_dir, test_split.images)
    got = runtime_scores(result.path, inputs)
    assert got.shape == expected.shape == (10_000, 10)
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() < 1e-4
    accuracy = (expected.argmax(1) == test_split.labels.numpy()).mean()
    assert result.parity.onnx_accuracy == pytest.approx(accuracy)


@pytest.mark.parametrize("arch", list(SETUPS))
def test_batch_dimension_is_dynamic(exported, test_split, arch):
    run_dir, result = exported[arch]
    model = onnx.load(str(result.path))
    (graph_input,) = model.graph.input
    batch_dim = graph_input.type.tensor_type.shape.dim[0]
    assert graph_input.name == "images" and batch_dim.dim_param  # symbolic, not a number
    assert [o.name for o in model.graph.output] == ["scores"]
    spec, _ = experiment.load_run(run_dir)
    for batch in (1, 37):
        images = test_split.images[100 : 100 + batch]
        inputs = data.to_float(data.prepare(images, spec.input), spec.input).numpy()
        got = runtime_scores(result.path, inputs)
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, torch_scores(run_dir, images), atol=1e-4, rtol=0)


def test_metadata_round_trips(exported):
    for arch, (run_dir, result) in exported.items():
        model = onnx.load(str(result.path))
        onnx.checker.check_model(model, full_check=True)
        props = {p.key: p.value for p in model.metadata_props}
        spec_in, loss = SETUPS[arch]
        assert props["lenet5.format"] == "1"
        assert props["lenet5.arch"] == arch
        assert props["lenet5.input_size"] == "32"
        assert json.loads(props["lenet5.input_spec"]) == {
            "geometry": spec_in.geometry,
            "values": spec_in.values,
            "mean": spec_in.mean,
            "std": spec_in.std,
        }
        assert json.loads(props["lenet5.classes"]) == [str(d) for d in range(10)]
        summary = runs.read_summary(run_dir)
        assert float(props["lenet5.test_accuracy"]) == summary["test_accuracy"]
        _, info = export.read_model(result.path)
        assert info == result.info
        assert info.input == spec_in and info.arch == arch
        assert (info.probabilities, info.map_j) == (
            ("map", 0.1) if loss == "map" else ("softmax", None)
        )


def test_a_classic_trained_by_cross_entropy_gets_softmax():
    spec = experiment.RunSpec("classic", "mnist", data.InputSpec(), TrainConfig())
    assert export.probability_rule(spec) == ("softmax", None)


def _rewrite(source, target, edit) -> None:
    model = onnx.load(str(source))
    edit(model)
    onnx.save(model, str(target))


def _set_prop(key, value):
    def edit(model):
        props = {p.key: p.value for p in model.metadata_props}
        if value is None:
            props.pop(key)
        else:
            props[key] = value
        onnx.helper.set_model_props(model, props)

    return edit


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (_set_prop("lenet5.format", None), "no 'lenet5.format'"),
        (_set_prop("lenet5.format", "99"), "unknown lenet5.format"),
        (_set_prop("lenet5.arch", "alexnet"), "unknown architecture"),
        (_set_prop("lenet5.input_spec", '{"geometry": "crop"}'), "malformed metadata"),
        (_set_prop("lenet5.classes", "not json"), "malformed metadata"),
        (_set_prop("lenet5.dataset", None), "lacks 'lenet5.dataset'"),
    ],
)
def test_tampered_metadata_is_refused(exported, tmp_path, edit, problem):
    target = tmp_path / "tampered.onnx"
    _rewrite(exported["twin"][1].path, target, edit)
    with pytest.raises(export.ModelFileError, match="not a lenet5 model") as caught:
        predict.load_predictor(target)
    assert str(target) in str(caught.value) and problem in str(caught.value)


def test_foreign_files_are_refused(tmp_path):
    helper = onnx.helper
    images = helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["N", 1, 32, 32])
    scores = helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["N", 1, 32, 32])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["scores"])], "g", [images], [scores]
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    text = tmp_path / "text.onnx"
    text.write_text("these are not the weights you are looking for\n")
    for path, problem in [
        (foreign, "no 'lenet5.format'"),
        (text, "not an ONNX model"),
        (tmp_path / "missing.onnx", "no such run directory or ONNX file"),
    ]:
        with pytest.raises(export.ModelFileError) as caught:
            predict.load_predictor(path)
        assert str(path) in str(caught.value) and problem in str(caught.value)


def test_a_wrong_graph_signature_is_refused(exported, tmp_path):
    """Genuine metadata on a graph that does not take [batch, 1, 32, 32] images."""
    model = onnx.load(str(exported["modern"][1].path))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 28
    target = tmp_path / "wrong.onnx"
    onnx.save(model, str(target))
    with pytest.raises(export.ModelFileError, match="expected input 'images'"):
        export.read_model(target)


def test_export_refuses_and_writes_nothing_when_parity_fails(
    exported, tmp_path, monkeypatch, mnist_dir
):
    run_dir, _ = exported["modern"]
    original = export._export_graph

    def corrupted(model, opset):
        proto = original(model, opset)
        weight = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
        values = onnx.numpy_helper.to_array(weight).copy()
        values.flat[0] += 1.0  # one weight off by one: the kind of bug parity must catch
        weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
        return proto

    monkeypatch.setattr(export, "_export_graph", corrupted)
    out = tmp_path / "out" / "bad.onnx"
    with pytest.raises(export.ParityError, match="nothing written") as caught:
        export.export_run(run_dir, out, data_dir=mnist_dir)
    assert not caught.value.parity.ok and caught.value.parity.max_abs_diff > 1e-4
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no temporary left


def test_cli_export_reports_parity_and_the_file(exported, tmp_path, mnist_dir, capsys):
    run_dir, _ = exported["twin"]
    out = tmp_path / "twin.onnx"
    args = [
        "export",
        str(run_dir),
        "--out",
        str(out),
        "--opset",
        "20",
        "--data-dir",
        str(mnist_dir),
    ]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "predictions agree on 10,000/10,000" in printed and f"wrote {out}" in printed
    assert onnx.load(str(out)).opset_import[0].version == 20


def test_cli_export_fails_without_a_traceback_when_parity_fails(exported, monkeypatch, capsys):
    failed = export.ParityResult(
        max_abs_diff=0.5, agree=9990, n=10_000, tolerance=1e-4, onnx_accuracy=0.9
    )

    def refuse(*args, **kwargs):
        raise export.ParityError("ONNX Runtime disagrees with PyTorch ...; nothing written", failed)

    monkeypatch.setattr(export, "export_run", refuse)
    assert cli.main(["export", str(exported["twin"][0])]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "9,990/10,000" in captured.out
    assert captured.err.startswith("lenet5: error: ONNX Runtime disagrees with PyTorch")
    assert "Traceback" not in captured.err
