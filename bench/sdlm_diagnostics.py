"""Why the paper's SDLM diverges here: signal scale and curvature of the classic network.

    python bench/sdlm_diagnostics.py [RUN_DIR ...]

For a freshly initialised classic network under each initialisation rule (Appendix A as
printed, +-2.4/F, and +-2.4/sqrt(F)), and for each trained run directory given, prints the
standard deviation of every layer's output on 500 test digits and the median of the
Gauss-Newton diagonal h per parameter tensor, next to mu = 0.02. Where h << mu, SDLM's step
eta / (mu + h) is eta / mu = 25 eta whatever the curvature: plain SGD at a large rate.
Set LENET5_DATA_DIR (or pass --data-dir) to point at MNIST.
"""

from __future__ import annotations

import argparse
import os

import torch

from lenet5 import data, experiment, models, sdlm
from lenet5.models import activations


def report(label: str, model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        stages = activations(model, x)
    curvature = sdlm.gauss_newton_diagonal(model, x)
    print(f"{label}")
    print(
        "  output std: "
        + "  ".join(f"{k} {v.std():.3g}" for k, v in stages.items() if k != "output")
    )
    medians = []
    for name, param in model.named_parameters():
        layer, kind = name.split(".")[0], name.rsplit(".", 1)[1][0]
        medians.append(f"{layer}.{kind} {curvature[param].median():.2g}")
    print(f"  median h (mu = {sdlm.MU}): " + "  ".join(medians))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR")
    parser.add_argument("--data-dir", default=os.environ.get("LENET5_DATA_DIR"))
    args = parser.parse_args()
    spec = data.InputSpec(geometry="pad", values="paper")
    test = data.load_split("mnist", "test", args.data_dir)
    x = data.to_float(data.prepare(test.images[:500], spec), spec)
    print(f"input: 500 test digits, padded, paper mapping: mean {x.mean():.3f} std {x.std():.3f}")
    for rule in ("paper", "sqrt"):
        torch.manual_seed(0)
        report(f"classic at init, rule {rule!r}", models.build("classic", init=rule), x)
    for run_dir in args.runs:
        _, model = experiment.load_run(run_dir)
        report(f"trained run {run_dir}", model, x)


if __name__ == "__main__":
    main()
