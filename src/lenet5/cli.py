"""The `lenet5` command line: the only module that parses arguments and prints.

Each subcommand is a small function that calls the library and reports what it returned.
Errors the user can fix (bad data, bad arguments) end in one clear message and a non-zero
exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from lenet5 import __version__, data


class UsageError(Exception):
    """A problem with what the user asked for; reported as one line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (data.DataError, UsageError, ValueError) as exc:
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
