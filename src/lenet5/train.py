"""Training: one frozen config dataclass and a plain `fit()` loop that returns its history.

The loop follows pytorch/examples' MNIST trainer and airbench: whole splits live in memory as
uint8 tensors, each epoch draws one seeded permutation and slices batches by index (no
Dataset/DataLoader), and the step (forward, loss, backward, update) stays in view. `fit` takes
a model and tensors and never names an architecture; the caller turns uint8 images into network
input with `to_input` (e.g. `functools.partial(lenet5.data.to_float, spec=spec)`).

Everything a run needs to continue bit for bit (weights, optimiser, scheduler, shuffling and
dropout RNG states, history) is captured in a `TrainState` at each epoch end and handed to the
`checkpoint` hook; `fit(..., resume=state)` carries on from it. Printing, progress bars,
TensorBoard and plots plug in from outside through `Callback`s and the returned history.

Deviation from the paper (section III-B): the paper updates after every sample (batch 1) with
its stochastic diagonal Levenberg-Marquardt optimiser; the defaults here are the widespread
modern recipe (Adam, lr 2e-3, batch 256, 15 epochs). New optimisers, schedules and criteria are
one entry in `OPTIMIZERS`, `SCHEDULES` or `LOSSES`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lenet5 import losses, sdlm
from lenet5.evaluate import Evaluation, evaluate

# Criteria map (scores [B, C], labels [B]) to per-sample losses [B], so that evaluation can
# average over samples exactly and the paper's criteria (eq. 8, eq. 9) fit as they are.
Loss = losses.Loss


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # TrainConfig.precision -> autocast dtype


@dataclass(frozen=True)
class TrainConfig:
    """How to train; the command line is built from these defaults."""

    epochs: int = 15
    batch_size: int = 256
    optimizer: str = "adam"  # a key of OPTIMIZERS
    lr: float = 2e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    schedule: str = "constant"  # a key of SCHEDULES; the factor is applied per step
    step_every: int = 5  # "step" schedule: multiply lr by step_gamma every this many epochs
    step_gamma: float = 0.1
    loss: str = "cross_entropy"  # a key of LOSSES
    label_smoothing: float = 0.0  # cross_entropy only
    map_j: float = losses.MAP_J  # "map" only: the penalty of the paper's "none of these" class
    mu: float = sdlm.MU  # "sdlm" only: the safety term in lr / (mu + h)
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    # "bf16": forward and loss under torch.autocast to bfloat16 (weights, gradients and the
    # optimiser stay float32); faster on GPUs and on CPUs with bf16 instructions, at bf16's
    # precision. Evaluation always runs in float32.
    precision: str = "fp32"  # "fp32" | "bf16"
    # Test-set batches: 250 is faster than 1000 on a CPU (the activations stay in cache) and
    # needs a quarter of the transient memory.
    eval_batch_size: int = 250

    def __post_init__(self) -> None:
        for name, table in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("loss", LOSSES),
        ):
            if getattr(self, name) not in table:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; one of {sorted(table)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"unknown device {self.device!r}; one of auto, cpu, cuda")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; one of {sorted(PRECISIONS)}")
        if self.epochs < 0 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("epochs must be >= 0 and batch sizes >= 1")
        if self.step_every < 1:
            raise ValueError("step_every must be >= 1")


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch did. Accuracy is a fraction; `lr` is the rate of the epoch's first step;
    `seconds` and `images_per_second` time the training pass only, `eval_seconds` the test."""

    epoch: int
    train_loss: float  # mean over the epoch's samples, in train mode as the weights moved
    test_loss: float  # the training criterion on the test set, in eval mode
    test_accuracy: float
    test_errors: int
    lr: float
    seconds: float
    images_per_second: float
    eval_seconds: float


@dataclass(frozen=True)
class Plan:
    """What `fit` is about to do, for callbacks that size progress bars or step axes."""

    epochs: int
    first_epoch: int  # 1 on a fresh start, k + 1 when resuming after epoch k
    steps_per_epoch: int
    train_size: int
    batch_size: int


@dataclass(frozen=True)
class TrainState:
    """A snapshot at an epoch end from which `fit` continues bit for bit. Tensors are CPU
    copies, so holding a state never aliases the live model or optimiser."""

    epoch: int  # epochs completed
    history: tuple[EpochRecord, ...]
    model: dict[str, Tensor]
    optimizer: dict  # torch.optim.Optimizer.state_dict()
    scheduler: dict  # torch.optim.lr_scheduler.LRScheduler.state_dict()
    shuffle_rng: Tensor  # state of the torch.Generator that draws each epoch's permutation
    torch_rng: Tensor  # torch.get_rng_state(): the CPU generator dropout draws from
    cuda_rng: Tensor | None = None  # torch.cuda.get_rng_state() when training on CUDA


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last checkpoint is the previous epoch's."""

    def __init__(self, epoch: int, step: int, loss: float):
        super().__init__(
            f"non-finite training loss ({loss}) at epoch {epoch}, step {step}; training stopped "
            f"and the last checkpoint (end of epoch {epoch - 1}) is kept. Lower the learning "
            "rate or check the input scaling."
        )
        self.epoch, self.step, self.loss = epoch, step, loss


