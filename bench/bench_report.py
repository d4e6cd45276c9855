"""What every benchmark shares: its command line, the machine it ran on, and its JSON result.

A benchmark measures some `Figure`s (a value, its unit, the issue's target if it has one) and
writes them with the machine's description to bench/results/<device>-<mode>/<name>.json, e.g.
bench/results/cpu-full/throughput.json. `table()` turns those files into the markdown table
the README quotes, so every figure there comes from a file that says how it was measured.
Timings on a shared machine are noisy: the load average at the start and the end of each
benchmark is recorded beside its figures.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_DIR = BENCH_DIR.parent


@dataclass(frozen=True)
class Figure:
    """One measured number, with the target the issue sets for it (None: no target)."""

    name: str
    value: float
    unit: str  # "images/s", "x", "s", "min", "us", "MB"
    target: float | None = None
    higher_is_better: bool = True

    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def target_text(self) -> str:
        if self.target is None:
            return ""
        return f"{'>=' if self.higher_is_better else '<='} {format_value(self.target, self.unit)}"


def format_value(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.1f}x"
    if unit in ("s", "min"):
        return f"{value:.1f} {unit}"
    if unit == "%":
        return f"{value:.2f}%"
    return f"{value:,.0f} {unit}"


# --- the command line every benchmark takes ------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes; a benchmark adds its own."""
    result = argparse.ArgumentParser(description=description)
    result.add_argument(
        "--quick", action="store_true", help="a short version (under a minute on 2 cores)"
    )
    result.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    result.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch (and ONNX Runtime) intra-op threads; default: the usable cores (%(default)s)",
    )
    result.add_argument(
        "--data-dir", help="where MNIST is (default: LENET5_DATA_DIR or lenet5's cache)"
    )
    result.add_argument("--results", type=Path, default=RESULTS_DIR, help="default: bench/results")
    return result


def set_threads(threads: int) -> None:
    """Fix torch's intra-op threads here and, through OMP_NUM_THREADS, in child processes."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def child_env(threads: int) -> dict[str, str]:
    """The environment for a child process (e.g. `lenet5 train`): our threads, unbuffered."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}


def lenet5_command() -> str:
    """The `lenet5` console script of the interpreter running this benchmark."""
    return str(Path(sys.executable).with_name("lenet5"))


# --- the machine ---------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def machine(device: str, threads: int) -> dict:
    """What the figures were measured on."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "threads": threads,
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "numpy": _version("numpy"),
        "pillow": _version("pillow"),
        "lenet5": _version("lenet5"),
        "commit": _commit(),
    }


# --- results -------------------------------------------------------------------------------


def results_dir(root: Path, device: str, quick: bool) -> Path:
    return root / f"{device}-{'quick' if quick else 'full'}"


class Recorder:
    """Collects one benchmark's figures and details; `write` saves and prints them.

    Created at the start of the benchmark, so that the recorded load average and date are
    the ones it started under."""

    def __init__(self, name: str, title: str, args: argparse.Namespace, settings: dict):
        self.name, self.title, self.args = name, title, args
        self.result = {
            "benchmark": name,
            "title": title,
            "mode": "quick" if args.quick else "full",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(args.device, args.threads),
            "load_average_start": os.getloadavg(),
            "settings": settings,
            "figures": [],
            "details": {},
        }

    def figure(self, figure: Figure) -> None:
        self.result["figures"].append(asdict(figure))

    def detail(self, key: str, value) -> None:
        self.result["details"][key] = value

    def write(self) -> Path:
        self.result["load_average_end"] = os.getloadavg()
        out = results_dir(self.args.results, self.args.device, self.args.quick)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{self.name}.json"
        path.write_text(json.dumps(self.result, indent=2) + "\n")
        print(f"{self.title} ({self.result['mode']}, {self.args.device}):")
        for line in figure_lines(self.result):
            print(f"  {line}")
        print(f"  wrote {path}")
        return path


def load_figures(result: dict) -> list[Figure]:
    return [Figure(**figure) for figure in result["figures"]]


def figure_lines(result: dict) -> list[str]:
    """One line per figure: value, then the target and whether it is met."""
    lines = []
    for figure in load_figures(result):
        line = f"{figure.name}: {format_value(figure.value, figure.unit)}"
        if figure.target is not None:
            line += f"   (target {figure.target_text()}: {'met' if figure.met() else 'NOT met'})"
        lines.append(line)
    return lines


def read_results(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def table(folder: Path, order: list[str]) -> str:
    """A markdown table of every result in `folder` (one device and mode), benchmarks in
    `order` first, with a line naming the machine and the conditions."""
    results = read_results(folder)
    if not results:
        return f"no results in {folder}"
    results.sort(key=lambda r: order.index(r["benchmark"]) if r["benchmark"] in order else 99)
    quick = any(r["mode"] == "quick" for r in results)
    lines = ["| figure | measured | target | met? |", "| --- | ---: | --- | --- |"]
    for result in results:
        for figure in load_figures(result):
            met = {None: "", True: "yes", False: "no"}[figure.met()]
            if met and quick:
                met = f"({met})"
            lines.append(
                f"| {figure.name} | {format_value(figure.value, figure.unit)} "
                f"| {figure.target_text()} | {met} |"
            )
    first = results[0]["machine"]
    dates = sorted(r["date"] for r in results)
    loads = [r["load_average_start"][0] for r in results] + [
        r["load_average_end"][0] for r in results
    ]
    device = first["gpu"] or f"{first['cpu']}, {first['usable_cores']} cores"
    note = (
        f"{'Quick' if quick else 'Full'} mode on {device}, {first['threads']} torch threads; "
        f"torch {first['torch']}, onnxruntime {first['onnxruntime']}, {first['platform']}; "
        f"{dates[0][:10]}, commit {first['commit']}; 1-minute load average "
        f"{min(loads):.1f} to {max(loads):.1f} during the runs."
    )
    if quick:
        note += " Quick mode uses fewer images, epochs and calls: its figures are indicative."
    return "\n".join([*lines, "", note])
