"""Faithful training speed: the paper's per-sample SDLM on the classic network.

    python bench/bench_sdlm.py [--quick] [--device cpu|cuda] [--threads N]

Trains two passes of the `lecun98` recipe (classic network, padding, the MAP criterion, SDLM
with one update per sample) through `lenet5.train.fit` on the first 3,000 training images
(--quick: 500), then extrapolates. The first pass also compiles the written-out step
(lenet5.persample), once per run; the second is the steady state. A pass costs one curvature
estimate on 500 samples (timed here on its own, the median of 3), one step per training image,
and one evaluation of the test set; so

    one pass of 60,000 = curvature + 60,000 x (second pass seconds - curvature) / images
    20 passes          = 20 x (one pass of 60,000 + test evaluation) + compilation
    compilation        = first pass seconds - second pass seconds

which assumes a step costs the same whichever image it takes (true here: every step has the
same shapes) and leaves out the distortions of `lecun98-distort`.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import replace

import torch

from bench_report import Figure, Recorder, parser, set_threads
from lenet5 import data, experiment, persample, recipes, sdlm, train

RECIPE = "lecun98"
FULL_IMAGES, QUICK_IMAGES = 3_000, 500
PASSES = 20  # the paper's (section III-B)
TARGET_MINUTES = 15


def curvature_seconds(model: torch.nn.Module, inputs: torch.Tensor, repeats: int = 3) -> float:
    """Seconds of one Gauss-Newton diagonal estimate, as fit makes before every pass."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        sdlm.gauss_newton_diagonal(model, inputs)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def per_step_microseconds(model: torch.nn.Module, loaded, config, repeats: int) -> dict:
    """Where a per-sample step goes: microseconds of the written-out forward and backward
    (lenet5.persample), of the SDLM update, and of the same step through autograd instead,
    each timed alone on one thread (as fit runs per-sample steps), median of 5 rounds."""
    model = copy.deepcopy(model)
    optimizer = sdlm.SDLM(list(model.parameters()), lr=config.lr, mu=config.mu)
    x = loaded.to_input(loaded.train_images[:1])
    label = loaded.train_labels[:1]
    optimizer.set_curvature(sdlm.gauss_newton_diagonal(model, x))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as fit runs batch-1 steps, compilation included
    written = persample.ClassicStep(model, config.loss, config.map_j)
    loss_fn = train.make_loss(config)
    _, grads = written(x, label)  # compiles

    def update() -> None:
        for param, grad in zip(written.params, grads, strict=True):
            param.grad = grad
        optimizer.step()

    def autograd_step() -> None:
        loss = loss_fn(model(x), label).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def median_microseconds(function) -> float:
        rounds = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(repeats):
                function()
            rounds.append((time.perf_counter() - started) / repeats * 1e6)
        return statistics.median(rounds)

    try:
        return {
            "written_forward_backward": median_microseconds(lambda: written(x, label)),
            "sdlm_update": median_microseconds(update),
            "autograd_step_for_comparison": median_microseconds(autograd_step),
        }
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    set_threads(args.threads)
    images = QUICK_IMAGES if args.quick else FULL_IMAGES
    recipe = recipes.get(RECIPE)
    spec = experiment.RunSpec(
        arch=recipe.arch,
        dataset="mnist",
        input=data.InputSpec.for_dataset("mnist", recipe.geometry, recipe.values),
        train=replace(recipe.train, epochs=2, device=args.device),
        distort=recipe.distort,
        limit_train=images,
        model_options=dict(recipe.model_options),
    )
    full_train = data.dataset_info("mnist").counts["train"]
    recorder = Recorder(
        "sdlm",
        f"Faithful training speed: per-sample SDLM, recipe {RECIPE}",
        args,
        {
            "recipe": RECIPE,
            "images_timed": images,
            "batch_size": spec.train.batch_size,
            "extrapolated_to": f"{PASSES} passes of {full_train:,} images",
        },
    )
    loaded = experiment.load_data(spec, args.data_dir)
    model = experiment.build_model(spec).to(args.device)
    sample = loaded.train_images[: sdlm.CURVATURE_SAMPLES].to(args.device)
    curvature = curvature_seconds(model, loaded.to_input(sample))
    first, record = experiment.fit_on(model, loaded, spec.train)
    compilation = max(0.0, first.seconds - record.seconds)
    step = (record.seconds - curvature) / images
    one_pass = curvature + full_train * step
    all_passes = PASSES * (one_pass + record.eval_seconds) + compilation

    recorder.figure(Figure("SDLM per-sample steps/s, classic", 1 / step, "steps/s"))
    recorder.figure(Figure(f"SDLM, one pass of {full_train:,} (extrapolated)", one_pass, "s"))
    recorder.figure(
        Figure(
            f"SDLM, {PASSES} passes (extrapolated)",
            all_passes / 60,
            "min",
            TARGET_MINUTES,
            higher_is_better=False,
        )
    )
    recorder.detail("pass_seconds_measured", [first.seconds, record.seconds])
    recorder.detail("compilation_seconds", compilation)
    recorder.detail("curvature_seconds", curvature)
    recorder.detail("step_microseconds", step * 1e6)
    recorder.detail("test_eval_seconds", record.eval_seconds)
    if spec.train.batch_size == 1 and persample.supports(model, spec.train.loss, 1):
        breakdown = per_step_microseconds(model, loaded, spec.train, 200 if args.quick else 1000)
        breakdown["rest_of_fit_loop"] = step * 1e6 - sum(
            breakdown[key] for key in ("written_forward_backward", "sdlm_update")
        )
        recorder.detail("step_breakdown_microseconds", breakdown)
        print(
            "  where a step goes (us): "
            + ", ".join(f"{key} {value:.0f}" for key, value in breakdown.items())
        )
    recorder.detail("test_accuracy_after_pass", record.test_accuracy)
    recorder.write()


if __name__ == "__main__":
    main()
