"""Epoch throughput: the reference script's data pipeline against lenet5's, on the same network.

    python bench/bench_throughput.py [--quick] [--device cpu|cuda] [--threads N]

Both sides train the twin network with the reference script's hyper-parameters: Adam lr 2e-3,
batch 256, shuffled, cross-entropy. The reference side trains its own network, written here
as the reference's module layout is (`ReferenceLeNet5`: two separate C3 branches, float32
NCHW, LogSoftmax at the end), so that speed-ups inside lenet5's twin do not flatter the
reference; lenet5's side trains `lenet5.models.build("twin")` (the same function).

(a) The reference: activatedgeek/LeNet-5's run.py, re-created here without torchvision. Per
    sample, a Pillow image is resized 28x28 -> 32x32 (bilinear, torchvision's Resize on a PIL
    image) and turned into a float tensor in [0, 1] (torchvision's ToTensor); a Dataset and a
    DataLoader with 8 workers batch them; the loss is nn.CrossEntropyLoss on the log-softmax
    the original network ends with, read with .item() every step (run.py keeps that list for
    its visdom plot). Left out: its console print every 10 batches and the visdom calls.
(b) lenet5: `lenet5.train.fit` with the `reference` recipe's TrainConfig on data prepared once
    by `lenet5.experiment.load_data` (resized once, uint8, batches sliced by index); float32
    (the figure with the target) and, beside it, `precision="bf16"` (autocast).

The sides alternate epoch by epoch (reference, lenet5, lenet5 bf16, reference, ...), so that a
change in the machine's load hits all; lenet5 continues from its last epoch through fit's own
resume state.
Each side's figure is its median epoch; only the training pass is timed (the reference's
includes starting its workers, which run.py does every epoch). lenet5's one-off preparation
is reported beside it. The full mode runs 3 epochs of 60,000 images each; --quick 1 epoch of
the first 15,360.
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bench_report import Figure, Recorder, parser, set_threads
from lenet5 import data, experiment, recipes

# activatedgeek/LeNet-5 run.py: DataLoader(..., batch_size=256, shuffle=True, num_workers=8),
# optim.Adam(net.parameters(), lr=2e-3).
REFERENCE_BATCH, REFERENCE_WORKERS, REFERENCE_LR = 256, 8, 2e-3
FULL_EPOCHS, QUICK_EPOCHS = 3, 1
QUICK_IMAGES = 60 * REFERENCE_BATCH  # 15,360
CHECKED_IMAGES = 1000  # images on which the two pipelines' inputs are compared


class ReferenceLeNet5(nn.Module):
    """The reference's network as its model module lays it out: C1 (conv, ReLU, max-pool),
    two C2 branches (conv, ReLU, max-pool each) whose outputs are added, C3 (conv, ReLU), F4
    (linear, ReLU), F5 (linear, LogSoftmax). PyTorch's default initialisation."""

    def __init__(self) -> None:
        super().__init__()

        def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 5), nn.ReLU(), nn.MaxPool2d(2)
            )

        self.c1 = conv_block(1, 6)  # N x 6 x 14 x 14
        self.c2_1, self.c2_2 = conv_block(6, 16), conv_block(6, 16)  # N x 16 x 5 x 5 each
        self.c3 = nn.Sequential(nn.Conv2d(16, 120, 5), nn.ReLU())  # N x 120 x 1 x 1
        self.f4 = nn.Sequential(nn.Linear(120, 84), nn.ReLU())
        self.f5 = nn.Sequential(nn.Linear(84, 10), nn.LogSoftmax(dim=-1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output = self.c1(images)
        output = self.c2_1(output) + self.c2_2(output)
        output = self.c3(output).flatten(1)
        return self.f5(self.f4(output))


class ResizedMNIST(Dataset):
    """What torchvision's MNIST with Compose([Resize((32, 32)), ToTensor()]) serves: one
    sample at a time, 1 x 32 x 32 floats in [0, 1] and an int label."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels  # uint8 N x 28 x 28, int64 N

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        side = data.INPUT_SIDE
        image = Image.fromarray(self.images[index].numpy())  # mode L, as torchvision's MNIST
        image = image.resize((side, side), Image.Resampling.BILINEAR)  # Resize((32, 32))
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # 32 x 32, as ToTensor
        return pixels.unsqueeze(0).float().div(255), int(self.labels[index])  # 1 x 32 x 32


class Reference:
    """run.py's training, one epoch per call, on its own model and optimiser."""

    def __init__(self, dataset: Dataset, device: torch.device, seed: int):
        # torch warns that 8 workers are more than the cores; run.py's choice, kept on purpose.
        warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)
        torch.manual_seed(seed)
        self.model = ReferenceLeNet5().to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=REFERENCE_LR)
        self.loader = DataLoader(
            dataset, batch_size=REFERENCE_BATCH, shuffle=True, num_workers=REFERENCE_WORKERS
        )
        self.device = device
        self.losses: list[float] = []

    def epoch(self) -> float:
        """Train one epoch; return its seconds (workers start inside, as in run.py)."""
        self.model.train()
        started = time.perf_counter()
        for images, labels in self.loader:
            images, labels = images.to(self.device), labels.to(self.device)
            self.optimizer.zero_grad()
            output = self.model(images)  # log-probabilities: the network ends in LogSoftmax
            loss = F.cross_entropy(output, labels)  # run.py's CrossEntropyLoss on them
            self.losses.append(loss.detach().cpu().item())
            loss.backward()
            self.optimizer.step()
        return time.perf_counter() - started


