"""The networks, by name: the 1998 LeNet-5 and two popular variants.

- classic: the paper's network, faithfully (LeCun et al. 1998, section II-B).
- twin: the widely copied PyTorch LeNet-5 with two summed C3 branches (activatedgeek/LeNet-5).
- modern: LeNet-5's shape with today's usual choices, within 62,000 parameters.

Every network maps N x 1 x 32 x 32 images to N x 10 scores (the largest predicts), and has
the seven stages named in LAYER_NAMES as submodules, run in that order.
"""

from torch import Tensor, nn

from lenet5.models.classic import Classic
from lenet5.models.layers import LAYER_NAMES
from lenet5.models.modern import Modern
from lenet5.models.twin import Twin

__all__ = ["ARCHITECTURES", "LAYER_NAMES", "Classic", "Modern", "Twin", "activations", "build"]

ARCHITECTURES: dict[str, type[nn.Module]] = {"classic": Classic, "twin": Twin, "modern": Modern}


def build(name: str, **options) -> nn.Module:
    """A freshly initialised network of the named architecture (see ARCHITECTURES); options
    go to its constructor (e.g. classic's init="sqrt")."""
    if name not in ARCHITECTURES:
        valid = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"unknown architecture {name!r}; valid names: {valid}")
    try:
        return ARCHITECTURES[name](**options)
    except TypeError as exc:
        raise ValueError(f"{name} does not take the options {sorted(options)} ({exc})") from exc


def activations(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Each stage's output for input x, keyed by LAYER_NAMES in order.

    Runs the model's own stages (the same code as its forward), with autograd as the caller
    has it: wrap the call in torch.no_grad() to only look. What each key holds:
    - s2, s4: after subsampling (and, for classic, its squashing).
    - twin's c3 is the sum of its two branches, each already pooled as in the original, so
      its c3 is 16 x 5 x 5 and its s4 (an identity) repeats it.
    - output: the output layer's own values. For classic these are the RBF penalties, the
      negatives of what model(x) returns; for the others, the scores themselves.
    """
    return dict(model.forward_stages(x))
