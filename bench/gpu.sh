#!/usr/bin/env bash
# The GPU versions of the throughput and time-to-99 benchmarks, on a CUDA machine.
#
#   LENET5_DATA_DIR=/path/to/mnist bash bench/gpu.sh [--quick] [other bench.py options]
#
# Needs a CUDA build of torch in the interpreter it runs (PYTHON, default .venv/bin/python;
# on a CUDA machine `make setup TORCH_SPEC=torch` installs one) and MNIST (LENET5_DATA_DIR,
# or lenet5's cache, filled on first use). Both benchmarks run with --device cuda and write
# the same JSON as on the CPU, to bench/results/cuda-full/ (cuda-quick/ with --quick); the
# table printed at the end is built from those files. In the throughput benchmark the
# reference pipeline still decodes and resizes every image on the CPU in its 8 workers, as
# run.py does; only the network and its batches are on the GPU, on both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"

"$PYTHON" - <<'CHECK'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"bench/gpu.sh: torch {torch.__version__} sees no CUDA device; it needs a CUDA build")
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
CHECK

"$PYTHON" bench/bench.py --device cuda --only throughput time_to_99 "$@"
