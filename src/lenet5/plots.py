"""PNG plots of a run: loss and accuracy curves from a history, the confusion matrix, and a
gallery of misclassified test digits captioned "true->predicted" in the manner of the paper's
Fig. 8 (LeCun et al. 1998, the 82 test errors of LeNet-5 with distortions).

matplotlib is an optional dependency (the `plots` extra) imported inside each function. Figures
are drawn with matplotlib's object-oriented API on the Agg canvas, never through pyplot, so no
global backend is switched and no figure is left open; files are written atomically.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path

from torch import Tensor

from lenet5.runs import atomic_write_bytes


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | os.PathLike) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


def _rows(history: Sequence) -> list[Mapping]:
    """EpochRecords (from fit) or dicts (from metrics.jsonl) as dicts."""
    return [asdict(row) if is_dataclass(row) else row for row in history]


def plot_history(history: Sequence, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write loss.png (train and test loss per epoch) and accuracy.png (test accuracy, with
    the error rate on a log scale beside it) into `out_dir`."""
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    rows = _rows(history)
    if not rows:
        raise ValueError("an empty history has no curves to plot")
    epochs = [row["epoch"] for row in rows]
    out_dir = Path(out_dir)

    figure = _figure(6, 4)
    axes = figure.subplots()
    axes.plot(epochs, [row["train_loss"] for row in rows], marker="o", label="train")
    axes.plot(epochs, [row["test_loss"] for row in rows], marker="o", label="test")
    axes.set(xlabel="epoch", ylabel="loss (mean per sample)", title="Loss")
    axes.set_yscale("log")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    loss_png = _save(figure, out_dir / "loss.png")

    figure = _figure(9, 4)
    accuracy, error = figure.subplots(1, 2)
    accuracy.plot(epochs, [100 * row["test_accuracy"] for row in rows], marker="o")
    accuracy.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    error.plot(epochs, [100 * (1 - row["test_accuracy"]) for row in rows], marker="o")
    error.set(xlabel="epoch", ylabel="test error (%)", title="Test error")
    if all(row["test_accuracy"] < 1 for row in rows):
        error.set_yscale("log")
        error.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # 0.9, not 9 x 10^-1
        error.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    for axes in (accuracy, error):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    figure.tight_layout()
    return loss_png, _save(figure, out_dir / "accuracy.png")


def plot_confusion(
    confusion: Tensor, path: str | os.PathLike, class_names: Sequence[str] | None = None
) -> Path:
    """Write the confusion matrix (rows the true class, columns the prediction) with counts;
    the colour is the count on a log scale so that the few errors show beside the diagonal."""
    from matplotlib.colors import LogNorm

    counts = confusion.cpu().numpy()
    classes = len(counts)
    names = list(class_names) if class_names is not None else [str(i) for i in range(classes)]
    figure = _figure(6.5, 5.5)
    axes = figure.subplots()
    image = axes.imshow(counts + 1, cmap="Blues", norm=LogNorm())  # + 1: log of 0 counts
    figure.colorbar(image, ax=axes, label="count + 1")
    axes.set(xticks=range(classes), yticks=range(classes), xticklabels=names, yticklabels=names)
    axes.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    threshold = math.sqrt(counts.max() + 1)
    for true in range(classes):
        for guess in range(classes):
            if counts[true, guess]:
                colour = "white" if counts[true, guess] + 1 > threshold else "black"
                axes.text(
                    guess,
                    true,
                    str(counts[true, guess]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color=colour,
                )
    figure.tight_layout()
    return _save(figure, path)


def plot_misclassified(
    images: Tensor,
    labels: Tensor,
    predictions: Tensor,
    indices: Tensor,
    path: str | os.PathLike,
    *,
    columns: int = 10,
    limit: int = 100,
) -> Path:
    """Write a gallery of the samples at `indices` (e.g. Evaluation.misclassified), each
    captioned "true->predicted" as in the paper's Fig. 8. `images` are uint8 [N, H, W] with
    MNIST's convention of 0 for background, drawn dark on white like the paper's figure."""
    shown = indices[:limit].tolist()
    rows = max(1, math.ceil(len(shown) / columns))
    figure = _figure(columns * 0.9, rows * 1.05 + 0.4)
    grid = figure.subplots(rows, columns, squeeze=False)
    for cell, axes in enumerate(grid.flat):
        axes.set_axis_off()
        if cell < len(shown):
            index = shown[cell]
            axes.imshow(images[index].cpu().numpy(), cmap="gray_r", vmin=0, vmax=255)
            axes.set_title(f"{int(labels[index])}->{int(predictions[index])}", fontsize=8)
    more = f" (first {len(shown)} shown)" if len(indices) > len(shown) else ""
    figure.suptitle(f"{len(indices)} misclassified, true->predicted{more}", fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


def plot_distortions(originals: Tensor, copies: Tensor, path: str | os.PathLike) -> Path:
    """Write a grid with one row per original: the original (uint8 [N, H, W]) first, then its
    distorted copies (uint8 [N, K, H, W]), as section III-C's distortions look to the net."""
    rows, per_row = copies.shape[0], copies.shape[1] + 1
    figure = _figure(per_row * 0.8, rows * 0.8 + 0.4)
    grid = figure.subplots(rows, per_row, squeeze=False)
    for row in range(rows):
        for column in range(per_row):
            image = originals[row] if column == 0 else copies[row, column - 1]
            axes = grid[row, column]
            axes.imshow(image.cpu().numpy(), cmap="gray_r", vmin=0, vmax=255)
            axes.set_xticks([])
            axes.set_yticks([])
            if column == 0:
                for spine in axes.spines.values():
                    spine.set_color("tab:red")
    figure.suptitle("original (red frame), then random distortions", fontsize=9)
    figure.tight_layout()
    return _save(figure, path)