class Callback:
    """Hooks `fit` calls with plain values; override the ones you need. `on_step` receives
    the loss as a device tensor: calling `.item()` on it synchronises with the device, so do
    that every few steps, not every step. `on_train_end` is also called when training stops
    with an exception, so that monitors can flush and close."""

    def on_train_start(self, plan: Plan) -> None:
        pass

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def on_step(self, epoch: int, step: int, loss: Tensor, lr: float) -> None:
        pass

    def on_evaluation(self, epoch: int, evaluation: Evaluation) -> None:
        """The whole test-set evaluation of the epoch (confusion, predictions, ...), called
        just before on_epoch_end."""

    def on_epoch_end(self, record: EpochRecord) -> None:
        pass

    def on_train_end(self, history: tuple[EpochRecord, ...]) -> None:
        pass


# --- optimisers, schedules and criteria: one small builder per name ----------------------


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _adam(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(_trainable(model), lr=config.lr, weight_decay=config.weight_decay)


def _sgd(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        _trainable(model), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _sdlm(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # The paper's optimiser (Appendix C). Its curvature estimate is refreshed by `fit` before
    # every pass; with batches of B, each step is scaled by B (see sdlm.SDLM).
    optimizer = sdlm.SDLM(_trainable(model), lr=config.lr, mu=config.mu)
    optimizer.param_groups[0]["batch_scale"] = float(config.batch_size)
    return optimizer


# Builders get the whole model (not just its parameters) so that an optimiser that needs the
# network's structure, like the paper's diagonal Levenberg-Marquardt (Appendix C), fits here.
OPTIMIZERS: dict[str, Callable[[nn.Module, TrainConfig], torch.optim.Optimizer]] = {
    "adam": _adam,
    "sgd": _sgd,
    "sdlm": _sdlm,
}


# Each schedule maps (step, total steps, steps per epoch, config) to a factor on config.lr,
# applied before every step; step counts from 0.
def _constant(step: int, total: int, per_epoch: int, config: TrainConfig) -> float:
    return 1.0


def _step(step: int, total: int, per_epoch: int, config: TrainConfig) -> float:
    return config.step_gamma ** (step // (config.step_every * per_epoch))


def _cosine(step: int, total: int, per_epoch: int, config: TrainConfig) -> float:
    # Loshchilov & Hutter (2017) without restarts, annealed per step down to 0.
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


# Smith & Topin (2019) one-cycle with torch.optim.lr_scheduler.OneCycleLR's defaults: start at
# lr / 25, rise over the first 30% of steps, then cosine-anneal to lr / (25 * 1e4). Unlike
# OneCycleLR, momentum is not cycled.
ONECYCLE_WARMUP, ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 0.3, 25.0, 1e4


def _onecycle(step: int, total: int, per_epoch: int, config: TrainConfig) -> float:
    low, floor = 1.0 / ONECYCLE_DIV, 1.0 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
    peak = max(1.0, ONECYCLE_WARMUP * total - 1)
    if step <= peak:
        return low + (1.0 - low) * 0.5 * (1.0 - math.cos(math.pi * step / peak))
    progress = min(1.0, (step - peak) / max(1.0, total - 1 - peak))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _paper(step: int, total: int, per_epoch: int, config: TrainConfig) -> float:
    # Section III-B: eta by pass, relative to its first value (so lr=5e-4 gives the paper's).
    return sdlm.paper_eta(step // per_epoch) / sdlm.PAPER_ETA[0]


SCHEDULES: dict[str, Callable[[int, int, int, TrainConfig], float]] = {
    "constant": _constant,
    "paper": _paper,
    "step": _step,
    "cosine": _cosine,
    "onecycle": _onecycle,
}


def _cross_entropy(config: TrainConfig) -> Loss:
    # Softmax cross-entropy. On the classic model, whose scores are the negated RBF penalties
    # -y_i, this is exactly the paper's MAP criterion (eq. 9) with j -> infinity, i.e. without
    # the "none of these" class: y_D + log(sum_i exp(-y_i)).
    def loss(scores: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(
            scores, labels, reduction="none", label_smoothing=config.label_smoothing
        )

    return loss


LOSSES: dict[str, Callable[[TrainConfig], Loss]] = {
    "cross_entropy": _cross_entropy,
    "plain": lambda config: losses.plain,  # eq. 8
    "map": lambda config: losses.map_loss(config.map_j),  # eq. 9
}


def make_loss(config: TrainConfig) -> Loss:
    """The per-sample criterion `fit` trains with, also for evaluating a saved run."""
    return LOSSES[config.loss](config)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    total = max(1, config.epochs * steps_per_epoch)
    factor = SCHEDULES[config.schedule]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: factor(step, total, steps_per_epoch, config)
    )


Step = Callable[[Tensor, Tensor], Tensor]  # (inputs, labels) -> the batch's mean loss
# Given (model, optimiser, config), a specialised training step, or None where it does not
# apply (e.g. lenet5.persample.make_step: the classic network's per-sample SDLM step).
StepFactory = Callable[[nn.Module, torch.optim.Optimizer, "TrainConfig"], Step | None]


def autograd_step(model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig) -> Step:
    """The training step: forward (under bf16 autocast if asked), loss, back-propagation
    through autograd, update; returns the batch's mean loss."""
    loss_fn = make_loss(config)
    autocast_dtype = PRECISIONS[config.precision]
    device_type = next(model.parameters()).device.type

    def step(inputs: Tensor, labels: Tensor) -> Tensor:
        if autocast_dtype is None:
            loss = loss_fn(model(inputs), labels).mean()
        else:  # the loss itself in float32, whatever precision the criterion ran in
            with torch.autocast(device_type, autocast_dtype):
                loss = loss_fn(model(inputs), labels).float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    return torch.device(name)


# --- the loop ----------------------------------------------------------------------------

# Checking the loss for NaN means reading it on the host, which waits for the device; doing
# it every this many steps (and at each epoch end) keeps the device busy in between.
FINITE_CHECK_EVERY = 50
# `augment` is called on this many training images at a time (rounded to whole batches), in
# the epoch's order, so that small batches do not pay its per-call cost each step.
AUGMENT_CHUNK = 2048


def fit(
    model: nn.Module,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    to_input: Callable[[Tensor], Tensor],
    config: TrainConfig = TrainConfig(),  # noqa: B008 (frozen, so a shared default is safe)
    *,
    callbacks: Sequence[Callback] = (),
    checkpoint: Callable[[TrainState], None] | None = None,
    resume: TrainState | None = None,
    augment: Callable[[Tensor], Tensor] | None = None,
    step_factory: StepFactory | None = None,
) -> tuple[EpochRecord, ...]:
    """Train `model` on uint8 images [N, H, W] and int64 labels [N], evaluate on the test
    split after every epoch, and return one record per epoch (resumed ones included).

    A fresh start seeds the global torch RNG with `config.seed` (dropout draws from it); seed
    before building the model too, for reproducible initial weights. Raises
    `NonFiniteLossError` if the loss becomes NaN or infinite.

    `step_factory`, if given, may supply a faster step for this model, optimiser and config
    (computing the same thing); where it returns None, or is not given, `autograd_step` runs.
    Steps on one sample at a time run on one CPU thread, whatever torch's setting: a second
    thread only waits on the first.

    `augment`, if given, maps uint8 training images to new ones before `to_input` (e.g.
    `lenet5.distort`), one fresh draw per image each epoch; it is called on consecutive chunks
    of about AUGMENT_CHUNK images of the epoch's order, whole batches each. It should draw
    from the global torch RNG, which resuming restores."""
    if not 0 < len(train_labels) == len(train_images):
        raise ValueError(
            f"need as many training images as labels, at least one: "
            f"{len(train_images)}, {len(train_labels)}"
        )
    device = resolve_device(config.device)
    model.to(device)
    train_images, train_labels = train_images.to(device), train_labels.to(device)
    test_images, test_labels = test_images.to(device), test_labels.to(device)
    n, batch_size = len(train_labels), config.batch_size
    steps_per_epoch = math.ceil(n / batch_size)
    loss_fn = make_loss(config)
    optimizer = OPTIMIZERS[config.optimizer](model, config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    train_step = step_factory(model, optimizer, config) if step_factory is not None else None
    if train_step is None:
        train_step = autograd_step(model, optimizer, config)
    # One sample's work is too small to split: a second CPU thread only waits on the first
    # (and, on a busy machine, for the first to be scheduled again).
    step_threads = 1 if batch_size == 1 and device.type == "cpu" else torch.get_num_threads()
    augment_chunk = batch_size * max(1, AUGMENT_CHUNK // batch_size)  # whole batches
    shuffle = torch.Generator().manual_seed(config.seed)
    if resume is None:
        history = []
        torch.manual_seed(config.seed)
    else:
        history = _restore(resume, model, optimizer, scheduler, shuffle, device)
    plan = Plan(config.epochs, len(history) + 1, steps_per_epoch, n, batch_size)
    for callback in callbacks:
        callback.on_train_start(plan)
    try:
        for epoch in range(plan.first_epoch, config.epochs + 1):
            for callback in callbacks:
                callback.on_epoch_start(epoch)
            model.train()
            first_lr, started = optimizer.param_groups[0]["lr"], time.perf_counter()
            order = torch.randperm(n, generator=shuffle).to(device)
            if isinstance(optimizer, sdlm.SDLM):  # Appendix C: a fresh estimate per pass
                sample = train_images[order[: sdlm.CURVATURE_SAMPLES]]
                optimizer.set_curvature(sdlm.gauss_newton_diagonal(model, to_input(sample)))
            step_losses = []
            with _threads(step_threads):
                for step, begin in enumerate(range(0, n, batch_size), start=1):
                    batch = order[begin : begin + batch_size]
                    if augment is None:
                        images = train_images[batch]
                    else:  # one call per chunk of batches: per-sample calls cost ~0.5 ms each
                        if begin % augment_chunk == 0:
                            chunk = order[begin : begin + augment_chunk]
                            augmented = augment(train_images[chunk])
                        images = augmented[begin % augment_chunk :][:batch_size]
                    lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
                    step_losses.append(train_step(to_input(images), train_labels[batch]))
                    scheduler.step()
                    if step % FINITE_CHECK_EVERY == 0:
                        recent = step_losses[-FINITE_CHECK_EVERY:]
                        _check_finite(recent, epoch, step - FINITE_CHECK_EVERY)
                    for callback in callbacks:
                        callback.on_step(epoch, step, step_losses[-1], lr)
            _check_finite(step_losses, epoch, 0)
            train_loss = _mean_loss(step_losses, n, batch_size)  # waits for the device
            seconds = time.perf_counter() - started
            test = evaluate(
                model, test_images, test_labels, to_input, config.eval_batch_size, loss_fn
            )
            record = EpochRecord(
                epoch=epoch,
                train_loss=train_loss,
                test_loss=test.loss,
                test_accuracy=test.accuracy,
                test_errors=test.errors,
                lr=first_lr,
                seconds=seconds,
                images_per_second=n / seconds,
                eval_seconds=time.perf_counter() - started - seconds,
            )
            history.append(record)
            for callback in callbacks:
                callback.on_evaluation(epoch, test)
            if checkpoint is not None:
                checkpoint(_snapshot(history, model, optimizer, scheduler, shuffle, device))
            for callback in callbacks:
                callback.on_epoch_end(record)
    finally:
        for callback in callbacks:
            callback.on_train_end(tuple(history))
    return tuple(history)


# --- helpers of fit ----------------------------------------------------------------------


@contextlib.contextmanager
def _threads(count: int):
    """torch's intra-op thread count set to `count` inside the block, restored after."""
    before = torch.get_num_threads()
    if count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count != before:
            torch.set_num_threads(before)


def _check_finite(losses: list[Tensor], epoch: int, steps_before: int) -> None:
    """Raise NonFiniteLossError naming the first bad step among `losses`, which are the
    steps after the first `steps_before` of the epoch. One host synchronisation."""
    values = torch.stack(losses)
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        index = int(bad[0, 0])
        raise NonFiniteLossError(epoch, steps_before + index + 1, float(values[index]))


def _mean_loss(losses: list[Tensor], n: int, batch_size: int) -> float:
    """Mean per-sample loss of an epoch from its batch means (the last batch may be short)."""
    sizes = torch.full((len(losses),), float(batch_size), device=losses[0].device)
    sizes[-1] = n - batch_size * (len(losses) - 1)
    return float((torch.stack(losses) * sizes).sum() / n)


def _snapshot(
    history: list[EpochRecord],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    shuffle: torch.Generator,
    device: torch.device,
) -> TrainState:
    def to_cpu(value):
        return value.detach().to("cpu", copy=True) if isinstance(value, Tensor) else value

    optimizer_state = optimizer.state_dict()
    return TrainState(
        epoch=len(history),
        history=tuple(history),
        model={name: to_cpu(value) for name, value in model.state_dict().items()},
        optimizer={
            "state": {
                key: {name: to_cpu(value) for name, value in per_param.items()}
                for key, per_param in optimizer_state["state"].items()
            },
            "param_groups": copy.deepcopy(optimizer_state["param_groups"]),
        },
        scheduler=copy.deepcopy(scheduler.state_dict()),
        shuffle_rng=shuffle.get_state(),
        torch_rng=torch.get_rng_state(),
        cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    )


def _restore(
    state: TrainState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    shuffle: torch.Generator,
    device: torch.device,
) -> list[EpochRecord]:
    # The optimiser first: it restores the learning rate the scheduler's constructor reset.
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    shuffle.set_state(state.shuffle_rng)
    torch.set_rng_state(state.torch_rng)
    if device.type == "cuda" and state.cuda_rng is not None:
        torch.cuda.set_rng_state(state.cuda_rng, device)
    return list(state.history)
