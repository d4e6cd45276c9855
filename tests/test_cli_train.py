"""`lenet5 train`, `evaluate` and `distortions` end to end on real MNIST (small subsets)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lenet5 import cli

FAST = ["--viz", "none", "--limit-train", "2000", "--epochs", "1", "--batch-size", "100"]


def train(tmp_path, mnist_dir, name, *extra):
    out = tmp_path / name
    code = cli.main(["train", "--out", str(out), "--data-dir", str(mnist_dir), *FAST, *extra])
    return code, out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_dir):
    code, out = train(tmp_path_factory.mktemp("runs"), mnist_dir, "modern")
    assert code == 0
    return out


def test_train_leaves_a_complete_run_directory(trained):
    for name in (
        "config.json",
        "model.safetensors",
        "train_state.safetensors",
        "train_state.json",
        "metrics.jsonl",
        "metrics.json",
        "loss.png",
        "accuracy.png",
    ):
        assert (trained / name).is_file(), name
    config = json.loads((trained / "config.json").read_text())
    assert config["arch"] == "modern" and config["limit_train"] == 2000
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["test_count"] == 10_000
    assert metrics["test_accuracy"] > 0.85  # 2,000 images, one epoch


def test_evaluate_agrees_with_training_and_writes_pictures(trained, mnist_dir, capsys):
    assert cli.main(["evaluate", str(trained), "--data-dir", str(mnist_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    metrics = json.loads((trained / "metrics.json").read_text())
    assert report["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert report["errors"] == metrics["test_errors"]
    assert sum(map(sum, report["confusion"])) == 10_000
    assert report["errors"] == 10_000 - sum(report["confusion"][i][i] for i in range(10))
    assert (trained / "confusion.png").stat().st_size > 1000
    assert (trained / "errors.png").stat().st_size > 1000


def test_existing_run_is_not_overwritten_by_accident(trained, mnist_dir, capsys):
    before = (trained / "model.safetensors").read_bytes()
    code = cli.main(["train", "--out", str(trained), "--data-dir", str(mnist_dir), *FAST])
    assert code == 1
    assert "already holds a run" in capsys.readouterr().err
    assert (trained / "model.safetensors").read_bytes() == before


def test_interrupted_run_resumes_bit_exactly(tmp_path, mnist_dir, monkeypatch):
    """Ctrl-C during epoch 2 of 2 (onecycle, so the schedule depends on the total), then
    --resume: the same weights as the uninterrupted run."""
    extra = ["--arch", "twin", "--limit-train", "600", "--epochs", "2"]
    assert train(tmp_path, mnist_dir, "straight", *extra)[0] == 0

    from lenet5 import monitor

    original = monitor.ProgressBar.on_epoch_start

    def interrupt(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        original(self, epoch)

    monkeypatch.setattr(monitor.ProgressBar, "on_epoch_start", interrupt)
    assert train(tmp_path, mnist_dir, "resumed", *extra)[0] == 130
    monkeypatch.setattr(monitor.ProgressBar, "on_epoch_start", original)
    resumed = tmp_path / "resumed"
    assert json.loads((resumed / "train_state.json").read_text())["epoch"] == 1
    code = cli.main(
        ["train", "--out", str(resumed), "--resume", "--viz", "none", "--data-dir", str(mnist_dir)]
    )
    assert code == 0
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len((resumed / "metrics.jsonl").read_text().splitlines()) == 2


def test_paper_recipe_runs_per_sample_sdlm(tmp_path, mnist_dir):
    threads = torch.get_num_threads()
    try:
        code, out = train(
            tmp_path,
            mnist_dir,
            "lecun98",
            "--recipe",
            "lecun98",
            "--limit-train",
            "300",
            "--batch-size",
            "1",
            "--threads",
            "1",
        )
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["optimizer"] == "sdlm" and config["train"]["loss"] == "map"
    assert config["input"] == {"geometry": "pad", "values": "paper", "mean": 0.1307, "std": 0.3081}
    state = json.loads((out / "train_state.json").read_text())
    assert state["epoch"] == 1


def test_bad_combinations_are_clear_errors(tmp_path, mnist_dir, capsys):
    assert train(tmp_path, mnist_dir, "x", "--arch", "twin", "--optimizer", "sdlm")[0] == 1
    assert "sdlm needs --arch classic" in capsys.readouterr().err
    assert train(tmp_path, mnist_dir, "y", "--arch", "twin", "--init", "sqrt")[0] == 1
    assert "twin does not take the options" in capsys.readouterr().err
    assert cli.main(["evaluate", str(tmp_path / "nothing")]) == 1
    assert "no such run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train(tmp_path, mnist_dir, "z", "--threads", "0")
    assert "--threads: must be at least 1" in capsys.readouterr().err


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, mnist_dir, capsys):
    code, _ = train(
        tmp_path, mnist_dir, "nan", "--arch", "twin", "--optimizer", "sgd", "--lr", "1e30"
    )
    assert code == 1
    assert "non-finite training loss" in capsys.readouterr().err


def test_distortions_picture(tmp_path, mnist_dir, capsys):
    out = tmp_path / "grid.png"
    args = ["distortions", "--data-dir", str(mnist_dir), "--out", str(out), "--count", "3"]
    assert cli.main(args) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_does_not_evaluate_the_test_set_twice(tmp_path, mnist_dir, monkeypatch):
    """The run's final metrics are fit's last evaluation, not a second pass over the test set."""

    def second_evaluation(*args, **kwargs):
        raise AssertionError("the test set was evaluated again after training")

    monkeypatch.setattr("lenet5.experiment.evaluate", second_evaluation)
    code, out = train(tmp_path, mnist_dir, "once", "--arch", "twin")
    assert code == 0
    final = json.loads((out / "metrics.json").read_text())
    last_epoch = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["test_accuracy"] == last_epoch["test_accuracy"]
    assert final["test_errors"] == last_epoch["test_errors"]
