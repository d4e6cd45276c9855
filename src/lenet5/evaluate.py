"""Evaluation: metrics as returned values, in the manner of airbench's evaluate.

`evaluate` takes any model that maps float input [B, 1, H, W] to scores [B, C] whose argmax is
the prediction (the classic LeNet-5's negated RBF penalties included), plus uint8 images and a
`to_input` function, and returns an `Evaluation`: accuracy, the mean per-sample loss, the
confusion matrix and the misclassified samples (the paper's Fig. 8 shows those of LeNet-5).
It prints nothing and waits for the device only to check the labels and at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one pass over a labelled set; tensors are on the CPU."""

    accuracy: float  # fraction correct
    loss: float  # sum of per-sample losses / count
    errors: int
    count: int
    per_class_accuracy: tuple[float, ...]  # NaN for a class with no samples
    confusion: Tensor  # [C, C] int64, rows the true class, columns the predicted one
    predictions: Tensor  # [count] int64
    misclassified: Tensor  # indices of the wrong predictions, ascending


def _cross_entropy(scores: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(scores, labels, reduction="none")


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    to_input: Callable[[Tensor], Tensor],
    batch_size: int = 250,
    loss: Callable[[Tensor, Tensor], Tensor] = _cross_entropy,
) -> Evaluation:
    """Score `images` (uint8 [N, H, W]) against `labels` (int64 [N]) in eval mode.

    `loss(scores, labels)` must return one loss per sample; the default is softmax
    cross-entropy. Batches go to the model's device; the model's train/eval mode is restored."""
    count = len(labels)
    if count == 0 or len(images) != count:
        raise ValueError(f"need as many images as labels, at least one: {len(images)}, {count}")
    device = _model_device(model)
    labels = labels.to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            predictions, loss_sum, confusion = [], torch.zeros((), device=device), None
            for begin in range(0, count, batch_size):
                truth = labels[begin : begin + batch_size]
                scores = model(to_input(images[begin : begin + batch_size].to(device)))
                classes = scores.shape[1]
                if confusion is None:
                    confusion = torch.zeros(classes * classes, dtype=torch.long, device=device)
                    if not 0 <= int(labels.min()) <= int(labels.max()) < classes:
                        raise ValueError(f"labels must lie in [0, {classes}): {classes} scores")
                per_sample = loss(scores, truth)
                if per_sample.shape != truth.shape:
                    raise ValueError(
                        f"loss must return one value per sample, shape {tuple(truth.shape)}; "
                        f"got {tuple(per_sample.shape)}"
                    )
                guess = scores.argmax(dim=1)
                # One bincount fills the C x C table: true class t, prediction p -> t * C + p.
                confusion += torch.bincount(truth * classes + guess, minlength=classes**2)
                loss_sum += per_sample.double().sum()
                predictions.append(guess)
    finally:
        model.train(was_training)
    confusion = confusion.view(classes, classes).cpu()
    predictions = torch.cat(predictions).cpu()
    misclassified = (predictions != labels.cpu()).nonzero().flatten()
    correct = int(confusion.diagonal().sum())
    per_class = confusion.diagonal().double() / confusion.sum(dim=1).double()
    return Evaluation(
        accuracy=correct / count,
        loss=float(loss_sum) / count,
        errors=count - correct,
        count=count,
        per_class_accuracy=tuple(float(a) for a in per_class),
        confusion=confusion,
        predictions=predictions,
        misclassified=misclassified,
    )
