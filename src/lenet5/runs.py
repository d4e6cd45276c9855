"""The run directory: everything one training run leaves on disk, and reading it back.

    RUN_DIR/
      config.json               what the caller says describes the run (arch, dataset, ...)
      model.safetensors         weights at the last completed epoch
      train_state.safetensors   optimiser tensors and RNG states, for resuming
      train_state.json          epoch, history, optimiser structure, scheduler state
      metrics.jsonl             one JSON line per completed epoch
      metrics.json              final test metrics and wall time
      tensorboard/              TensorBoard events (lenet5.monitor.TensorBoard)
      loss.png, accuracy.png    curves (lenet5.plots.plot_history)

Tensors are stored as safetensors and everything else as JSON, so reading a run never
unpickles anything (unlike torch.load of a pickled checkpoint, which can execute code).
Every file is written to a temporary file and moved into place with os.replace, so a crash
leaves either the old file or the new one, never half of one. The three checkpoint files each
record their epoch, and loading refuses a set that disagrees. This module knows nothing about
architectures: config.json is whatever dict the caller gives.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from lenet5.evaluate import Evaluation
from lenet5.train import Callback, EpochRecord, Plan, TrainState

CONFIG = "config.json"
MODEL = "model.safetensors"
STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"
METRICS_LOG = "metrics.jsonl"
SUMMARY = "metrics.json"
TENSORBOARD = "tensorboard"
FORMAT = 1  # bump when the layout of train_state.* changes


class RunDirError(Exception):
    """A run directory or one of its files is missing or unreadable; the message names it."""


# --- atomic writes -------------------------------------------------------------------------


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same directory and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would make outputs private
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | os.PathLike, value) -> Path:
    return atomic_write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())


# --- reading with clear errors -------------------------------------------------------------


def _existing(run_dir: str | os.PathLike, name: str) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    path = run_dir / name
    if not path.is_file():
        raise RunDirError(f"{path}: missing (is {run_dir} a run directory that got that far?)")
    return path


def _read_json(run_dir: str | os.PathLike, name: str):
    path = _existing(run_dir, name)
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise RunDirError(f"{path}: not valid JSON ({error})") from error


def _read_safetensors(run_dir: str | os.PathLike, name: str) -> tuple[dict[str, Tensor], dict]:
    """Tensors and string metadata of a safetensors file; no pickle involved."""
    path = _existing(run_dir, name)
    try:
        with safe_open(path, framework="pt") as file:
            names = file.keys()  # noqa: SIM118 (safe_open is not iterable)
            return {name: file.get_tensor(name) for name in names}, file.metadata() or {}
    except Exception as error:  # safetensors raises its own error type for corrupt headers
        raise RunDirError(f"{path}: not a readable safetensors file ({error})") from error


# --- config --------------------------------------------------------------------------------


def create_run(run_dir: str | os.PathLike, config: Mapping, *, overwrite: bool = False) -> Path:
    """Make `run_dir` and write config.json. Refuses a directory that already holds a run
    unless `overwrite`, which then removes that run's files first."""
    run_dir = Path(run_dir)
    if (run_dir / CONFIG).exists():
        if not overwrite:
            raise RunDirError(
                f"{run_dir}: already holds a run ({CONFIG} exists); resume it, "
                "pick another directory or overwrite it"
            )
        for name in (MODEL, STATE_TENSORS, STATE_JSON, METRICS_LOG, SUMMARY):
            with contextlib.suppress(FileNotFoundError):
                (run_dir / name).unlink()
        shutil.rmtree(run_dir / TENSORBOARD, ignore_errors=True)
    atomic_write_json(run_dir / CONFIG, dict(config))
    return run_dir


def read_config(run_dir: str | os.PathLike) -> dict:
    config = _read_json(run_dir, CONFIG)
    if not isinstance(config, dict):
        raise RunDirError(f"{Path(run_dir) / CONFIG}: expected a JSON object")
    return config


# --- checkpoints -----------------------------------------------------------------------------


def save_checkpoint(run_dir: str | os.PathLike, state: TrainState) -> None:
    """Write the resumable state and the weights; usable as fit's `checkpoint` hook through
    `functools.partial(save_checkpoint, run_dir)`."""
    run_dir = Path(run_dir)
    tensors = {"rng.shuffle": state.shuffle_rng, "rng.torch": state.torch_rng}
    if state.cuda_rng is not None:
        tensors["rng.cuda"] = state.cuda_rng
    optimizer_state = {}
    for key, per_param in state.optimizer["state"].items():
        optimizer_state[str(key)] = entry = {}
        for name, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{key}.{name}"] = value.contiguous()
                entry[name] = {"tensor": f"optimizer.{key}.{name}"}
            else:
                entry[name] = {"value": value}
    structure = {
        "format": FORMAT,
        "epoch": state.epoch,
        "history": [asdict(record) for record in state.history],
        "optimizer": {"state": optimizer_state, "param_groups": state.optimizer["param_groups"]},
        "scheduler": state.scheduler,
    }
    epoch = {"epoch": str(state.epoch)}
    model = {name: value.contiguous() for name, value in state.model.items()}
    atomic_write_bytes(run_dir / STATE_TENSORS, save_safetensors(tensors, metadata=epoch))
    atomic_write_json(run_dir / STATE_JSON, structure)
    atomic_write_bytes(run_dir / MODEL, save_safetensors(model, metadata=epoch))


