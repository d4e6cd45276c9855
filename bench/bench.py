"""The benchmark suite: run the benchmarks, each in a fresh process, then print their table.

    python bench/bench.py [--quick] [--device cpu|cuda] [--threads N] [--only NAME ...]
    python bench/bench.py --table [--quick] [--device cuda]    # the table from the JSON only

The benchmarks, one file each (each also runs alone with the same options):

    throughput   bench_throughput.py   the reference script's pipeline against lenet5's, twin
    time_to_99   bench_time_to_99.py   cold start to 99.0% test accuracy, recipe fast
    inference    bench_inference.py    PyTorch and ONNX Runtime: latency and batched images/s
    memory       bench_memory.py       peak resident memory of `lenet5 train`
    sdlm         bench_sdlm.py         per-sample SDLM (lecun98), extrapolated to 20 passes

Each writes bench/results/<device>-<mode>/<name>.json (figures, targets, the machine, the load
average); the table is built from those files alone. A fresh process per benchmark keeps one
benchmark's threads, allocations and imports from weighing on the next. Timings are only as
quiet as the machine: quote figures measured on an otherwise idle one.
"""

from __future__ import annotations

import subprocess
import sys

from bench_report import BENCH_DIR, parser, results_dir, table

BENCHMARKS = {
    "throughput": "bench_throughput.py",
    "time_to_99": "bench_time_to_99.py",
    "inference": "bench_inference.py",
    "memory": "bench_memory.py",
    "sdlm": "bench_sdlm.py",
}


def main() -> int:
    options = parser(__doc__.split("\n\n")[0])
    options.add_argument("--only", nargs="+", choices=list(BENCHMARKS), metavar="NAME")
    options.add_argument("--run", metavar="RUN_DIR", help="inference: a trained run to export")
    options.add_argument("--table", action="store_true", help="only print the table")
    args = options.parse_args()
    folder = results_dir(args.results, args.device, args.quick)
    if args.table:
        print(table(folder, list(BENCHMARKS)))
        return 0

    common = ["--device", args.device, "--threads", str(args.threads)]
    common += ["--results", str(args.results)] + (["--quick"] if args.quick else [])
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    print(
        f"lenet5 benchmarks ({'quick' if args.quick else 'full'}, {args.device}, "
        f"{args.threads} threads)",
        flush=True,
    )
    failed = []
    for name in args.only or BENCHMARKS:
        extra = ["--run", args.run] if name == "inference" and args.run else []
        command = [sys.executable, str(BENCH_DIR / BENCHMARKS[name]), *common, *extra]
        print(f"\n== {name}", flush=True)
        if subprocess.run(command, check=False).returncode != 0:
            failed.append(name)
    print(f"\n{table(folder, list(BENCHMARKS))}")
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
