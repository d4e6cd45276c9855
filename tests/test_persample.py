"""persample.py: the written-out per-sample step against autograd through the Classic model."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lenet5 import persample, sdlm
from lenet5.losses import map_loss, plain
from lenet5.models import build
from lenet5.train import TrainConfig, fit


@pytest.fixture
def float64():
    """Exact comparisons in float64 (float32 rounding grows over SDLM steps); restored after."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def classic(seed: int = 0):
    """A classic network with the sqrt init: larger signals, so gradients reach every layer."""
    torch.manual_seed(seed)
    return build("classic", init="sqrt")


def autograd_reference(model, x, label, criterion):
    loss_fn = plain if criterion == "plain" else map_loss(0.3)
    loss = loss_fn(model(x), label).sum()
    return loss.detach(), torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("criterion", persample.CRITERIA)
def test_written_out_step_equals_autograd(criterion, float64):
    model = classic()
    step = persample.ClassicStep(model, criterion, 0.3, compiled=False)
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        x = torch.rand(1, 1, 32, 32, generator=generator) * 1.3 - 0.1
        label = torch.tensor([seed * 3])
        loss, grads = step(x, label)
        expected_loss, expected = autograd_reference(model, x, label, criterion)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-12)
        assert [g.shape for g in grads] == [p.shape for p in model.parameters()]
        for grad, reference in zip(grads, expected, strict=True):
            assert reference.abs().max() > 0  # every layer gets a gradient to compare
            torch.testing.assert_close(grad, reference, rtol=1e-10, atol=1e-12)


def test_compiled_step_equals_eager_step():
    model = classic()
    x, label = torch.rand(1, 1, 32, 32), torch.tensor([7])
    eager_loss, eager = persample.ClassicStep(model, "map", 0.1, compiled=False)(x, label)
    loss, grads = persample.ClassicStep(model, "map", 0.1)(x, label)
    torch.testing.assert_close(loss, eager_loss)
    for grad, reference in zip(grads, eager, strict=True):  # float32: fused sums round apart
        scale = float(reference.abs().max())
        torch.testing.assert_close(grad, reference, rtol=0, atol=1e-5 * scale)


def test_compile_refused_at_construction_falls_back_to_eager(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("torch.compile is not supported on this Python")

    monkeypatch.setattr(torch, "compile", refuse)
    with pytest.warns(RuntimeWarning, match="not supported on this Python"):
        step = persample.ClassicStep(classic(), "map", 0.1)
    assert step.function is persample.classic_step


def test_compiler_failure_falls_back_to_eager_with_a_warning():
    model = classic()
    step = persample.ClassicStep(model, "plain", 0.1)

    def broken(*args):
        raise RuntimeError("no C++ compiler")

    step.function = broken
    x, label = torch.rand(1, 1, 32, 32), torch.tensor([2])
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        loss, _ = step(x, label)
    torch.testing.assert_close(loss, autograd_reference(model, x, label, "plain")[0])
    assert step.function is persample.classic_step


def test_only_the_paper_setting_is_supported():
    model = classic()
    assert persample.supports(model, "map", 1)
    assert not persample.supports(model, "cross_entropy", 1)
    assert not persample.supports(model, "map", 2)
    assert not persample.supports(build("twin"), "map", 1)
    model.c1.conv.bias.requires_grad_(False)
    assert not persample.supports(model, "map", 1)
    with pytest.raises(ValueError, match="Classic model"):
        persample.ClassicStep(model, "map", 0.1)
    with pytest.raises(ValueError, match="one sample at a time"):
        persample.ClassicStep(classic(), "map", 0.1, compiled=False)(
            torch.rand(2, 1, 32, 32), torch.tensor([1, 2])
        )


def test_unfold_index_is_unfold():
    x = torch.rand(3, 9, 9)
    index = persample.unfold_index(3, 9, 4)
    torch.testing.assert_close(x.reshape(-1)[index], torch.nn.functional.unfold(x[None], 4)[0])


def test_fit_with_the_written_out_step_trains_as_autograd_does(float64):
    """Per-sample SDLM through fit: the written-out step and autograd's end on the same
    weights; make_step supplies it only for the setting it computes."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (12,), generator=generator)
    config = TrainConfig(
        epochs=2, batch_size=1, optimizer="sdlm", lr=5e-4, schedule="paper", loss="map"
    )

    def to_input(batch):
        return batch.unsqueeze(1).double() / 255 * 1.275 - 0.1

    def train(use_written: bool):
        model = classic(1)
        factory = persample.make_step if use_written else None
        history = fit(
            model, images, labels, images[:10], labels[:10], to_input, config, step_factory=factory
        )
        return model, history

    written, written_history = train(True)
    reference, reference_history = train(False)
    for param, expected in zip(written.parameters(), reference.parameters(), strict=True):
        assert not torch.equal(param, classic(1).state_dict()[_name(reference, expected)])
        torch.testing.assert_close(param, expected, rtol=1e-9, atol=1e-11)
    for mine, theirs in zip(written_history, reference_history, strict=True):
        assert mine.train_loss == pytest.approx(theirs.train_loss, rel=1e-9)

    model = classic()
    optimizer = sdlm.SDLM(list(model.parameters()))
    assert persample.make_step(model, optimizer, config).__name__ == "per_sample_step"
    for other in (
        replace(config, batch_size=2),
        replace(config, precision="bf16"),
        replace(config, loss="cross_entropy"),
    ):
        assert persample.make_step(model, optimizer, other) is None
    adam = torch.optim.Adam(model.parameters())
    assert persample.make_step(model, adam, config) is None


def _name(model, param) -> str:
    return next(name for name, p in model.named_parameters() if p is param)
