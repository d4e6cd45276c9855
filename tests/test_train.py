"""fit() on tiny models and synthetic data: it learns, it is reproducible, it stops on a
non-finite loss, its schedules match torch's own schedulers, and it does not wait for the
device every step. The other test files import the toys defined here."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lenet5.train import (
    FINITE_CHECK_EVERY,
    Callback,
    EpochRecord,
    NonFiniteLossError,
    Plan,
    TrainConfig,
    _mean_loss,
    fit,
    make_scheduler,
)

SIDE = 32  # the networks' input is 32 x 32


class TinyNet(nn.Module):
    """A few hundred parameters, with dropout so that the global RNG matters."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, kernel_size=4, stride=4)  # N x 4 x 8 x 8
        self.dropout = nn.Dropout(0.1)
        self.output = nn.Linear(4 * 8 * 8, classes)  # N x classes

    def forward(self, x):
        return self.output(self.dropout(torch.relu(self.conv(x)).flatten(1)))


def to_input(batch: torch.Tensor) -> torch.Tensor:
    return batch.float().div(255).unsqueeze(1)  # B x 1 x 32 x 32


def synthetic(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 noise with a bright 8 x 8 block whose place (one of 16) encodes the label."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=generator)
    images = torch.randint(0, 60, (n, SIDE, SIDE), generator=generator, dtype=torch.uint8)
    for i, label in enumerate(labels.tolist()):
        row, col = divmod(label, 4)
        images[i, 8 * row : 8 * row + 8, 8 * col : 8 * col + 8] = 250
    return images, labels


def tiny_model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


def weights_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


FAST = TrainConfig(epochs=2, batch_size=32, lr=1e-2, device="cpu", eval_batch_size=64)


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_start(self, plan):
        self.calls.append(("start", plan))

    def on_epoch_start(self, epoch):
        self.calls.append(("epoch", epoch))

    def on_step(self, epoch, step, loss, lr):
        self.calls.append(("step", epoch, step, float(loss), lr))

    def on_epoch_end(self, record):
        self.calls.append(("end", record))

    def on_train_end(self, history):
        self.calls.append(("done", history))


def test_overfits_one_small_batch():
    # Labels unrelated to the images: only memorising the 24 samples reaches 100%.
    images, _ = synthetic(24, seed=1)
    labels = torch.arange(24) % 10
    config = TrainConfig(epochs=40, batch_size=24, lr=3e-2, device="cpu")
    history = fit(tiny_model(), images, labels, images, labels, to_input, config)
    assert history[-1].test_accuracy == 1.0
    assert history[-1].train_loss < 0.1 * history[0].train_loss


def test_learns_synthetic_task_and_reports_history():
    images, labels = synthetic(640)
    test_images, test_labels = synthetic(200, seed=1)
    recorder = Recorder()
    config = TrainConfig(epochs=3, batch_size=50, lr=1e-2, device="cpu")
    history = fit(
        tiny_model(),
        images,
        labels,
        test_images,
        test_labels,
        to_input,
        config,
        callbacks=[recorder],
    )
    assert [r.epoch for r in history] == [1, 2, 3]
    assert all(isinstance(r, EpochRecord) for r in history)
    assert history[-1].test_accuracy > 0.95
    assert history[-1].test_errors == round((1 - history[-1].test_accuracy) * 200)
    assert all(r.lr == config.lr and r.seconds > 0 for r in history)
    assert all(r.images_per_second == pytest.approx(640 / r.seconds) for r in history)
    # The callbacks see the plan, every step (640 / 50 -> 13 steps, the last one short),
    # each record, and the history once at the end.
    kinds = [call[0] for call in recorder.calls]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert recorder.calls[0][1] == Plan(3, 1, 13, 640, 50)
    steps = [call for call in recorder.calls if call[0] == "step"]
    assert [(c[1], c[2]) for c in steps] == [(e, s) for e in (1, 2, 3) for s in range(1, 14)]
    assert [c[1] for c in recorder.calls if c[0] == "end"] == list(history)
    assert recorder.calls[-1][1] == history
    # The epoch's train loss is the per-sample mean of its steps' batch means.
    epoch1 = [c[3] for c in steps if c[1] == 1]
    expected = (sum(epoch1[:-1]) * 50 + epoch1[-1] * 40) / 640
    assert history[0].train_loss == pytest.approx(expected, rel=1e-5)


def test_same_seed_same_weights_and_different_seed_differs():
    images, labels = synthetic(200)
    models = [tiny_model(), tiny_model(), tiny_model()]
    for model, seed in zip(models, (0, 0, 1), strict=True):
        config = TrainConfig(**{**FAST.__dict__, "seed": seed})
        fit(model, images, labels, images[:50], labels[:50], to_input, config)
    assert weights_equal(models[0], models[1])
    assert not weights_equal(models[0], models[2])


class Poisoned(TinyNet):
    """Returns NaN scores from the `poison_at`-th forward call in training mode onwards."""

    def __init__(self, poison_at: int):
        super().__init__()
        self.poison_at, self.calls = poison_at, 0

    def forward(self, x):
        scores = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.poison_at:
                return scores * float("nan")
        return scores


@pytest.mark.parametrize("poison_at", [3, FINITE_CHECK_EVERY + 23])
def test_nan_loss_stops_with_epoch_and_step(poison_at):
    images, labels = synthetic(32 * (FINITE_CHECK_EVERY + 30))  # more steps than one check
    torch.manual_seed(0)
    model, saved, recorder = Poisoned(poison_at), [], Recorder()
    config = TrainConfig(epochs=2, batch_size=32, device="cpu")
    with pytest.raises(NonFiniteLossError, match=f"epoch 1, step {poison_at}") as caught:
        fit(
            model,
            images,
            labels,
            images[:10],
            labels[:10],
            to_input,
            config,
            callbacks=[recorder],
            checkpoint=saved.append,
        )
    assert (caught.value.epoch, caught.value.step) == (1, poison_at)
    assert math.isnan(caught.value.loss)
    assert saved == []  # no epoch completed, so nothing was checkpointed
    assert recorder.calls[-1] == ("done", ())  # monitors still get to close


def test_huge_learning_rate_raises_non_finite():
    images, labels = synthetic(256)
    config = TrainConfig(epochs=3, batch_size=16, optimizer="sgd", lr=1e30, device="cpu")
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step \d+"):
        fit(tiny_model(), images, labels, images, labels, to_input, config)


def test_no_host_sync_per_step(monkeypatch):
    """Reading a tensor's value on the host (item, float, int, bool, tolist) waits for the
    device; fit may do it per check, not per step."""
    counts = {"reads": 0}
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            counts["reads"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    steps = 4 * FINITE_CHECK_EVERY
    images, labels = synthetic(steps * 4)
    config = TrainConfig(epochs=1, batch_size=4, optimizer="sgd", device="cpu")
    fit(tiny_model(), images, labels, images[:100], labels[:100], to_input, config)
    assert counts["reads"] < steps / 4


def test_mean_loss_weights_the_short_last_batch():
    losses = [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0)]
    assert _mean_loss(losses, n=10, batch_size=4) == pytest.approx((4 + 8 + 8) / 10)


def _lrs(scheduler, steps):
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("schedule", ["constant", "step", "cosine", "onecycle"])
def test_schedules_match_torch_schedulers(schedule):
    """Each schedule, per step, against the torch scheduler it follows."""
    epochs, per_epoch, lr = 6, 7, 0.1
    config = TrainConfig(epochs=epochs, lr=lr, schedule=schedule, step_every=2, step_gamma=0.5)

    def optimizer():
        return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)

    ours = _lrs(make_scheduler(optimizer(), config, per_epoch), epochs * per_epoch)
    reference_optimizer = optimizer()
    total = epochs * per_epoch
    lr_scheduler = torch.optim.lr_scheduler
    reference = {
        "constant": lambda o: lr_scheduler.ConstantLR(o, factor=1.0),
        "step": lambda o: lr_scheduler.StepLR(o, step_size=2 * per_epoch, gamma=0.5),
        "cosine": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=total),
        "onecycle": lambda o: lr_scheduler.OneCycleLR(
            o, max_lr=lr, total_steps=total, cycle_momentum=False
        ),
    }[schedule](reference_optimizer)
    assert ours == pytest.approx(_lrs(reference, total), rel=1e-9, abs=1e-12)