class Lenet5Side:
    """lenet5's training path, one epoch per call: `fit` resumed from its own last state."""

    def __init__(self, spec: experiment.RunSpec, loaded: experiment.Data, precision: str):
        self.model = experiment.build_model(spec)
        self.loaded, self.config = loaded, replace(spec.train, precision=precision)
        self.state, self.history = None, ()

    def epoch(self, epoch: int) -> None:
        def keep(snapshot) -> None:
            self.state = snapshot

        self.history = experiment.fit_on(
            self.model,
            self.loaded,
            replace(self.config, epochs=epoch),
            checkpoint=keep,
            resume=self.state,
        )

    def seconds(self) -> list[float]:
        return [record.seconds for record in self.history]

    def accuracies(self) -> list[float]:
        return [record.test_accuracy for record in self.history]


def input_difference(dataset: ResizedMNIST, prepared: torch.Tensor, count: int) -> dict:
    """How far the reference's per-sample Pillow resize is from lenet5's batched one, in grey
    levels (1/255), on the first `count` images: both sides should train on the same input."""
    reference = torch.stack([dataset[i][0][0] for i in range(count)]) * 255  # count x 32 x 32
    difference = (reference - prepared[:count].float()).abs()
    return {
        "images": count,
        "max_grey_levels": float(difference.max()),
        "fraction_equal": float((difference < 0.5).double().mean()),
    }


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    set_threads(args.threads)
    device = torch.device(args.device)
    epochs = QUICK_EPOCHS if args.quick else FULL_EPOCHS
    recipe = recipes.get("reference")
    spec = experiment.RunSpec(
        arch=recipe.arch,
        dataset="mnist",
        input=data.InputSpec.for_dataset("mnist", recipe.geometry, recipe.values),
        train=replace(recipe.train, device=args.device),
        limit_train=QUICK_IMAGES if args.quick else None,
    )
    config = spec.train
    recorder = Recorder(
        "throughput",
        "Epoch throughput, twin network: the reference pipeline against lenet5",
        args,
        {
            "epochs_each": epochs,
            "train_images": spec.limit_train or data.dataset_info("mnist").counts["train"],
            "batch_size": config.batch_size,
            "optimizer": f"{config.optimizer} lr {config.lr:g}",
            "reference_workers": REFERENCE_WORKERS,
            "order": "alternating epochs: reference, lenet5 fp32, lenet5 bf16; median epoch",
        },
    )

    started = time.perf_counter()
    loaded = experiment.load_data(spec, args.data_dir)
    prepare_seconds = time.perf_counter() - started  # read, verify, parse, resize: once
    train = data.load_split("mnist", "train", args.data_dir)
    count = len(loaded.train_labels)
    dataset = ResizedMNIST(train.images[:count], train.labels[:count])
    reference = Reference(dataset, device, config.seed)
    # lenet5's side twice: float32 (the figure with the target), and bf16 autocast beside it.
    sides = {precision: Lenet5Side(spec, loaded, precision) for precision in ("fp32", "bf16")}
    reference_seconds = []
    for epoch in range(1, epochs + 1):
        reference_seconds.append(reference.epoch())
        for side in sides.values():
            side.epoch(epoch)

    reference_rate = count / statistics.median(reference_seconds)
    lenet5_rate = count / statistics.median(sides["fp32"].seconds())
    bf16_rate = count / statistics.median(sides["bf16"].seconds())
    for figure in (
        Figure("epoch throughput, reference pipeline, twin", reference_rate, "images/s"),
        Figure("epoch throughput, lenet5 fit, twin", lenet5_rate, "images/s"),
        Figure("epoch throughput, lenet5 / reference", lenet5_rate / reference_rate, "x", 5.0),
        Figure("epoch throughput, lenet5 fit, twin, bf16 autocast", bf16_rate, "images/s"),
        Figure("epoch throughput, lenet5 bf16 / reference", bf16_rate / reference_rate, "x"),
    ):
        recorder.figure(figure)
    recorder.detail("reference_epoch_seconds", reference_seconds)
    recorder.detail("reference_seconds_per_60000", 60_000 / reference_rate)
    for precision, side in sides.items():
        recorder.detail(f"lenet5_{precision}_epoch_seconds", side.seconds())
        recorder.detail(f"lenet5_{precision}_test_accuracy", side.accuracies())
    recorder.detail("lenet5_seconds_per_60000", 60_000 / lenet5_rate)
    recorder.detail("lenet5_prepare_seconds_once", prepare_seconds)
    recorder.detail("reference_last_loss", reference.losses[-1])
    recorder.detail("inputs", input_difference(dataset, loaded.train_images, CHECKED_IMAGES))
    recorder.write()


if __name__ == "__main__":
    main()