def load_checkpoint(run_dir: str | os.PathLike) -> TrainState:
    """The state saved at the last completed epoch, for `fit(..., resume=state)`."""
    structure = _read_json(run_dir, STATE_JSON)
    path = Path(run_dir) / STATE_JSON
    if not isinstance(structure, dict) or structure.get("format") != FORMAT:
        raise RunDirError(f"{path}: not a lenet5 train state of format {FORMAT}")
    tensors, tensor_meta = _read_safetensors(run_dir, STATE_TENSORS)
    model, model_meta = _read_safetensors(run_dir, MODEL)
    epochs = {
        STATE_JSON: str(structure.get("epoch")),
        STATE_TENSORS: tensor_meta.get("epoch"),
        MODEL: model_meta.get("epoch"),
    }
    if len(set(epochs.values())) != 1:
        raise RunDirError(
            f"{run_dir}: checkpoint files are from different epochs {epochs} "
            "(interrupted while saving?); cannot resume exactly"
        )
    try:
        optimizer_state = {
            int(key): {
                name: tensors[item["tensor"]] if "tensor" in item else item["value"]
                for name, item in per_param.items()
            }
            for key, per_param in structure["optimizer"]["state"].items()
        }
        return TrainState(
            epoch=int(structure["epoch"]),
            history=tuple(EpochRecord(**record) for record in structure["history"]),
            model=model,
            optimizer={
                "state": optimizer_state,
                "param_groups": structure["optimizer"]["param_groups"],
            },
            scheduler=structure["scheduler"],
            shuffle_rng=tensors["rng.shuffle"],
            torch_rng=tensors["rng.torch"],
            cuda_rng=tensors.get("rng.cuda"),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise RunDirError(f"{path}: malformed train state ({error!r})") from error


def load_weights(run_dir: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load model.safetensors into `model`, which the caller builds from config.json."""
    weights, _ = _read_safetensors(run_dir, MODEL)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise RunDirError(
            f"{Path(run_dir) / MODEL}: does not fit the model built for it "
            f"(wrong architecture in {CONFIG}?): {error}"
        ) from error
    return model


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    return all((Path(run_dir) / name).is_file() for name in (MODEL, STATE_TENSORS, STATE_JSON))


# --- metrics ---------------------------------------------------------------------------------


class MetricsLog(Callback):
    """Keeps metrics.jsonl at one line per completed epoch. On a resumed run it first drops
    lines past the resumed epoch (written before an interruption). Each update rewrites the
    small file atomically, so it is never left with half a line."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / METRICS_LOG
        self.lines: list[str] = []

    def on_train_start(self, plan: Plan) -> None:
        old = self.path.read_text().splitlines() if self.path.exists() else []
        self.lines = [line for line in old if json.loads(line)["epoch"] < plan.first_epoch]
        atomic_write_bytes(self.path, "".join(line + "\n" for line in self.lines).encode())

    def on_epoch_end(self, record: EpochRecord) -> None:
        self.lines.append(json.dumps(asdict(record)))
        atomic_write_bytes(self.path, "".join(line + "\n" for line in self.lines).encode())


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The per-epoch records of metrics.jsonl as dicts."""
    path = _existing(run_dir, METRICS_LOG)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except ValueError as error:
            raise RunDirError(f"{path}, line {number}: not valid JSON ({error})") from error
    return records


def write_summary(
    run_dir: str | os.PathLike,
    evaluation: Evaluation,
    *,
    epochs: int,
    wall_seconds: float,
    extra: Mapping | None = None,
) -> Path:
    """Write metrics.json: final test metrics, epochs trained and wall time (plus `extra`)."""
    summary = {
        "test_accuracy": evaluation.accuracy,
        "test_loss": evaluation.loss,
        "test_errors": evaluation.errors,
        "test_count": evaluation.count,
        "per_class_accuracy": list(evaluation.per_class_accuracy),
        "epochs": epochs,
        "wall_seconds": wall_seconds,
        **(extra or {}),
    }
    return atomic_write_json(Path(run_dir) / SUMMARY, summary)


def read_summary(run_dir: str | os.PathLike) -> dict:
    return _read_json(run_dir, SUMMARY)


def tensorboard_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / TENSORBOARD
