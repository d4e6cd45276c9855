"""Time to 99.0% test accuracy from a cold start, with lenet5's fastest recipe (`fast`).

    python bench/bench_time_to_99.py [--quick] [--device cpu|cuda] [--threads N]

Each run is a fresh Python process that does what `lenet5 train --recipe fast --viz none`
does (import lenet5, read and prepare MNIST, build the network, train with fit, evaluate the
test set after every epoch, checkpoint into a run directory), with one more callback: it
stamps the wall clock at each epoch's end and stops the run at the first epoch whose test
accuracy is >= 99.0%. The figure is the time from just before the process is started to that
stamp. The recipe is not changed: its one-cycle schedule is planned over its 4 epochs whether
or not the run stops early, and stopping is the only use of the test set. Full: 3 runs (seeds
0, 1, 2) and their median; --quick: 1 run (seed 0).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

from bench_report import Figure, Recorder, child_env, parser, set_threads
from lenet5 import data, experiment, recipes, runs
from lenet5.train import Callback, EpochRecord

RECIPE = "fast"
TARGET = 0.99
FULL_SEEDS, QUICK_SEEDS = (0, 1, 2), (0,)


# --- the child: one cold-start run -----------------------------------------------------------


def emit(event: str, **values) -> None:
    """One line of JSON on stdout, stamped with the wall clock the parent also reads."""
    print(json.dumps({"event": event, "time": time.time(), **values}), flush=True)


class TargetReached(Exception):
    pass


class StopAtTarget(Callback):
    def on_epoch_end(self, record: EpochRecord) -> None:
        emit(
            "epoch",
            epoch=record.epoch,
            test_accuracy=record.test_accuracy,
            train_seconds=record.seconds,
            eval_seconds=record.eval_seconds,
        )
        if record.test_accuracy >= TARGET:
            raise TargetReached


def child(run_dir: str, seed: int, device: str, data_dir: str | None) -> None:
    emit("imported")
    recipe = recipes.get(RECIPE)
    spec = experiment.RunSpec(
        arch=recipe.arch,
        dataset="mnist",
        input=data.InputSpec.for_dataset("mnist", recipe.geometry, recipe.values),
        train=replace(recipe.train, seed=seed, device=device),
        distort=recipe.distort,
        model_options=dict(recipe.model_options),
    )
    loaded = experiment.load_data(spec, data_dir)
    emit("data loaded")
    callbacks = [runs.MetricsLog(run_dir), StopAtTarget()]  # the CLI's, less its console bar
    try:
        experiment.train_run(spec, run_dir, loaded, callbacks=callbacks, overwrite=True)
    except TargetReached:
        return


# --- the parent: start runs and read their stamps --------------------------------------------


def cold_start(seed: int, args) -> dict:
    """Start one child process; return its stamps relative to the moment it was started."""
    with tempfile.TemporaryDirectory(prefix="lenet5-bench-") as run_dir:
        command = [sys.executable, __file__, "--child", run_dir, "--seed", str(seed)]
        command += ["--device", args.device]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        started = time.time()
        out = subprocess.run(
            command, capture_output=True, text=True, env=child_env(args.threads), check=False
        )
        finished = time.time()
    if out.returncode != 0:
        raise RuntimeError(f"the training process failed ({out.returncode}):\n{out.stderr}")
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    epochs = [e for e in events if e["event"] == "epoch"]
    reached = next((e for e in epochs if e["test_accuracy"] >= TARGET), None)
    stamp = {e["event"]: e["time"] - started for e in events if e["event"] != "epoch"}
    return {
        "seed": seed,
        "seconds_to_target": None if reached is None else reached["time"] - started,
        "epoch_reached": None if reached is None else reached["epoch"],
        "process_seconds": finished - started,
        "imports_done": stamp["imported"],
        "data_loaded": stamp["data loaded"],
        "epochs": [{**e, "time": e["time"] - started} for e in epochs],
    }


def main() -> None:
    options = parser(__doc__.split("\n\n")[0])
    options.add_argument("--child", metavar="RUN_DIR", help="(internal) be one training run")
    options.add_argument("--seed", type=int, default=0, help="(with --child) the run's seed")
    args = options.parse_args()
    set_threads(args.threads)
    if args.child:
        child(args.child, args.seed, args.device, args.data_dir)
        return
    seeds = QUICK_SEEDS if args.quick else FULL_SEEDS
    recorder = Recorder(
        "time_to_99",
        f"Time to {100 * TARGET:.1f}% test accuracy from a cold start, recipe {RECIPE}",
        args,
        {
            "recipe": RECIPE,
            "target_accuracy": TARGET,
            "seeds": list(seeds),
            "clock": "process start to the end of the first epoch (test evaluated) at target",
        },
    )
    results = [cold_start(seed, args) for seed in seeds]
    times = [r["seconds_to_target"] for r in results if r["seconds_to_target"] is not None]
    if times:
        name = f"time to {100 * TARGET:.1f}%, cold start, `{RECIPE}` (median of {len(times)})"
        recorder.figure(Figure(name, statistics.median(times), "s", 15.0, False))
    if len(times) < len(results):
        recorder.figure(
            Figure(f"runs reaching {100 * TARGET:.1f}%", len(times), "runs", len(results))
        )
    recorder.detail("runs", results)
    recorder.write()


if __name__ == "__main__":
    main()
