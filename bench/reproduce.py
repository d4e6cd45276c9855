"""Reproduction runs: train each configuration over several seeds, then tabulate the results.

    python bench/reproduce.py twin-reference twin-pad classic-adam modern-adam --seeds 0 1 2
    python bench/reproduce.py --table            # only print the table of what has finished

Each run is an ordinary `lenet5 train` into runs/repro/<name>-s<seed>; a run whose
metrics.json exists is not trained again. The table is built from those metrics.json files,
so every figure in it was measured by the run it names. Set LENET5_DATA_DIR (or pass
--data-dir) to point at MNIST.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

# The reference recipe: activatedgeek/LeNet-5's run.py (Adam lr 2e-3, batch 256, 15 epochs,
# 28x28 resized to 32x32, values in [0, 1]).
REFERENCE = ["--recipe", "reference"]
CONFIGS = {
    "twin-reference": REFERENCE,
    "twin-pad": [*REFERENCE, "--geometry", "pad"],
    "classic-adam": [*REFERENCE, "--arch", "classic"],
    "modern-adam": [*REFERENCE, "--arch", "modern"],
    "fast": ["--recipe", "fast"],
    "lecun98": ["--recipe", "lecun98"],
    "lecun98-sqrtinit": ["--recipe", "lecun98-sqrtinit"],
    "lecun98-distort": ["--recipe", "lecun98-distort"],
    "lecun98-distort-sqrtinit": ["--recipe", "lecun98-distort-sqrtinit"],
    "lecun98-mu84": ["--recipe", "lecun98-mu84"],
    "lecun98-distort-mu84": ["--recipe", "lecun98-distort-mu84"],
}
ROOT = Path("runs/repro")


def run_dir(name: str, seed: int) -> Path:
    return ROOT / f"{name}-s{seed}"


def train(name: str, seed: int, data_dir: str | None, lenet5: str) -> None:
    out = run_dir(name, seed)
    if (out / "metrics.json").exists():
        return
    command = [lenet5, "train", *CONFIGS[name], "--seed", str(seed), "--out", str(out)]
    command += ["--overwrite", "--viz", "none"]
    if data_dir:
        command += ["--data-dir", data_dir]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def table() -> str:
    lines = [
        "| configuration | seeds | test accuracy per seed (%) | mean +- std (%) | errors (mean) "
        "| test error, mean (%) | train s per run (mean) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in CONFIGS:
        results = sorted(ROOT.glob(f"{name}-s*/metrics.json"))
        results = [p for p in results if p.parent.name.rsplit("-s", 1)[0] == name]
        if not results:
            continue
        metrics = [json.loads(p.read_text()) for p in results]
        seeds = [p.parent.name.rsplit("-s", 1)[1] for p in results]
        accuracies = [100 * m["test_accuracy"] for m in metrics]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        errors = statistics.mean(m["test_errors"] for m in metrics)
        seconds = statistics.mean(m["train_seconds"] for m in metrics)
        lines.append(
            f"| {name} | {', '.join(seeds)} | {', '.join(f'{a:.2f}' for a in accuracies)} "
            f"| {statistics.mean(accuracies):.2f} +- {spread:.2f} | {errors:.0f} "
            f"| {100 - statistics.mean(accuracies):.2f} | {seconds:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", metavar="CONFIG", help=", ".join(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data-dir", default=os.environ.get("LENET5_DATA_DIR"))
    parser.add_argument("--table", action="store_true", help="only print the table")
    args = parser.parse_args()
    unknown = [name for name in args.configs if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration {unknown[0]!r}; one of: {', '.join(CONFIGS)}")
    lenet5 = str(Path(sys.executable).with_name("lenet5"))
    if not args.table:
        for name in args.configs:
            for seed in args.seeds:
                train(name, seed, args.data_dir, lenet5)
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
