"""One training run end to end: a recipe plus data in, a complete run directory out.

This is the glue between the pieces that know nothing of each other (data, models, train,
runs): it turns a `RunSpec` into prepared tensors, a model, a `fit` call with checkpointing,
and the final metrics.json; and it rebuilds model and data from a run directory to evaluate
it. The command line and the benchmarks both call it; it prints nothing itself.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import Tensor, nn

from lenet5 import __version__, data, models, persample, runs
from lenet5.distort import DistortConfig, distort
from lenet5.evaluate import Evaluation, evaluate
from lenet5.train import Callback, EpochRecord, TrainConfig, fit, make_loss


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run besides where its data and outputs live."""

    arch: str
    dataset: str
    input: data.InputSpec
    train: TrainConfig
    distort: DistortConfig | None = None
    limit_train: int | None = None  # train on the first N training images only
    model_options: dict = field(default_factory=dict)  # constructor options, e.g. init

    def __post_init__(self) -> None:
        models.build(self.arch, **self.model_options)  # unknown names or options: clear errors
        data.dataset_info(self.dataset)
        if self.limit_train is not None and self.limit_train < 1:
            raise ValueError("limit_train must be at least 1")

    def to_dict(self) -> dict:
        return {
            "arch": self.arch,
            "dataset": self.dataset,
            "input": asdict(self.input),
            "train": asdict(self.train),
            "distort": None if self.distort is None else asdict(self.distort),
            "limit_train": self.limit_train,
            "model_options": dict(self.model_options),
            "lenet5_version": __version__,
        }

    @classmethod
    def from_dict(cls, config: dict) -> RunSpec:
        try:
            return cls(
                arch=config["arch"],
                dataset=config["dataset"],
                input=data.InputSpec(**config["input"]),
                train=TrainConfig(**_known(TrainConfig, config["train"])),
                distort=None
                if config.get("distort") is None
                else DistortConfig(**config["distort"]),
                limit_train=config.get("limit_train"),
                model_options=config.get("model_options") or {},
            )
        except (KeyError, TypeError) as exc:
            raise runs.RunDirError(f"config.json does not describe a lenet5 run ({exc})") from exc


def _known(cls, values: dict) -> dict:
    """Keep the fields `cls` has, so that a run written by an older version still loads."""
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in values.items() if key in names}


@dataclass(frozen=True)
class Data:
    """Both splits, prepared once (uint8 [N, 32, 32]), and how batches become floats."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    spec: data.InputSpec

    def to_input(self, batch: Tensor) -> Tensor:
        return data.to_float(batch, self.spec)


def load_data(spec: RunSpec, data_dir: str | os.PathLike | None = None, on_progress=None) -> Data:
    train = data.load_split(spec.dataset, "train", data_dir, on_progress=on_progress)
    test = data.load_split(spec.dataset, "test", data_dir, on_progress=on_progress)
    train_images, train_labels = train.images, train.labels
    if spec.limit_train is not None:
        train_images, train_labels = (
            train_images[: spec.limit_train],
            train_labels[: spec.limit_train],
        )
    return Data(
        train_images=data.prepare(train_images, spec.input),
        train_labels=train_labels,
        test_images=data.prepare(test.images, spec.input),
        test_labels=test.labels,
        spec=spec.input,
    )


def fit_on(model: nn.Module, loaded: Data, config: TrainConfig, **options):
    """`lenet5.train.fit` on prepared data, with the per-sample SDLM step of
    `lenet5.persample` where it applies; options (callbacks, checkpoint, resume, augment,
    step_factory) pass through."""
    options.setdefault("step_factory", persample.make_step)
    return fit(
        model,
        loaded.train_images,
        loaded.train_labels,
        loaded.test_images,
        loaded.test_labels,
        loaded.to_input,
        config,
        **options,
    )


def build_model(spec: RunSpec) -> nn.Module:
    torch.manual_seed(spec.train.seed)  # the initial weights follow the seed too
    return models.build(spec.arch, **spec.model_options)


@dataclass(frozen=True)
class RunResult:
    history: tuple[EpochRecord, ...]
    evaluation: Evaluation
    wall_seconds: float


def train_run(
    spec: RunSpec,
    run_dir: str | os.PathLike,
    loaded: Data,
    *,
    callbacks: Sequence[Callback] = (),
    resume: bool = False,
    overwrite: bool = False,
) -> RunResult:
    """Train per `spec` into `run_dir` (checkpoint every epoch), then evaluate on the test
    split and write metrics.json and the curves. With `resume`, continue the run there."""
    started = time.perf_counter()
    model = build_model(spec)
    state = None
    if resume:
        state = runs.load_checkpoint(run_dir)
        runs.atomic_write_json(os.path.join(run_dir, runs.CONFIG), spec.to_dict())
    else:
        runs.create_run(run_dir, spec.to_dict(), overwrite=overwrite)
    augment = None
    if spec.distort is not None:
        augment = functools.partial(distort, config=spec.distort)
    last = _LastEvaluation()
    history = fit_on(
        model,
        loaded,
        spec.train,
        callbacks=[*callbacks, last],
        checkpoint=functools.partial(runs.save_checkpoint, run_dir),
        resume=state,
        augment=augment,
    )
    evaluation = last.evaluation  # the final epoch's; None when no epoch was left to train
    if evaluation is None:
        evaluation = evaluate(
            model,
            loaded.test_images,
            loaded.test_labels,
            loaded.to_input,
            spec.train.eval_batch_size,
            make_loss(spec.train),
        )
    wall = time.perf_counter() - started
    runs.write_summary(
        run_dir,
        evaluation,
        epochs=len(history),
        wall_seconds=wall,  # this invocation's, from model build to final evaluation
        extra={
            "arch": spec.arch,
            "train_seconds": sum(record.seconds for record in history),  # all epochs
            "resumed": resume,
        },
    )
    _plot_curves(history, run_dir)
    return RunResult(history, evaluation, wall)


class _LastEvaluation(Callback):
    """Keeps fit's last test-set evaluation, so that the run need not evaluate again."""

    def __init__(self) -> None:
        self.evaluation: Evaluation | None = None

    def on_evaluation(self, epoch: int, evaluation: Evaluation) -> None:
        self.evaluation = evaluation


def _plot_curves(history, run_dir) -> None:
    try:
        from lenet5 import plots
    except ImportError:  # pragma: no cover - matplotlib is an optional extra
        return
    plots.plot_history(history, run_dir)


def load_run(run_dir: str | os.PathLike) -> tuple[RunSpec, nn.Module]:
    """The spec and trained model of a run directory (weights loaded, eval mode)."""
    spec = RunSpec.from_dict(runs.read_config(run_dir))
    model = runs.load_weights(run_dir, models.build(spec.arch, **spec.model_options))
    return spec, model.eval()


@dataclass(frozen=True)
class RunEvaluation:
    spec: RunSpec
    test_images: Tensor  # prepared, uint8 [N, 32, 32]
    test_labels: Tensor
    evaluation: Evaluation


def evaluate_run(
    run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None
) -> RunEvaluation:
    """Rebuild a run's model and test split from its directory and evaluate it."""
    spec, model = load_run(run_dir)
    test = data.load_split(spec.dataset, "test", data_dir)
    images = data.prepare(test.images, spec.input)
    evaluation = evaluate(
        model,
        images,
        test.labels,
        functools.partial(data.to_float, spec=spec.input),
        spec.train.eval_batch_size,
        make_loss(spec.train),
    )
    return RunEvaluation(spec, images, test.labels, evaluation)
