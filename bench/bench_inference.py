"""Inference speed: PyTorch and ONNX Runtime, one image per call and large batches.

    python bench/bench_inference.py [--run RUN_DIR] [--quick] [--threads N]

The model is a trained run, exported by `lenet5.export.export_run` (which also checks ONNX
Runtime against PyTorch on the whole test set) into a temporary file. Without --run, a run is
trained first with the `--recipe` (default `fast`, the modern network) on the first 10,000
training images (--quick: 2,000): speed depends on the network's shape, not on its accuracy.

- Single image: the latency of one call on a 1 x 1 x 32 x 32 test digit prepared beforehand,
  timed around each call with perf_counter_ns; p50 and p99 over 5,000 calls (--quick: 500)
  after 500 (50) warm-up calls.
- Batched: images/s of one call on 10,000 test images, the median of 10 calls (--quick: 3)
  after one warm-up call.

ONNX Runtime: CPU execution provider, all graph optimisations, sequential execution, one
inter-op thread, --threads intra-op threads. For single images a session with one intra-op
thread is timed too, since a thread pool's hand-offs can cost more than a 32 x 32 image; the
faster of the two is the figure and both are recorded. PyTorch: eval mode, inference_mode,
--threads torch threads (on --device cuda, PyTorch runs on the GPU; ONNX Runtime stays on CPU).
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench_report import Figure, Recorder, parser, set_threads
from lenet5 import data, experiment, export, recipes

BATCH = 10_000
# train_images: for the run trained here when none is given.
FULL = {"train_images": 10_000, "warmup": 500, "calls": 5_000, "batch_calls": 10}
QUICK = {"train_images": 2_000, "warmup": 50, "calls": 500, "batch_calls": 3}
INPUT, OUTPUT = export.INPUT_NAME, export.OUTPUT_NAME


def train_run(recipe_name: str, images: int, out: Path, data_dir: str | None) -> Path:
    """A run of the recipe on the first `images` training images, in `out`."""
    recipe = recipes.get(recipe_name)
    spec = experiment.RunSpec(
        arch=recipe.arch,
        dataset="mnist",
        input=data.InputSpec.for_dataset("mnist", recipe.geometry, recipe.values),
        train=replace(recipe.train, device="cpu"),
        distort=recipe.distort,
        limit_train=images,
        model_options=dict(recipe.model_options),
    )
    experiment.train_run(spec, out, experiment.load_data(spec, data_dir), overwrite=True)
    return out


def ort_session(payload: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # a chain of layers: nothing to run side by side
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])


def latency(call: Callable[[], object], warmup: int, calls: int) -> dict:
    """p50 and p99 of one call, in microseconds."""
    for _ in range(warmup):
        call()
    times = np.empty(calls)
    for i in range(calls):
        started = time.perf_counter_ns()
        call()
        times[i] = (time.perf_counter_ns() - started) / 1000
    return {
        "p50_us": float(np.percentile(times, 50)),
        "p99_us": float(np.percentile(times, 99)),
        "calls": calls,
    }


def throughput(call: Callable[[], object], images: int, calls: int) -> dict:
    """Images per second of one call on a batch of `images`, the median call."""
    call()  # warm-up: allocations, the first run's kernel choices
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return {"images_per_second": images / statistics.median(seconds), "seconds": seconds}


def main() -> None:
    options = parser(__doc__.split("\n\n")[0])
    options.add_argument("--run", metavar="RUN_DIR", help="a trained run (default: train one)")
    options.add_argument("--recipe", default="fast", choices=list(recipes.RECIPES))
    args = options.parse_args()
    set_threads(args.threads)
    plan = QUICK if args.quick else FULL
    device = torch.device(args.device)
    recorder = Recorder(
        "inference",
        "Inference, PyTorch and ONNX Runtime",
        args,
        {
            "model": args.run or f"recipe {args.recipe}, {plan['train_images']:,} images",
            "batch": BATCH,
            **plan,
        },
    )

    with tempfile.TemporaryDirectory(prefix="lenet5-bench-") as scratch:
        run_dir = Path(args.run or Path(scratch) / "run")
        if not args.run:
            train_run(args.recipe, plan["train_images"], run_dir, args.data_dir)
        exported = export.export_run(run_dir, Path(scratch) / "model.onnx", data_dir=args.data_dir)
        payload = exported.path.read_bytes()
        spec, model = experiment.load_run(run_dir)  # eval mode
    recorder.detail("arch", spec.arch)
    recorder.detail("onnx_bytes", len(payload))
    recorder.detail("onnx_test_accuracy", exported.parity.onnx_accuracy)
    recorder.detail("onnx_max_abs_score_difference", exported.parity.max_abs_diff)

    test = data.load_split(spec.dataset, "test", args.data_dir)
    images = data.to_float(data.prepare(test.images[:BATCH], spec.input), spec.input)
    one = images[:1].clone()  # 1 x 1 x 32 x 32, its own memory

    # PyTorch. On CUDA a call is timed until the device has finished it.
    model.to(device)
    finish = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def torch_call(x: torch.Tensor) -> None:
        model(x)
        finish()

    with torch.inference_mode():
        one_on_device, batch_on_device = one.to(device), images.to(device)
        torch_single = latency(lambda: torch_call(one_on_device), plan["warmup"], plan["calls"])
        torch_batch = throughput(lambda: torch_call(batch_on_device), BATCH, plan["batch_calls"])

    # ONNX Runtime: single images with 1 and with --threads intra-op threads.
    sessions = {threads: ort_session(payload, threads) for threads in sorted({1, args.threads})}
    single_feed, batch_feed = {INPUT: one.numpy()}, {INPUT: images.numpy()}
    ort_single = {
        threads: latency(
            functools.partial(session.run, [OUTPUT], single_feed), plan["warmup"], plan["calls"]
        )
        for threads, session in sessions.items()
    }
    ort_batch = throughput(
        functools.partial(sessions[args.threads].run, [OUTPUT], batch_feed),
        BATCH,
        plan["batch_calls"],
    )
    best = min(ort_single, key=lambda threads: ort_single[threads]["p50_us"])
    arch, pool = spec.arch, f"{best} thread{'s' * (best > 1)}"
    for figure in (
        Figure(
            f"ONNX Runtime, {arch}, batch {BATCH:,}",
            ort_batch["images_per_second"],
            "images/s",
            50_000,
        ),
        Figure(
            f"ONNX Runtime, {arch}, single image p50 ({pool})",
            ort_single[best]["p50_us"],
            "us",
            100,
            higher_is_better=False,
        ),
        Figure(f"ONNX Runtime, {arch}, single image p99", ort_single[best]["p99_us"], "us"),
        Figure(f"PyTorch, {arch}, batch {BATCH:,}", torch_batch["images_per_second"], "images/s"),
        Figure(f"PyTorch, {arch}, single image p50", torch_single["p50_us"], "us"),
        Figure(f"PyTorch, {arch}, single image p99", torch_single["p99_us"], "us"),
    ):
        recorder.figure(figure)
    recorder.detail("onnxruntime_single_by_threads", ort_single)
    recorder.detail("onnxruntime_batch", ort_batch)
    recorder.detail("torch_single", torch_single)
    recorder.detail("torch_batch", torch_batch)
    recorder.write()


if __name__ == "__main__":
    main()
