"""Monitors: the progress bar prints one line per epoch, TensorBoard events read back with
TensorBoard's own reader, and visdom trouble (missing, unreachable, failing) warns once and
never stops training."""

from __future__ import annotations

import io
import socket
import sys
import types
import urllib.request
import warnings

import pytest
import torch

from lenet5 import monitor
from lenet5.train import Callback, EpochRecord, TrainConfig, fit
from test_train import Recorder, synthetic, tiny_model, to_input

CONFIG = TrainConfig(epochs=2, batch_size=20, device="cpu")  # 100 images: 5 steps per epoch


def run(callbacks, config=CONFIG, resume=None, model=None):
    images, labels = synthetic(100)
    test_images, test_labels = synthetic(30, seed=1)
    return fit(
        model or tiny_model(),
        images,
        labels,
        test_images,
        test_labels,
        to_input,
        config,
        callbacks=callbacks,
        resume=resume,
    )


def our_warnings(caught, text):
    return [w for w in caught if issubclass(w.category, RuntimeWarning) and text in str(w.message)]


def test_format_record():
    record = EpochRecord(3, 0.04123, 0.03981, 0.9884, 116, 2e-3, 7.06, 8452.4, 1.2)
    assert monitor.format_record(record, 15) == (
        "epoch  3/15  train loss 0.0412  test loss 0.0398  test acc 98.84% (116 errors)  "
        "lr 2.00e-03  7.1 s  8,452 img/s"
    )


def test_progress_bar_writes_one_line_per_epoch():
    lines, bar_output = [], io.StringIO()
    history = run(
        [monitor.ProgressBar(write=lines.append, refresh_every=2, file=bar_output, mininterval=0)]
    )
    assert lines == [monitor.format_record(record, 2) for record in history]
    text = bar_output.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text
    assert "img/s" in text and "loss" in text


def read_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags}


def test_tensorboard_events_are_written_and_readable(tmp_path):
    recorder = Recorder()
    history = run([monitor.TensorBoard(tmp_path, every=3), recorder])  # 3 does not divide 5
    assert list(tmp_path.glob("events.out.tfevents.*"))
    scalars = read_scalars(tmp_path)
    steps = [c for c in recorder.calls if c[0] == "step"]
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 11))
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([c[3] for c in steps], rel=1e-6)
    assert [v for _, v in scalars["train/lr"]] == pytest.approx([c[4] for c in steps])
    assert scalars["test/accuracy"] == [
        (5, pytest.approx(history[0].test_accuracy)),
        (10, pytest.approx(history[1].test_accuracy)),
    ]
    assert [v for _, v in scalars["test/loss"]] == pytest.approx([r.test_loss for r in history])
    assert len(scalars["speed/images_per_second"]) == 2


def test_tensorboard_resume_drops_the_interrupted_runs_extra_steps(tmp_path):
    states = []

    class Crash(Callback):
        def on_step(self, epoch, step, loss, lr):
            if (epoch, step) == (2, 3):
                raise KeyboardInterrupt

    # Not through the run dir: this test is about the events, so the state stays in memory.
    images, labels = synthetic(100)
    with pytest.raises(KeyboardInterrupt):
        fit(
            tiny_model(),
            images,
            labels,
            images[:30],
            labels[:30],
            to_input,
            CONFIG,
            callbacks=[monitor.TensorBoard(tmp_path, every=1), Crash()],
            checkpoint=states.append,
        )
    assert [s for s, _ in read_scalars(tmp_path)["train/loss"]] == list(range(1, 9))
    fit(
        tiny_model(),
        images,
        labels,
        images[:30],
        labels[:30],
        to_input,
        CONFIG,
        callbacks=[monitor.TensorBoard(tmp_path, every=1)],
        resume=states[0],
    )
    # Steps 6-8 of the interrupted run are purged; the resumed run writes 6-10 once.
    assert [s for s, _ in read_scalars(tmp_path)["train/loss"]] == list(range(1, 11))


