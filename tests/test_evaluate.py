"""evaluate() against an independent count: numpy loops over the same scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lenet5.evaluate import Evaluation, evaluate
from test_train import TinyNet, synthetic, to_input


def reference(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: int = 10):
    """Accuracy, mean loss, confusion, per-class accuracy and errors, one sample at a time."""
    model.eval()
    with torch.no_grad():
        scores = model(to_input(images)).double().numpy()
    model.train()
    truth = labels.numpy()
    confusion = np.zeros((classes, classes), dtype=np.int64)
    losses, wrong = [], []
    for i in range(len(truth)):
        row = scores[i]
        log_softmax = row - row.max() - math.log(np.exp(row - row.max()).sum())
        losses.append(-log_softmax[truth[i]])
        guess = int(np.argmax(row))
        confusion[truth[i], guess] += 1
        if guess != truth[i]:
            wrong.append(i)
    per_class = [confusion[c, c] / confusion[c].sum() for c in range(classes)]
    return {
        "accuracy": np.trace(confusion) / len(truth),
        "loss": sum(losses) / len(losses),
        "confusion": confusion,
        "per_class": per_class,
        "wrong": wrong,
    }


def half_trained(seed: int = 0) -> TinyNet:
    """Weights that get some but not all of synthetic() right, so every count matters."""
    torch.manual_seed(seed)
    model = TinyNet()
    images, labels = synthetic(300, seed=5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(6):  # about half right; 9 steps get everything right
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(to_input(images)), labels).backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000])
def test_agrees_with_numpy_count(batch_size):
    model = half_trained()
    images, labels = synthetic(203, seed=2)  # 203 = 29 * 7: uneven batches for 64 and 1000
    result = evaluate(model, images, labels, to_input, batch_size=batch_size)
    expected = reference(model, images, labels)
    assert isinstance(result, Evaluation)
    assert 0.1 < result.accuracy < 0.9  # a model that is neither useless nor perfect
    assert result.accuracy == pytest.approx(expected["accuracy"], abs=0)
    assert result.count == 203
    assert result.errors == len(expected["wrong"])
    # The mean over samples, not the mean of batch means: exact to float32 rounding.
    assert result.loss == pytest.approx(expected["loss"], rel=1e-6)
    assert np.array_equal(result.confusion.numpy(), expected["confusion"])
    assert result.confusion.dtype == torch.int64
    assert result.misclassified.tolist() == expected["wrong"]
    assert np.allclose(result.per_class_accuracy, expected["per_class"], equal_nan=True)
    assert (result.predictions != labels).nonzero().flatten().tolist() == expected["wrong"]


def test_mean_of_batch_means_would_differ():
    """Guards the test above: with a short last batch the two means really differ."""
    model = half_trained()
    images, labels = synthetic(203, seed=2)
    per_sample = []
    with torch.no_grad():
        model.eval()
        for begin in range(0, 203, 64):
            batch = slice(begin, begin + 64)
            scores = model(to_input(images[batch]))
            per_sample.append(nn.functional.cross_entropy(scores, labels[batch], reduction="none"))
    batch_means = sum(float(p.mean()) for p in per_sample) / len(per_sample)
    result = evaluate(model, images, labels, to_input, batch_size=64)
    assert abs(batch_means - result.loss) > 1e-4


def test_restores_mode_and_runs_without_autograd():
    seen = []

    class Spy(TinyNet):
        def forward(self, x):
            seen.append((self.training, torch.is_inference_mode_enabled()))
            return super().forward(x)

    model = Spy()
    images, labels = synthetic(20)
    evaluate(model, images, labels, to_input, batch_size=8)
    assert seen == [(False, True)] * 3
    assert model.training
    model.eval()
    evaluate(model, images, labels, to_input)
    assert not model.training


def test_missing_class_has_nan_accuracy_and_classes_follow_the_scores():
    class Constant(nn.Module):
        def forward(self, x):
            return torch.tensor([0.0, 1.0, 0.0]).expand(len(x), 3)  # always predicts 1

    labels = torch.tensor([1, 1, 0, 1])
    result = evaluate(Constant(), torch.zeros(4, 32, 32, dtype=torch.uint8), labels, to_input)
    assert result.confusion.tolist() == [[0, 1, 0], [0, 3, 0], [0, 0, 0]]
    assert result.per_class_accuracy[:2] == (0.0, 1.0)
    assert math.isnan(result.per_class_accuracy[2])
    assert result.misclassified.tolist() == [2]
    assert result.accuracy == 0.75


def test_custom_loss_must_be_per_sample():
    images, labels = synthetic(10)

    def mean_loss(scores, truth):
        return nn.functional.cross_entropy(scores, truth)

    with pytest.raises(ValueError, match="one value per sample"):
        evaluate(TinyNet(), images, labels, to_input, loss=mean_loss)

    def zero(scores, truth):
        return torch.zeros(len(truth))

    assert evaluate(TinyNet(), images, labels, to_input, loss=zero).loss == 0.0


def test_rejects_bad_inputs():
    images, labels = synthetic(10)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        evaluate(TinyNet(), images, labels + 10, to_input)
    with pytest.raises(ValueError, match="as many images as labels"):
        evaluate(TinyNet(), images[:5], labels, to_input)
    with pytest.raises(ValueError, match="at least one"):
        evaluate(TinyNet(), images[:0], labels[:0], to_input)