def test_config_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="unknown schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="unknown loss"):
        TrainConfig(loss="hinge")
    with pytest.raises(ValueError, match="unknown device"):
        TrainConfig(device="tpu")
    with pytest.raises(ValueError, match="unknown precision"):
        TrainConfig(precision="fp8")


def test_bf16_autocast_trains_and_keeps_float32_weights():
    """precision="bf16" runs the forward pass in bfloat16 (seen from inside the model) and
    still learns; weights and the reported losses stay float32."""
    images, labels = synthetic(640)
    test_images, test_labels = synthetic(200, seed=1)
    model, dtypes = tiny_model(), []
    model.output.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    config = TrainConfig(epochs=3, batch_size=50, lr=1e-2, device="cpu", precision="bf16")
    history = fit(model, images, labels, test_images, test_labels, to_input, config)
    assert history[-1].test_accuracy > 0.9
    assert torch.bfloat16 in dtypes  # training steps
    assert dtypes[-1] == torch.float32  # evaluation
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.integration
def test_real_mnist_10k_images_over_95_percent(mnist_dir):
    """10,000 real training images, 4 epochs of Adam at batch 64, > 95% on the full test
    set with the twin model (about 97.7% on a 2-core CPU in about 10 s)."""
    import functools

    from lenet5 import data, models

    spec = data.InputSpec()
    train = data.load_split("mnist", "train", mnist_dir)
    test = data.load_split("mnist", "test", mnist_dir)
    torch.manual_seed(0)
    model = models.build("twin")
    history = fit(
        model,
        data.prepare(train.images[:10_000], spec),
        train.labels[:10_000],
        data.prepare(test.images, spec),
        test.labels,
        functools.partial(data.to_float, spec=spec),
        TrainConfig(epochs=4, batch_size=64, device="cpu"),
    )
    assert history[-1].test_accuracy > 0.95, history