def test_missing_tensorboard_warns_once_and_training_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    board = monitor.TensorBoard(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run([board])
        run([board])
    assert len(our_warnings(caught, "TensorBoard logging is off")) == 1


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed on exit: nothing listens there


def test_visdom_not_installed_warns_once(monkeypatch):
    monkeypatch.setitem(sys.modules, "visdom", None)
    viz = monitor.Visdom(port=unused_port())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = run([viz])
        run([viz])
    assert len(history) == 2
    assert len(our_warnings(caught, "visdom is not installed")) == 1


class FakeVisdom:
    """Stands in for visdom.Visdom (its constructor and check_connection signatures) and
    talks HTTP to the given port for real, so an unreachable server is really unreachable."""

    instances: list = []

    def __init__(self, server, port, env, use_incoming_socket, raise_exceptions):
        self.url = f"{server}:{port}/env/{env}"
        self.attempts, self.lines = 0, []
        FakeVisdom.instances.append(self)

    def check_connection(self, timeout_seconds=0):
        self.attempts += 1
        try:
            urllib.request.urlopen(self.url, timeout=2)  # noqa: S310 (a local test URL)
        except OSError:
            return False
        return True

    def line(self, X, Y, win, update, opts):
        self.lines.append((win, X, Y, update))


@pytest.fixture
def fake_visdom(monkeypatch):
    FakeVisdom.instances = []
    monkeypatch.setitem(sys.modules, "visdom", types.SimpleNamespace(Visdom=FakeVisdom))
    return FakeVisdom


def test_unreachable_visdom_warns_once_without_per_step_checks(fake_visdom):
    port = unused_port()
    viz = monitor.Visdom(server="http://127.0.0.1", port=port, every=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = run([viz])
    assert len(history) == 2
    found = our_warnings(caught, f"no visdom server answers at http://127.0.0.1:{port}")
    assert len(found) == 1
    assert "training goes on" in str(found[0].message)
    [client] = fake_visdom.instances
    assert client.attempts == 1 and client.lines == []


@pytest.mark.skipif(
    "visdom" not in sys.modules and not __import__("importlib").util.find_spec("visdom"),
    reason="visdom is not installed (optional dependency); the fake above stands in for it",
)
def test_real_visdom_client_against_a_closed_port():
    viz = monitor.Visdom(server="http://127.0.0.1", port=unused_port())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(run([viz])) == 2
    assert len(our_warnings(caught, "no visdom server answers")) == 1


def test_visdom_plots_and_a_failing_send_warns_once(fake_visdom, monkeypatch):
    monkeypatch.setattr(FakeVisdom, "check_connection", lambda self, timeout_seconds=0: True)
    viz = monitor.Visdom(every=2)
    history = run([viz])
    [client] = fake_visdom.instances
    train = [line for line in client.lines if line[0] == "train_loss"]
    assert [x for _, x, _, _ in train] == [[2], [4], [6], [8], [10]]  # every 2 global steps
    assert [update for *_, update in train] == [None] + ["append"] * 4
    accuracy = [(x, y) for win, x, y, _ in client.lines if win == "test_accuracy"]
    assert accuracy == [([1], [history[0].test_accuracy]), ([2], [history[1].test_accuracy])]

    def refuse(self, **kwargs):
        raise ConnectionError("Error connecting to Visdom server")

    monkeypatch.setattr(FakeVisdom, "line", refuse)
    viz = monitor.Visdom(every=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(run([viz])) == 2
    assert len(our_warnings(caught, "the visdom server stopped answering")) == 1


def test_monitors_close_when_training_fails(tmp_path):
    class Boom(Callback):
        def on_step(self, epoch, step, loss, lr):
            if step == 2:
                raise RuntimeError("boom")

    bar = monitor.ProgressBar(write=lambda line: None, file=io.StringIO())
    board = monitor.TensorBoard(tmp_path, every=100)
    with pytest.raises(RuntimeError, match="boom"):
        run([bar, board, Boom()])
    assert bar.bar is None and board.writer is None
    assert [s for s, _ in read_scalars(tmp_path)["train/loss"]] == [1, 2]


def test_no_sync_from_monitors_between_refreshes(monkeypatch):
    """The bar reads the loss every `refresh_every` steps (and at an epoch's last step)."""
    reads = []
    original = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append(1) or original(self))
    run([])
    baseline = len(reads)  # Adam reads its CPU step counters; not a device sync
    run([monitor.ProgressBar(write=lambda line: None, file=io.StringIO(), refresh_every=4)])
    assert len(reads) - 2 * baseline == 2 * 2  # steps 4 and 5 of each epoch
