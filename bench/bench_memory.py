"""Peak memory of a default training run: the resident set of a `lenet5 train` process.

    python bench/bench_memory.py [--quick] [--threads N]

Runs `lenet5 train` with the default recipe (`fast`) and the default monitoring (TensorBoard)
into a temporary directory, and reads the child's peak resident set size (ru_maxrss, which
wait4 reports for that process alone) when it exits. The full mode runs the whole default run
(4 epochs, final evaluation and plots included) 3 times and reports the largest peak: on the
same machine repeated runs read 519 to 588 MB. --quick runs 1 epoch once (--epochs 1), which
read 521 to 524 MB: a lower bound. For scale, a process that only imports torch is measured
the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_report import Figure, Recorder, child_env, lenet5_command, parser, set_threads

MB = 1_000_000  # the figure is in MB of 10^6 bytes
TARGET_MB = 600
FULL_RUNS, QUICK_RUNS = 3, 1


def peak_rss(command: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Run `command` to its end; return (its peak resident set in MB, its seconds). Its output
    goes to `log`; a failure raises with the log's end."""
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
    if process.returncode != 0:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"{command[0]} failed ({process.returncode}):\n{tail}")
    return usage.ru_maxrss * 1024 / MB, time.perf_counter() - started  # Linux: KiB


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    set_threads(args.threads)
    env = child_env(args.threads)
    with tempfile.TemporaryDirectory(prefix="lenet5-bench-") as scratch:
        command = [lenet5_command(), "train", "--out", str(Path(scratch) / "run")]
        command += ["--overwrite", "--device", args.device]  # each run replaces the last
        if args.quick:
            command += ["--epochs", "1"]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        recorder = Recorder(
            "memory",
            "Peak resident memory of a default training run",
            args,
            {
                "command": " ".join(["lenet5", *command[1:3], "RUN_DIR", *command[4:]]),
                "runs": QUICK_RUNS if args.quick else FULL_RUNS,
            },
        )
        baseline, _ = peak_rss(
            [sys.executable, "-c", "import torch"], env, Path(scratch) / "import.log"
        )
        peaks, seconds = [], []
        for _ in range(QUICK_RUNS if args.quick else FULL_RUNS):
            peak, wall = peak_rss(command, env, Path(scratch) / "train.log")
            peaks.append(peak)
            seconds.append(wall)
        log = (Path(scratch) / "train.log").read_text().splitlines()
    scope = "1 epoch" if args.quick else f"whole default run, largest of {len(peaks)}"
    name = f"peak RSS, `lenet5 train` ({scope})"
    recorder.figure(Figure(name, max(peaks), "MB", TARGET_MB, higher_is_better=False))
    recorder.detail("peaks_mb", peaks)
    recorder.detail("import_torch_peak_mb", baseline)
    recorder.detail("train_seconds_wall", seconds)
    recorder.detail("train_output_last_line", log[-1] if log else "")
    recorder.write()


if __name__ == "__main__":
    main()
