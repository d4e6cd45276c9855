"""Per-layer output shapes, parameters and connections, counted the way the 1998 paper counts.

LeCun et al. (1998), section II-B, give each layer's trainable parameters and connections:
C1 has 156 parameters but 122,304 connections because each kernel is shared by every position.
Everything here is computed from the modules themselves, never typed in: one forward pass with
hooks records each module's output shape, and each module type has a rule for the connections
of one output unit.

Conventions (the paper's, extended to layers it does not have):
- A connection is one input an output unit reads, plus one for its bias: a 5x5 convolution unit
  over one map with a bias has 26. For the classic network the totals are the paper's 60,000
  trainable parameters and 340,908 connections.
- Trainable parameters are those with requires_grad. Fixed parameters are the other numbers
  the network computes with that gradient descent does not change: frozen parameters and
  floating-point buffers (classic's RBF prototypes; BatchNorm's running mean and variance).
  Integer and boolean buffers (C3's wiring table, BatchNorm's step counter) are not numbers the
  network computes with and are not counted.
- Activation functions (the paper's squashing, ReLU), flattening, dropout and identities add
  no connections: the paper counts the squashing as part of the unit.
- Subsampling reads k * k inputs plus its bias, as S2; max- and average-pooling read k * k.
- Batch normalisation counts 1 per unit, as a bias: at inference its scale folds into the
  preceding layer's weights and its shift becomes that layer's bias.
- The sum of parallel branches (twin's C3) reads one input per branch.
"""

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from lenet5.models import LAYER_NAMES
from lenet5.models.layers import EuclideanRBF, MaskedConv2d, Squash, Subsampling
from lenet5.models.twin import TwinBranches


@dataclass(frozen=True)
class LayerRow:
    """One stage: its output shape for one sample, (C, H, W) or (features,), and its counts."""

    name: str
    output_shape: tuple[int, ...]
    trainable: int
    fixed: int
    connections: int


@dataclass(frozen=True)
class Summary:
    """A network's stages in order, with totals."""

    model: str
    input_shape: tuple[int, ...]
    layers: tuple[LayerRow, ...]

    @property
    def trainable(self) -> int:
        return sum(row.trainable for row in self.layers)

    @property
    def fixed(self) -> int:
        return sum(row.fixed for row in self.layers)

    @property
    def connections(self) -> int:
        return sum(row.connections for row in self.layers)

    def to_dict(self) -> dict:
        """JSON-ready: lists for shapes, plain ints, and a totals entry."""
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "layers": [
                {**asdict(row), "output_shape": list(row.output_shape)} for row in self.layers
            ],
            "totals": {
                "trainable": self.trainable,
                "fixed": self.fixed,
                "connections": self.connections,
            },
        }


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _own_connections(module: nn.Module, output: tuple[int, ...]) -> int:
    """Connections made by the module itself (not its children), for one sample."""
    units = 1
    for size in output:
        units *= size
    if isinstance(module, nn.Conv2d):
        # weight[0] is one output map's kernel over its input maps (in / groups x kh x kw).
        return units * (module.weight[0].numel() + (module.bias is not None))
    if isinstance(module, MaskedConv2d):
        # Per output map: 25 inputs per connected input map, plus the bias (Table I for C3).
        per_unit = module.fan_in() + 1  # out
        return int(per_unit.sum()) * (units // module.out_channels)
    if isinstance(module, nn.Linear):
        return units * (module.in_features + (module.bias is not None))
    if isinstance(module, Subsampling):
        return units * (module.kernel_size * module.kernel_size + 1)
    if isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
        kh, kw = _pair(module.kernel_size)
        return units * kh * kw
    if isinstance(module, EuclideanRBF):
        return units * module.prototypes.shape[1]
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return units
    if isinstance(module, TwinBranches):
        return units * len(module.branches)
    no_connections = (
        Squash,
        nn.ReLU,
        nn.Tanh,
        nn.Sigmoid,
        nn.GELU,
        nn.SiLU,
        nn.ELU,
        nn.LeakyReLU,
        nn.Flatten,
        nn.Dropout,
        nn.Identity,
        nn.Sequential,
        nn.ModuleList,
    )
    if isinstance(module, no_connections):
        return 0
    raise TypeError(f"no connection rule for {type(module).__name__}; add one to summary.py")


def _connections(module: nn.Module, shapes: dict[nn.Module, tuple[int, ...]]) -> int:
    own = _own_connections(module, shapes[module]) if module in shapes else 0
    return own + sum(_connections(child, shapes) for child in module.children())


def _fixed(module: nn.Module) -> int:
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    constants = sum(b.numel() for b in module.buffers() if b.is_floating_point())
    return frozen + constants


def summarize(model: nn.Module, input_size: int = 32) -> Summary:
    """Count the model's stages on one input_size x input_size image.

    Runs one forward pass in eval mode without gradients (so batch norm neither needs a batch
    nor updates its statistics) and restores the model's mode afterwards.
    """
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        shapes[module] = tuple(output.shape[1:])  # drop the batch dimension

    reference = next(model.parameters(), None)
    if reference is None:
        reference = next(model.buffers())
    image = torch.zeros(
        1, 1, input_size, input_size, dtype=reference.dtype, device=reference.device
    )  # N x 1 x H x W
    handles = [module.register_forward_hook(record) for module in model.modules()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(image)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()

    rows = []
    for name in LAYER_NAMES:
        stage = getattr(model, name)
        rows.append(
            LayerRow(
                name=name,
                output_shape=shapes[stage],
                trainable=sum(p.numel() for p in stage.parameters() if p.requires_grad),
                fixed=_fixed(stage),
                connections=_connections(stage, shapes),
            )
        )
    return Summary(
        model=type(model).__name__,
        input_shape=tuple(image.shape[1:]),
        layers=tuple(rows),
    )


def format_table(summary: Summary) -> str:
    """An aligned text table of the summary, with a totals line; numbers use separators."""
    header = ("layer", "output", "trainable", "fixed", "connections")
    body = [
        (
            row.name,
            "x".join(str(size) for size in row.output_shape),
            f"{row.trainable:,}",
            f"{row.fixed:,}",
            f"{row.connections:,}",
        )
        for row in summary.layers
    ]
    totals = (
        "total",
        "",
        f"{summary.trainable:,}",
        f"{summary.fixed:,}",
        f"{summary.connections:,}",
    )
    lines = [header, *body, totals]
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]

    def render(cells: tuple[str, ...]) -> str:
        # Names and shapes read left to right; counts align on their last digit.
        left = [cell.ljust(width) for cell, width in zip(cells[:2], widths[:2], strict=True)]
        right = [cell.rjust(width) for cell, width in zip(cells[2:], widths[2:], strict=True)]
        return "  ".join(left + right).rstrip()

    rule = "-" * len(render(header))
    title = f"{summary.model} on {'x'.join(str(s) for s in summary.input_shape)}"
    return "\n".join([title, render(header), rule, *map(render, body), rule, render(totals)])
