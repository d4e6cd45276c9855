"""The run directory: exact resume through the files on disk, no pickle on load, atomic
writes, clear errors for broken runs, metrics files and PNG plots."""

from __future__ import annotations

import functools
import json
import pickle
import struct

import pytest
import torch

from lenet5 import plots, runs
from lenet5.evaluate import evaluate
from lenet5.train import Callback, NonFiniteLossError, TrainConfig, fit
from test_train import Poisoned, TinyNet, synthetic, tiny_model, to_input, weights_equal

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def data(n_train: int = 192, n_test: int = 40):
    return (*synthetic(n_train), *synthetic(n_test, seed=1), to_input)


class Interrupt(Exception):
    pass


class StopAfter(Callback):
    """Simulates a crash right after the checkpoint of epoch `epoch`."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, record):
        if record.epoch == self.epoch:
            raise Interrupt


def train_in_run_dir(run_dir, config, *, model=None, resume=False, callbacks=()):
    model = model if model is not None else tiny_model()
    state = runs.load_checkpoint(run_dir) if resume else None
    if not resume:
        runs.create_run(run_dir, {"arch": "tiny", "train": config.__dict__})
    history = fit(
        model,
        *data(),
        config,
        callbacks=[runs.MetricsLog(run_dir), *callbacks],
        checkpoint=functools.partial(runs.save_checkpoint, run_dir),
        resume=state,
    )
    return model, history


CONFIGS = {
    # Adam, a per-step schedule and label smoothing; dropout in the model uses the global RNG.
    "adam-onecycle": TrainConfig(
        epochs=3, batch_size=40, schedule="onecycle", label_smoothing=0.1, device="cpu"
    ),
    "sgd-step": TrainConfig(
        epochs=3,
        batch_size=40,
        optimizer="sgd",
        lr=0.05,
        schedule="step",
        step_every=1,
        weight_decay=1e-4,
        device="cpu",
    ),
    "adam-cosine": TrainConfig(epochs=3, batch_size=40, schedule="cosine", device="cpu"),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_interrupted_and_resumed_equals_uninterrupted_bit_for_bit(tmp_path, name):
    config = CONFIGS[name]
    straight, straight_history = train_in_run_dir(tmp_path / "straight", config)

    with pytest.raises(Interrupt):
        train_in_run_dir(tmp_path / "resumed", config, callbacks=[StopAfter(1)])
    assert runs.load_checkpoint(tmp_path / "resumed").epoch == 1
    # A fresh process would build a fresh model and draw other random numbers first.
    torch.manual_seed(1234)
    resumed, resumed_history = train_in_run_dir(
        tmp_path / "resumed", config, model=TinyNet(), resume=True
    )
    assert weights_equal(straight, resumed)
    assert runs.load_checkpoint(tmp_path / "resumed").optimizer["state"].keys()
    strip = [
        {**r.__dict__, "seconds": 0, "images_per_second": 0, "eval_seconds": 0}
        for r in straight_history
    ]
    assert strip == [
        {**r.__dict__, "seconds": 0, "images_per_second": 0, "eval_seconds": 0}
        for r in resumed_history
    ]
    # metrics.jsonl has one line per epoch, the interrupted run's line for epoch 1 included.
    assert [m["epoch"] for m in runs.read_metrics(tmp_path / "resumed")] == [1, 2, 3]
    assert [m["test_loss"] for m in runs.read_metrics(tmp_path / "resumed")] == [
        r.test_loss for r in straight_history
    ]


def test_one_epoch_then_resume_for_a_second_equals_two_epochs(tmp_path):
    """The literal check: train 1 epoch, save, load, resume with epochs=2, compare with a
    2-epoch run (constant schedule, so the plan's length does not change the rates)."""
    two = TrainConfig(epochs=2, batch_size=32, device="cpu")
    one = TrainConfig(**{**two.__dict__, "epochs": 1})
    straight, _ = train_in_run_dir(tmp_path / "a", two)
    train_in_run_dir(tmp_path / "b", one)
    torch.manual_seed(99)
    resumed, history = train_in_run_dir(tmp_path / "b", two, model=TinyNet(), resume=True)
    assert [r.epoch for r in history] == [1, 2]
    assert weights_equal(straight, resumed)
    assert weights_equal(straight, runs.load_weights(tmp_path / "b", TinyNet()))


def test_nan_keeps_the_last_good_checkpoint_loadable(tmp_path):
    config = TrainConfig(epochs=3, batch_size=32, device="cpu")  # 6 steps per epoch
    torch.manual_seed(0)
    model = Poisoned(poison_at=6 + 4)  # epoch 2, step 4
    after_epoch_1 = []

    class Keep(Callback):
        def on_epoch_end(self, record):
            after_epoch_1.append({k: v.clone() for k, v in model.state_dict().items()})

    with pytest.raises(NonFiniteLossError, match="epoch 2, step 4") as caught:
        train_in_run_dir(tmp_path, config, model=model, callbacks=[Keep()])
    assert "end of epoch 1" in str(caught.value)
    state = runs.load_checkpoint(tmp_path)
    assert state.epoch == 1 and len(state.history) == 1
    reloaded = runs.load_weights(tmp_path, TinyNet())
    assert all(torch.isfinite(v).all() for v in reloaded.state_dict().values())
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in after_epoch_1[0].items())
    assert [m["epoch"] for m in runs.read_metrics(tmp_path)] == [1]


