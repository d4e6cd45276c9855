"""Monitoring callbacks for `lenet5.train.fit`: a tqdm progress bar with one summary line per
epoch, TensorBoard event files, and visdom plots (the widely copied PyTorch LeNet-5 script
plots its loss in visdom).

They follow the `Callback` hooks of train.py and keep the training loop free of printing and
logging. The loss arrives as a device tensor; reading it waits for the device, so each monitor
reads it every few steps only. A monitor never stops training: if TensorBoard or visdom is not
installed, or the visdom server does not answer, it warns once and does nothing further.
tensorboard and visdom are optional dependencies, imported when a run starts.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from lenet5.train import Callback, EpochRecord, Plan


def format_record(record: EpochRecord, epochs: int) -> str:
    """One line per epoch, e.g. for the console or a log file."""
    width = len(str(epochs))
    return (
        f"epoch {record.epoch:>{width}}/{epochs}  train loss {record.train_loss:.4f}  "
        f"test loss {record.test_loss:.4f}  test acc {100 * record.test_accuracy:.2f}% "
        f"({record.test_errors} errors)  lr {record.lr:.2e}  {record.seconds:.1f} s  "
        f"{record.images_per_second:,.0f} img/s"
    )


class _WarnOnce:
    """Switches a monitor off with a single warning the first time something goes wrong."""

    warned = False

    def _give_up(self, reason: str) -> None:
        if not self.warned:
            warnings.warn(f"{reason}; training goes on without it", RuntimeWarning, stacklevel=3)
            self.warned = True


class ProgressBar(Callback):
    """A tqdm bar per epoch (batches, loss, images/s, ETA) and, through `write`, one summary
    line per finished epoch. `write` defaults to tqdm.write, which prints above live bars;
    further keyword arguments go to tqdm (file, disable, mininterval, ...)."""

    def __init__(
        self, write: Callable[[str], None] = tqdm.write, *, refresh_every: int = 10, **options
    ):
        self.write, self.refresh_every = write, refresh_every
        self.options = {"unit": "batch", "leave": False, "dynamic_ncols": True, **options}
        self.bar: tqdm | None = None

    def on_train_start(self, plan: Plan) -> None:
        self.plan = plan

    def on_epoch_start(self, epoch: int) -> None:
        self.bar = tqdm(
            total=self.plan.steps_per_epoch,
            desc=f"epoch {epoch}/{self.plan.epochs}",
            **self.options,
        )
        self.started = time.perf_counter()

    def on_step(self, epoch: int, step: int, loss: Tensor, lr: float) -> None:
        if step % self.refresh_every and step != self.plan.steps_per_epoch:
            return
        seen = min(step * self.plan.batch_size, self.plan.train_size)
        rate = seen / max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix_str(f"loss {loss.item():.4f}, {rate:,.0f} img/s", refresh=False)
        self.bar.update(step - self.bar.n)

    def on_epoch_end(self, record: EpochRecord) -> None:
        self._close()
        self.write(format_record(record, self.plan.epochs))

    def on_train_end(self, history: tuple[EpochRecord, ...]) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TensorBoard(Callback, _WarnOnce):
    """TensorBoard scalars against the global step: train/loss and train/lr every step
    (written in groups of `every`, one device synchronisation each), and per epoch
    test/loss, test/accuracy, train/epoch_loss and speed/images_per_second. A resumed run
    purges events past its starting step left by the interrupted one."""

    def __init__(self, log_dir: str | os.PathLike, *, every: int = 50):
        self.log_dir, self.every = Path(log_dir), every
        self.writer = None
        self.pending: list[tuple[int, Tensor, float]] = []

    def on_train_start(self, plan: Plan) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            self._give_up(f"TensorBoard logging is off ({error}; pip install tensorboard)")
            return
        self.steps_per_epoch = plan.steps_per_epoch
        start = (plan.first_epoch - 1) * plan.steps_per_epoch
        self.writer = SummaryWriter(str(self.log_dir), purge_step=start + 1 if start else None)

    def on_step(self, epoch: int, step: int, loss: Tensor, lr: float) -> None:
        if self.writer is None:
            return
        self.pending.append(((epoch - 1) * self.steps_per_epoch + step, loss, lr))
        if len(self.pending) >= self.every:
            self._write_pending()

    def on_epoch_end(self, record: EpochRecord) -> None:
        if self.writer is None:
            return
        self._write_pending()
        step = record.epoch * self.steps_per_epoch
        self.writer.add_scalar("test/loss", record.test_loss, step)
        self.writer.add_scalar("test/accuracy", record.test_accuracy, step)
        self.writer.add_scalar("train/epoch_loss", record.train_loss, step)
        self.writer.add_scalar("speed/images_per_second", record.images_per_second, step)
        self.writer.flush()

    def on_train_end(self, history: tuple[EpochRecord, ...]) -> None:
        if self.writer is not None:
            self._write_pending()
            self.writer.close()
            self.writer = None

    def _write_pending(self) -> None:
        if not self.pending:
            return
        losses = torch.stack([loss for _, loss, _ in self.pending]).tolist()  # one sync
        for (step, _, lr), loss in zip(self.pending, losses, strict=True):
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
        self.pending = []


class Visdom(Callback, _WarnOnce):
    """Live visdom plots: the mean train loss of every `every` steps, and test loss and
    accuracy per epoch. The server is contacted once when training starts; if visdom is not
    installed, the server does not answer then, or a later send fails, it warns once and
    stays quiet for the rest of the run."""

    def __init__(
        self,
        server: str = "http://localhost",
        port: int = 8097,
        *,
        env: str = "lenet5",
        every: int = 10,
    ):
        self.server, self.port, self.env, self.every = server, port, env, every
        self.client = None
        self.pending: list[Tensor] = []
        self.windows: set[str] = set()

    def on_train_start(self, plan: Plan) -> None:
        self.steps_per_epoch = plan.steps_per_epoch
        if self.warned:
            return
        try:
            import visdom
        except ImportError:
            self._give_up("visdom is not installed (pip install visdom), so no visdom plots")
            return
        try:
            client = visdom.Visdom(
                server=self.server,
                port=self.port,
                env=self.env,
                use_incoming_socket=False,  # no background thread retrying forever
                raise_exceptions=True,
            )
            reachable = client.check_connection()
        except Exception:  # visdom raises ConnectionError, requests its own errors
            reachable = False
        if not reachable:
            self._give_up(f"no visdom server answers at {self.server}:{self.port}")
            return
        self.client = client

    def on_step(self, epoch: int, step: int, loss: Tensor, lr: float) -> None:
        if self.client is None:
            return
        self.pending.append(loss)
        if len(self.pending) >= self.every:
            mean = torch.stack(self.pending).mean().item()  # one sync per `every` steps
            self.pending = []
            self._line("train_loss", (epoch - 1) * self.steps_per_epoch + step, mean, "step")

    def on_epoch_end(self, record: EpochRecord) -> None:
        self._line("test_loss", record.epoch, record.test_loss, "epoch")
        self._line("test_accuracy", record.epoch, record.test_accuracy, "epoch")

    def _line(self, window: str, x: float, y: float, xlabel: str) -> None:
        if self.client is None:
            return
        try:
            self.client.line(
                X=[x],
                Y=[y],
                win=window,
                update="append" if window in self.windows else None,
                opts={"title": window.replace("_", " "), "xlabel": xlabel},
            )
            self.windows.add(window)
        except Exception as error:
            self.client = None
            self._give_up(f"the visdom server stopped answering ({error})")
