"""Choose the `fast` recipe without looking at the test set: candidates on a validation split.

    python bench/tune_fast.py [--seeds 0 1] [--threads N]

Each candidate (the modern network, padding, standardised values, Adam with a one-cycle
schedule; batch size, peak learning rate and epochs vary) trains on the first 50,000 training
images and is scored on the last 10,000 after every epoch. The test set is never read. The
table shows each candidate's validation accuracy per epoch (mean over seeds) and the epoch at
which every seed had reached 99.0%, which is what `bench/bench_time_to_99.py` later measures
on the test set with the chosen recipe.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from dataclasses import replace

import torch

from lenet5 import data, experiment, recipes
from lenet5.train import fit

VALIDATION = 10_000
TARGET = 0.99
# (batch size, peak learning rate, epochs); the first is `fast` as it was first written.
CANDIDATES = [
    (128, 4e-3, 4),
    (128, 4e-3, 3),
    (128, 4e-3, 2),
    (64, 4e-3, 2),
    (128, 8e-3, 2),
    (256, 8e-3, 2),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--data-dir", default=os.environ.get("LENET5_DATA_DIR"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = recipes.get("fast")
    spec = data.InputSpec.for_dataset("mnist", recipe.geometry, recipe.values)
    train = data.load_split("mnist", "train", args.data_dir)
    images = data.prepare(train.images, spec)
    fit_images, fit_labels = images[:-VALIDATION], train.labels[:-VALIDATION]
    val_images, val_labels = images[-VALIDATION:], train.labels[-VALIDATION:]
    to_input = functools.partial(data.to_float, spec=spec)

    print(
        "| batch | peak lr | epochs | validation accuracy by epoch (mean of seeds) "
        "| epoch all seeds >= 99.0% | s per epoch |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for batch_size, lr, epochs in CANDIDATES:
        config = replace(recipe.train, batch_size=batch_size, lr=lr, epochs=epochs)
        curves, seconds = [], []
        for seed in args.seeds:
            torch.manual_seed(seed)
            model = experiment.build_model(
                experiment.RunSpec(
                    arch=recipe.arch, dataset="mnist", input=spec, train=replace(config, seed=seed)
                )
            )
            started = time.perf_counter()
            history = fit(
                model,
                fit_images,
                fit_labels,
                val_images,
                val_labels,
                to_input,
                replace(config, seed=seed),
            )
            seconds.append((time.perf_counter() - started) / epochs)
            curves.append([record.test_accuracy for record in history])
        means = [statistics.mean(c[i] for c in curves) for i in range(epochs)]
        reached = [next((i + 1 for i, a in enumerate(c) if a >= TARGET), None) for c in curves]
        first = "never" if None in reached else str(max(reached))
        print(
            f"| {batch_size} | {lr:g} | {epochs} | "
            f"{', '.join(f'{100 * a:.2f}' for a in means)} | {first} "
            f"| {statistics.mean(seconds):.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