def test_loading_never_unpickles(tmp_path, monkeypatch):
    config = TrainConfig(epochs=1, batch_size=64, device="cpu")
    model, _ = train_in_run_dir(tmp_path, config)

    def forbidden(*args, **kwargs):
        raise AssertionError("a run directory must load without pickle")

    for module, name in [
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
        (torch, "load"),
    ]:
        monkeypatch.setattr(module, name, forbidden)
    state = runs.load_checkpoint(tmp_path)
    assert weights_equal(model, runs.load_weights(tmp_path, TinyNet()))
    assert runs.read_config(tmp_path)["arch"] == "tiny"
    assert len(runs.read_metrics(tmp_path)) == 1
    assert state.epoch == 1
    # Resuming from it works too (zero further epochs: fit only restores).
    fit(TinyNet(), *data(), config, resume=state)


def test_files_and_no_temporaries_left(tmp_path):
    train_in_run_dir(tmp_path, TrainConfig(epochs=2, batch_size=64, device="cpu"))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(
        [
            "config.json",
            "metrics.jsonl",
            "model.safetensors",
            "train_state.json",
            "train_state.safetensors",
        ]
    )
    state = json.loads((tmp_path / "train_state.json").read_text())
    assert state["epoch"] == 2 and len(state["history"]) == 2


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    runs.atomic_write_bytes(path, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(runs.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        runs.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


@pytest.fixture
def run_dir(tmp_path):
    train_in_run_dir(tmp_path, TrainConfig(epochs=1, batch_size=64, device="cpu"))
    return tmp_path


def test_missing_run_dir_and_files_are_named(tmp_path, run_dir):
    with pytest.raises(runs.RunDirError, match="no such run directory"):
        runs.load_checkpoint(tmp_path / "nowhere")
    (run_dir / "train_state.safetensors").unlink()
    with pytest.raises(runs.RunDirError, match=r"train_state\.safetensors: missing"):
        runs.load_checkpoint(run_dir)
    with pytest.raises(runs.RunDirError, match=r"metrics\.json: missing"):
        runs.read_summary(run_dir)


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b"garbage",
        lambda b: struct.pack("<Q", 10**9) + b[8:],  # header length beyond the file
    ],
)
def test_corrupt_weights_are_a_clear_error(run_dir, damage):
    path = run_dir / "model.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(runs.RunDirError, match=r"model\.safetensors: not a readable safetensors"):
        runs.load_weights(run_dir, TinyNet())
    with pytest.raises(runs.RunDirError, match=r"model\.safetensors"):
        runs.load_checkpoint(run_dir)


def test_corrupt_json_and_mixed_epochs_are_clear_errors(run_dir):
    config = run_dir / "config.json"
    config.write_text('{"arch": ')
    with pytest.raises(runs.RunDirError, match=r"config\.json: not valid JSON"):
        runs.read_config(run_dir)
    state_json = run_dir / "train_state.json"
    state = json.loads(state_json.read_text())
    state_json.write_text(json.dumps({**state, "epoch": 7}))
    with pytest.raises(runs.RunDirError, match="different epochs"):
        runs.load_checkpoint(run_dir)
    state_json.write_text(json.dumps({k: v for k, v in state.items() if k != "scheduler"}))
    with pytest.raises(runs.RunDirError, match=r"train_state\.json: malformed"):
        runs.load_checkpoint(run_dir)


def test_weights_for_another_architecture_are_a_clear_error(run_dir):
    with pytest.raises(runs.RunDirError, match="wrong architecture"):
        runs.load_weights(run_dir, TinyNet(classes=3))


def test_create_refuses_an_existing_run_unless_overwriting(run_dir):
    with pytest.raises(runs.RunDirError, match="already holds a run"):
        runs.create_run(run_dir, {"arch": "other"})
    runs.create_run(run_dir, {"arch": "other"}, overwrite=True)
    assert runs.read_config(run_dir) == {"arch": "other"}
    assert not runs.has_checkpoint(run_dir)
    assert not (run_dir / "metrics.jsonl").exists()


def test_summary_round_trip(run_dir):
    model = runs.load_weights(run_dir, TinyNet())
    images, labels = synthetic(40, seed=1)
    result = evaluate(model, images, labels, to_input)
    runs.write_summary(run_dir, result, epochs=1, wall_seconds=1.5, extra={"arch": "tiny"})
    summary = runs.read_summary(run_dir)
    assert summary["test_accuracy"] == result.accuracy
    assert summary["test_errors"] == result.errors
    assert summary["test_loss"] == result.loss
    assert (summary["epochs"], summary["wall_seconds"], summary["arch"]) == (1, 1.5, "tiny")


def _png_size(path):
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        return image.size


def test_plots_write_pngs(tmp_path):
    _, history = train_in_run_dir(tmp_path, TrainConfig(epochs=3, batch_size=64, device="cpu"))
    loss_png, accuracy_png = plots.plot_history(history, tmp_path)
    assert (loss_png.name, accuracy_png.name) == ("loss.png", "accuracy.png")
    assert _png_size(loss_png) == (600, 400)
    # The rows of metrics.jsonl plot the same way.
    plots.plot_history(runs.read_metrics(tmp_path), tmp_path / "again")
    assert _png_size(tmp_path / "again" / "accuracy.png") == (900, 400)

    model = runs.load_weights(tmp_path, TinyNet())
    images, labels = synthetic(300, seed=3)
    result = evaluate(model, images, labels, to_input)
    _png_size(plots.plot_confusion(result.confusion, tmp_path / "confusion.png"))
    gallery = plots.plot_misclassified(
        images, labels, result.predictions, torch.arange(25), tmp_path / "errors.png"
    )
    assert _png_size(gallery) == (900, 355)  # 10 columns x 3 rows
    with pytest.raises(ValueError, match="empty history"):
        plots.plot_history([], tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))
