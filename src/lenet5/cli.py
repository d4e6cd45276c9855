"""The `lenet5` command line: the only module that parses arguments and prints.

Each subcommand is a small function that calls the library and reports what it returned.
Errors the user can fix (bad data, bad arguments) end in one clear message and a non-zero
exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from lenet5 import __version__, data, export, predict, runs


class UsageError(Exception):
    """A problem with what the user asked for; reported as one line, exit status 2."""


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (
        data.DataError,
        runs.RunDirError,
        export.ExportError,
        export.ModelFileError,
        predict.PredictError,
        UsageError,
        ValueError,
        RuntimeError,
        OSError,
    ) as exc:
        # RuntimeError covers NonFiniteLossError and RunDirError's relatives; torch's own
        # errors also land here and are reported as one line.
        print(f"lenet5: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lenet5: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lenet5",
        description="LeNet-5 (LeCun et al., 1998) and its popular variants: data, networks, "
        "training, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"lenet5 {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_data_commands(commands)
    _add_summary_command(commands)
    _add_train_command(commands)
    _add_evaluate_command(commands)
    _add_distortions_command(commands)
    _add_export_command(commands)
    _add_predict_command(commands)
    return parser


def _add_dataset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", default="mnist", choices=sorted(data.DATASETS), help="default: mnist"
    )
    parser.add_argument(
        "--data-dir",
        help="directory holding the four IDX files (.gz or raw); default: $LENET5_DATA_DIR, "
        "else the per-user cache (downloaded on first use)",
    )


# ---------------------------------------------------------------------------------------------
# lenet5 data download|verify|info


def _add_data_commands(commands) -> None:
    data_parser = commands.add_parser("data", help="download, verify and describe datasets")
    data_parser.set_defaults(run=lambda args: _help(data_parser))
    sub = data_parser.add_subparsers(title="data commands", metavar="ACTION")

    download = sub.add_parser("download", help="download into the cache (or --data-dir)")
    _add_dataset_options(download)
    download.add_argument(
        "--mirror",
        action="append",
        metavar="URL",
        help="base URL to fetch '<file>.gz' from, tried in the order given (repeatable); "
        "default: the dataset's public mirrors",
    )
    download.set_defaults(run=_data_download)

    verify = sub.add_parser("verify", help="check every file's content against its SHA-256")
    _add_dataset_options(verify)
    verify.set_defaults(run=_data_verify)

    info = sub.add_parser("info", help="counts, shapes, class counts and pixel statistics")
    _add_dataset_options(info)
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(run=_data_info)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _data_download(args) -> int:
    target = args.data_dir or data.resolve_dir(args.dataset)[0]
    progress = _DownloadProgress()
    try:
        paths = data.download(
            args.dataset, target, mirrors=args.mirror, on_progress=progress.update
        )
    finally:
        progress.close()
    for path in paths:
        print(f"ok  {path}")
    return 0


class _DownloadProgress:
    """One tqdm bar per file, on stderr."""

    def __init__(self) -> None:
        self.bar = None
        self.name = None

    def update(self, name: str, received: int, total: int | None) -> None:
        from tqdm import tqdm

        if name != self.name:
            self.close()
            self.bar = tqdm(total=total, desc=name, unit="B", unit_scale=True, leave=False)
            self.name = name
        self.bar.update(received - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.name = None, None


def _data_verify(args) -> int:
    root, source = data.resolve_dir(args.dataset, args.data_dir)
    print(f"{args.dataset} in {root} ({source})")
    statuses = data.verify(args.dataset, args.data_dir)
    for status in statuses:
        state = "ok" if status.ok else "BAD"
        print(f"{state:4}{status.name:26} sha256 {status.sha256 or '-':64}")
        if not status.ok:
            print(f"    {status.problem}")
    bad = sum(not s.ok for s in statuses)
    print(f"{len(statuses) - bad} of {len(statuses)} files good")
    return 1 if bad else 0


def _data_info(args) -> int:
    root, source = data.resolve_dir(args.dataset, args.data_dir)
    report = {"dataset": args.dataset, "directory": str(root), "source": source, "splits": {}}
    for split in data.SPLITS:
        stats = data.split_stats(data.load_split(args.dataset, split, args.data_dir))
        report["splits"][split] = stats.__dict__ | {"shape": list(stats.shape)}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.dataset} in {root} ({source})")
    for split, stats in report["splits"].items():
        shape = "x".join(map(str, stats["shape"]))
        print(f"{split}: {stats['count']:,} images of {shape}, uint8")
        print(f"  class counts: {' '.join(map(str, stats['class_counts']))}")
        print(
            f"  pixels: mean {stats['pixel_mean']:.4f} std {stats['pixel_std']:.4f} "
            f"(0..1: {stats['pixel_mean'] / 255:.4f} / {stats['pixel_std'] / 255:.4f}), "
            f"range {stats['pixel_min']}-{stats['pixel_max']}"
        )
    return 0


# ---------------------------------------------------------------------------------------------
# lenet5 summary


def _add_summary_command(commands) -> None:
    summary = commands.add_parser(
        "summary", help="per-layer output shapes, parameters and connections"
    )
    summary.add_argument("--arch", default="classic", help="classic, twin or modern")
    summary.add_argument("--json", action="store_true", help="print JSON")
    summary.set_defaults(run=_summary)


def _summary(args) -> int:
    from lenet5 import models
    from lenet5.summary import format_table, summarize

    result = summarize(models.build(args.arch))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"{args.arch}:")
        print(format_table(result))
    return 0


# ---------------------------------------------------------------------------------------------
# lenet5 train


def _add_train_command(commands) -> None:
    from lenet5 import recipes

    train = commands.add_parser(
        "train",
        help="train a network into a run directory",
        description="Train from a named recipe; every option given overrides that one field. "
        f"Recipes: {', '.join(recipes.RECIPES)} (default {recipes.DEFAULT_RECIPE}).",
    )
    train.add_argument("--recipe", default=recipes.DEFAULT_RECIPE, choices=list(recipes.RECIPES))
    train.add_argument(
        "--out", default="runs/latest", metavar="RUN_DIR", help="default: %(default)s"
    )
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    _add_dataset_options(train)
    train.set_defaults(dataset=None)
    train.add_argument("--arch", choices=["classic", "twin", "modern"])
    train.add_argument("--geometry", choices=list(data.GEOMETRIES), help="28x28 to 32x32 by")
    train.add_argument("--values", choices=list(data.VALUE_MAPS), help="pixel value mapping")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--optimizer", choices=["adam", "sgd", "sdlm"])
    train.add_argument("--lr", type=float, help="learning rate (SDLM: the global eta)")
    train.add_argument("--momentum", type=float)
    train.add_argument("--weight-decay", type=float)
    train.add_argument("--schedule", choices=["constant", "step", "cosine", "onecycle", "paper"])
    train.add_argument("--loss", choices=["cross_entropy", "plain", "map"])
    train.add_argument("--map-j", type=float, help="the MAP criterion's constant j")
    train.add_argument("--mu", type=float, help="SDLM's safety term in lr / (mu + h)")
    train.add_argument("--label-smoothing", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--device", choices=["auto", "cpu", "cuda"])
    train.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        help="bf16: forward pass under bfloat16 autocast (weights stay float32)",
    )
    train.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="CPU threads for torch (default: one per core; batch-size-1 steps always use "
        "one); on a machine busy with other work, 1 is often several times faster",
    )
    train.add_argument(
        "--distort",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random affine distortions of every training sample (section III-C)",
    )
    train.add_argument("--limit-train", type=int, metavar="N", help="use the first N images")
    train.add_argument(
        "--init", choices=["paper", "sqrt"], help="classic only: +-2.4/F (paper) or +-2.4/sqrt(F)"
    )
    train.add_argument(
        "--viz",
        choices=["tensorboard", "visdom", "both", "none"],
        default="tensorboard",
        help="live loss view (default: tensorboard, in RUN_DIR/tensorboard)",
    )
    train.add_argument("--visdom-server", default="http://localhost")
    train.add_argument("--visdom-port", type=int, default=8097)
    train.set_defaults(run=_train)


# TrainConfig fields that a flag of the same name (dashes for underscores) overrides.
_TRAIN_FLAGS = (
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "loss",
    "map_j",
    "mu",
    "label_smoothing",
    "seed",
    "device",
    "precision",
)


def _train_spec(args):
    """The run's spec: the recipe, or the run being resumed, with the flags given on top."""
    from dataclasses import replace

    from lenet5 import experiment, recipes, runs
    from lenet5.distort import DistortConfig

    if args.resume:
        spec = experiment.RunSpec.from_dict(runs.read_config(args.out))
        fixed = [
            f for f in ("arch", "geometry", "values", "dataset", "limit_train") if getattr(args, f)
        ]
        if fixed:
            raise UsageError(f"--resume continues the run as configured; drop --{fixed[0]}")
        recipe_input, arch, dataset = spec.input, spec.arch, spec.dataset
        train_config, distortion, options = spec.train, spec.distort, spec.model_options
    else:
        recipe = recipes.get(args.recipe)
        arch, dataset = args.arch or recipe.arch, args.dataset or "mnist"
        recipe_input = data.InputSpec.for_dataset(
            dataset, args.geometry or recipe.geometry, args.values or recipe.values
        )
        train_config, distortion = recipe.train, recipe.distort
        options = dict(recipe.model_options) if arch == recipe.arch else {}
        if args.init:
            options["init"] = args.init
    overrides = {f: getattr(args, f) for f in _TRAIN_FLAGS if getattr(args, f) is not None}
    train_config = replace(train_config, **overrides)
    if args.distort is not None:
        distortion = (distortion or DistortConfig()) if args.distort else None
    limit = args.limit_train if not args.resume else spec.limit_train
    return experiment.RunSpec(arch, dataset, recipe_input, train_config, distortion, limit, options)