def test_rejects_empty_or_mismatched_training_data():
    images, labels = synthetic(10)
    with pytest.raises(ValueError, match="as many training images as labels"):
        fit(TinyNet(), images[:0], labels[:0], images, labels, to_input, FAST)
    with pytest.raises(ValueError, match="as many training images as labels"):
        fit(TinyNet(), images[:5], labels, images, labels, to_input, FAST)


@pytest.mark.parametrize("batch_size", [1, 7, 3000])
def test_augment_maps_every_training_image_once_per_epoch_in_chunks(monkeypatch, batch_size):
    """augment sees each image once per epoch, in the epoch's order and in chunks of whole
    batches, and the model trains on exactly what it returned."""
    monkeypatch.setattr("lenet5.train.AUGMENT_CHUNK", 16)
    images, labels = synthetic(40)
    images[:, 0, 0] = torch.arange(40, dtype=torch.uint8)  # each image's index, in a pixel
    calls, seen = [], []

    def augment(batch):
        calls.append(batch[:, 0, 0].tolist())
        return 255 - batch  # a visible change, keeping the index pixel decodable

    def recording_input(batch):
        if torch.is_grad_enabled():  # training steps; evaluation runs in inference mode
            seen.extend((255 - batch[:, 0, 0]).tolist())
        return to_input(batch)

    config = TrainConfig(epochs=2, batch_size=batch_size, lr=1e-3, device="cpu")
    fit(tiny_model(), images, labels, images, labels, recording_input, config, augment=augment)
    chunk = batch_size * max(1, 16 // batch_size)
    assert [len(c) for c in calls] == [min(chunk, 40 - i) for i in range(0, 40, chunk)] * 2
    flat = [i for c in calls for i in c]
    assert sorted(flat[:40]) == sorted(flat[40:]) == list(range(40))  # each image once an epoch
    assert flat[:40] != flat[40:]  # reshuffled
    assert seen == flat  # the model got the augmented images, in order