def _train(args) -> int:
    import torch

    from lenet5 import experiment, monitor, runs

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    spec = _train_spec(args)
    if spec.train.optimizer == "sdlm" and spec.arch != "classic":
        raise UsageError("--optimizer sdlm needs --arch classic (the paper's layers)")
    if (
        not args.resume
        and not args.overwrite
        and os.path.exists(os.path.join(args.out, runs.CONFIG))
    ):
        raise UsageError(
            f"{args.out} already holds a run: add --resume or --overwrite, or change --out"
        )
    print(
        f"lenet5 train: {spec.arch} on {spec.dataset} ({spec.input.geometry}, "
        f"{spec.input.values}), {spec.train.optimizer} lr {spec.train.lr:g}, batch "
        f"{spec.train.batch_size}, {spec.train.epochs} epochs"
        + (", distortions" if spec.distort else "")
        + f" -> {args.out}",
        file=sys.stderr,
    )
    progress = _DownloadProgress()
    try:
        loaded = experiment.load_data(spec, args.data_dir, on_progress=progress.update)
    finally:
        progress.close()
    # disable=None: live bars on a terminal, only the per-epoch lines in a log file.
    callbacks = [monitor.ProgressBar(disable=None), runs.MetricsLog(args.out)]
    if args.viz in ("tensorboard", "both"):
        callbacks.append(monitor.TensorBoard(runs.tensorboard_dir(args.out)))
    if args.viz in ("visdom", "both"):
        callbacks.append(monitor.Visdom(args.visdom_server, args.visdom_port))
    # A NonFiniteLossError (a RuntimeError) ends in main() as one line; the checkpoint of the
    # last good epoch stays in the run directory.
    result = experiment.train_run(
        spec, args.out, loaded, callbacks=callbacks, resume=args.resume, overwrite=args.overwrite
    )
    ev = result.evaluation
    print(
        f"test accuracy {100 * ev.accuracy:.2f}% ({ev.errors} errors of {ev.count}), "
        f"test loss {ev.loss:.4f}, {result.wall_seconds:.1f} s; run in {args.out}"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# lenet5 evaluate


def _add_evaluate_command(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="test metrics, confusion matrix and error gallery of a run"
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--data-dir", help="where the run's dataset is (default as for data)")
    evaluate.add_argument("--out", help="where to write the PNGs (default: RUN_DIR)")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.set_defaults(run=_evaluate)


def _evaluate(args) -> int:
    from lenet5 import experiment, plots

    result = experiment.evaluate_run(args.run_dir, args.data_dir)
    ev, spec = result.evaluation, result.spec
    out = args.out or args.run_dir
    os.makedirs(out, exist_ok=True)
    confusion_png = plots.plot_confusion(ev.confusion, os.path.join(out, "confusion.png"))
    errors_png = plots.plot_misclassified(
        result.test_images,
        result.test_labels,
        ev.predictions,
        ev.misclassified,
        os.path.join(out, "errors.png"),
    )
    report = {
        "run_dir": str(args.run_dir),
        "arch": spec.arch,
        "dataset": spec.dataset,
        "test_accuracy": ev.accuracy,
        "test_error_rate": 1 - ev.accuracy,
        "test_loss": ev.loss,
        "loss": spec.train.loss,
        "errors": ev.errors,
        "count": ev.count,
        "per_class_accuracy": list(ev.per_class_accuracy),
        "confusion": ev.confusion.tolist(),
        "confusion_png": str(confusion_png),
        "errors_png": str(errors_png),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{spec.arch} on {spec.dataset} test set ({ev.count:,} images), run {args.run_dir}")
    print(
        f"accuracy {100 * ev.accuracy:.2f}%  errors {ev.errors}  "
        f"mean {spec.train.loss} loss {ev.loss:.4f}"
    )
    print("per-class accuracy:")
    for digit, accuracy in enumerate(ev.per_class_accuracy):
        print(f"  {digit}: {100 * accuracy:6.2f}%")
    print("confusion matrix (rows: true class, columns: predicted):")
    classes = len(ev.confusion)
    print("      " + "".join(f"{c:>6}" for c in range(classes)))
    for true_class, row in enumerate(ev.confusion.tolist()):
        print(f"  {true_class:>2}  " + "".join(f"{count:>6}" for count in row))
    print(f"wrote {confusion_png} and {errors_png}")
    return 0


# ---------------------------------------------------------------------------------------------
# lenet5 distortions


def _add_distortions_command(commands) -> None:
    picture = commands.add_parser(
        "distortions", help="a PNG grid of training digits beside random distorted copies"
    )
    _add_dataset_options(picture)
    picture.add_argument("--out", default="distortions.png", help="default: %(default)s")
    picture.add_argument("--count", type=int, default=8, help="digits (rows)")
    picture.add_argument("--copies", type=int, default=8, help="distorted copies per digit")
    picture.add_argument("--seed", type=int, default=0)
    for name, default in _distort_ranges().items():
        picture.add_argument(f"--{name}", type=float, default=default, help="range: +-value")
    picture.set_defaults(run=_distortions)


def _distort_ranges() -> dict:
    from dataclasses import asdict

    from lenet5.distort import DistortConfig

    return asdict(DistortConfig())


def _distortions(args) -> int:
    import torch

    from lenet5 import plots
    from lenet5.distort import DistortConfig, distort

    if args.count < 1 or args.copies < 1:
        raise UsageError("--count and --copies must be at least 1")
    config = DistortConfig(**{name: getattr(args, name) for name in _distort_ranges()})
    split = data.load_split(args.dataset, "train", args.data_dir)
    originals = data.prepare(split.images[: args.count], data.InputSpec(geometry="pad"))
    generator = torch.Generator().manual_seed(args.seed)
    repeated = originals.repeat_interleave(args.copies, dim=0)  # count*copies x 32 x 32
    copies = distort(repeated, config, generator).view(args.count, args.copies, 32, 32)
    path = plots.plot_distortions(originals, copies, args.out)
    print(f"wrote {path} ({args.count} digits x {args.copies} copies; {config})")
    return 0


# ---------------------------------------------------------------------------------------------
# lenet5 export


def _add_export_command(commands) -> None:
    command = commands.add_parser(
        "export",
        help="export a run to ONNX, checked against ONNX Runtime on the test set",
        description="Export RUN_DIR's network to one ONNX file (dynamic batch, metadata), then "
        "run the whole test split through ONNX Runtime and PyTorch: every prediction must "
        f"agree and every score differ by less than {export.PARITY_TOLERANCE:g}, or nothing "
        "is written.",
    )
    command.add_argument("run_dir", metavar="RUN_DIR")
    command.add_argument(
        "--out", metavar="FILE.onnx", help=f"default: RUN_DIR/{export.DEFAULT_FILE}"
    )
    command.add_argument(
        "--opset", type=int, default=export.DEFAULT_OPSET, help="ONNX opset (default: %(default)s)"
    )
    command.add_argument("--data-dir", help="where the run's dataset is (default as for data)")
    command.set_defaults(run=_export)


def _export(args) -> int:
    try:
        result = export.export_run(args.run_dir, args.out, opset=args.opset, data_dir=args.data_dir)
    except export.ParityError as exc:
        _print_parity(exc.parity)
        raise
    _print_parity(result.parity)
    info = result.info
    size = result.path.stat().st_size
    print(
        f"wrote {result.path} ({info.arch} on {info.dataset}, opset {result.opset}, "
        f"{size / 1024:.0f} KiB)"
    )
    return 0


def _print_parity(parity) -> None:
    verdict = "ok" if parity.ok else "FAILED"
    print(
        f"parity with PyTorch on {parity.n:,} test images: {verdict}: predictions agree on "
        f"{parity.agree:,}/{parity.n:,}, max |score difference| {parity.max_abs_diff:.2e} "
        f"(tolerance {parity.tolerance:g}); ONNX Runtime accuracy "
        f"{100 * parity.onnx_accuracy:.2f}%"
    )


# ---------------------------------------------------------------------------------------------
# lenet5 predict


def _add_predict_command(commands) -> None:
    command = commands.add_parser(
        "predict",
        help="classify image files (PNG, JPEG, BMP, GIF) with a run or an exported model",
        description="Each image is normalised as MNIST was made (dark-on-light inverted, the "
        "digit fitted to 20x20 and centred by centre of mass in 28x28), then mapped as the "
        "network was trained. Probabilities: softmax of the scores; for a classic network "
        "trained by the paper's criteria (--loss map or plain), the paper's MAP criterion "
        "(eq. 9) with the run's j, which leaves some to 'none of these'.",
    )
    command.add_argument(
        "--model", required=True, metavar="RUN_DIR|FILE.onnx", help="a run or an exported model"
    )
    command.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="an image file, a folder of them (not recursive), or - for standard input",
    )
    command.add_argument(
        "--backend",
        choices=predict.BACKENDS,
        help="torch (a run's weights) or onnx (ONNX Runtime); default: the model's own kind",
    )
    command.add_argument("--top", type=int, default=3, help="classes shown (default: 3)")
    command.add_argument("--json", action="store_true", help="print JSON")
    command.set_defaults(run=_predict)


def _predict(args) -> int:
    if args.top < 1:
        raise UsageError("--top must be at least 1")
    predictor = predict.load_predictor(args.model, args.backend)
    sources, names, failures = _image_sources(args.images)
    results = predictor.predict_each(sources, args.top, names) if sources else []
    failures += [r for r in results if isinstance(r, predict.ImageError)]
    predictions = [r for r in results if isinstance(r, predict.Prediction)]
    for failure in failures:
        print(f"lenet5: error: {failure}", file=sys.stderr)
    info = predictor.info
    if args.json:
        report = {
            "model": predictor.source,
            "arch": info.arch,
            "backend": predictor.backend,
            "probabilities": info.probabilities,
            "map_j": info.map_j,
            "predictions": [
                {
                    "image": p.source,
                    "label": p.label,
                    "top": [
                        {"class": g.name, "index": g.index, "probability": g.probability}
                        for g in p.top
                    ],
                    "none_of_these": p.none_of_these,
                }
                for p in predictions
            ],
            "errors": [{"image": f.source, "error": f.problem} for f in failures],
        }
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{info.arch} on {info.dataset} ({predictor.backend}: {predictor.source}); "
            f"probabilities: {predictor.describe_probabilities()}"
        )
        for p in predictions:
            guesses = [f"{g.name} {_percent(g.probability)}" for g in p.top]
            if p.none_of_these is not None:
                guesses.append(f"none of these {_percent(p.none_of_these)}")
            print(f"{p.source}: {' | '.join(guesses)}")
    return 1 if failures else 0


def _percent(probability: float) -> str:
    if probability == 0 or probability >= 5e-5:
        return f"{100 * probability:.2f}%"
    return f"{100 * probability:.1e}%"  # the MAP rule's tiny class probabilities


def _image_sources(arguments: Sequence[str]):
    """The images the arguments name: files, the image files of folders, stdin's bytes for
    '-'. Returns (sources, names, ImageErrors for folders without images)."""
    from pathlib import Path

    sources, names, failures = [], [], []
    for argument in arguments:
        if argument == "-":
            sources.append(sys.stdin.buffer.read())
            names.append("<stdin>")
            continue
        path = Path(argument)
        if not path.is_dir():
            sources.append(path)
            names.append(argument)
            continue
        found = sorted(
            p for p in path.iterdir() if p.suffix.lower() in predict.EXTENSIONS and p.is_file()
        )
        if not found:
            kinds = ", ".join(predict.EXTENSIONS)
            failures.append(predict.ImageError(argument, f"a folder with no image files ({kinds})"))
        sources += found
        names += [str(p) for p in found]
    return sources, names, failures


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
