"""The 1998 paper's own layers, and the seven-stage skeleton every network here shares.

Follows LeCun, Bottou, Bengio and Haffner, "Gradient-based learning applied to document
recognition" (Proc. IEEE, 1998): section II-B for the layers, Appendix A for the squashing
function and the initialisation. Each layer is a small, separate nn.Module whose weights are
plain attributes (`weight`, `bias`, `prototypes`), so that the stochastic diagonal
Levenberg-Marquardt optimiser of Appendix C can walk them one by one, paper in hand.
"""

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The paper's layer names, in the order the data flows. Every network in this package has one
# submodule per name, so activations, summaries and plots work on all of them alike.
LAYER_NAMES = ("c1", "s2", "c3", "s4", "c5", "f6", "output")

# Appendix A: weights start uniform in [-2.4 / F, 2.4 / F], F the fan-in of the weight's unit.
INIT_SCALE = 2.4
# How F enters the bound. "paper" is Appendix A as printed, 2.4 / F. "sqrt" is 2.4 / sqrt(F),
# which is what the appendix's own rationale asks for ("the initial standard deviation of the
# weighted sums in the same range for each unit"): with 2.4 / F that deviation shrinks as
# 1 / sqrt(F) and the signal fades by ~10x per layer; with 2.4 / sqrt(F) it is the same
# (~1.4x the input's) for every unit. See the README's reproduction notes.
INIT_RULES = ("paper", "sqrt")


def init_bound(fan_in: Tensor | int, rule: str = "paper") -> Tensor | float:
    """The half-width of the uniform initialisation for units of fan-in F."""
    if rule == "paper":
        return INIT_SCALE / fan_in
    if rule == "sqrt":
        return INIT_SCALE / fan_in**0.5
    raise ValueError(f"unknown initialisation rule {rule!r}; one of {INIT_RULES}")


class Staged(nn.Module):
    """A network written as the paper's seven stages, run in the order of LAYER_NAMES.

    Subclasses only assign the submodules c1, s2, c3, s4, c5, f6 and output; the forward pass
    lives here once, so `forward` and the per-layer activations can never disagree.
    """

    # MNIST's 28x28 field padded by 2 pixels of background on each side (section III-A).
    input_size = 32

    def forward_stages(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        """Yield (layer name, that layer's output) for each stage in order."""
        for name in LAYER_NAMES:
            x = getattr(self, name)(x)
            yield name, x

    def forward(self, x: Tensor) -> Tensor:
        return dict(self.forward_stages(x))["output"]


def uniform_fan_in_(weight: Tensor, bias: Tensor | None, fan_in: int, rule: str = "paper") -> None:
    """Appendix A's initialisation, in place: uniform in +-2.4 / fan_in (see INIT_RULES).

    fan_in counts the unit's inputs, not its bias: that is how the paper arrives at C3 fan-ins
    of 75, 100 and 150 (3, 4 or 6 maps times 25). The bias is a weight like the others in the
    paper's formalism (a connection from a unit fixed at +1), so it is drawn from the same range.
    """
    bound = init_bound(fan_in, rule)
    with torch.no_grad():
        weight.uniform_(-bound, bound)
        if bias is not None:
            bias.uniform_(-bound, bound)


def init_paper_(module: nn.Conv2d | nn.Linear, rule: str = "paper") -> None:
    """Re-initialise a standard convolution or linear layer as Appendix A prescribes."""
    fan_in = module.weight[0].numel()  # in_channels * k * k, or in_features
    uniform_fan_in_(module.weight, module.bias, fan_in, rule)


class Squash(nn.Module):
    """The paper's sigmoid, f(a) = A tanh(S a) with A = 1.7159 and S = 2/3 (Appendix A).

    The constants make f(1) = 1 and f(-1) = -1, where f's second derivative is largest, and
    keep the gain near 1 over the range the normalised inputs occupy.
    """

    def __init__(self, amplitude: float = 1.7159, slope: float = 2.0 / 3.0) -> None:
        super().__init__()
        self.amplitude = amplitude
        self.slope = slope

    def forward(self, a: Tensor) -> Tensor:
        return self.amplitude * torch.tanh(self.slope * a)

    def extra_repr(self) -> str:
        return f"amplitude={self.amplitude}, slope={self.slope:.4f}"


class Subsampling(nn.Module):
    """S2 and S4: per map, the sum of each non-overlapping k x k block, times a trainable
    coefficient, plus a trainable bias (section II-B). The squashing follows as its own module.

    Two parameters per map: `weight` (the coefficient) and `bias`, each of shape (channels,).
    """

    def __init__(self, channels: int, kernel_size: int = 2) -> None:
        super().__init__()
        self.channels = channels
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self, rule: str = "paper") -> None:
        # Each unit sees k * k inputs, all through the one shared coefficient.
        uniform_fan_in_(self.weight, self.bias, self.kernel_size * self.kernel_size, rule)

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel_size
        # The block sum as k * k times the block mean: exact for k = 2, and unlike avg_pool2d's
        # divisor_override it survives ONNX export (the exporter drops that argument).
        block_sum = F.avg_pool2d(x, k) * (k * k)  # N x C x H/k x W/k
        return block_sum * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}"


class MaskedConv2d(nn.Module):
    """A convolution in which each output map sees only some input maps: C3 and Table I.

    `table[o][i]` says whether input map i feeds output map o. Only the connected kernels are
    parameters: `weight` holds them, shape (connections, k, k), in row-major order of the
    table (output map 0's kernels first). The forward pass places them in a dense
    (out, in, k, k) bank with zero kernels elsewhere and runs one ordinary convolution, which
    is numerically the paper's sparse layer. Because the zero kernels are not parameters, no
    optimiser or weight decay can ever make them nonzero, and `parameters()` counts exactly the
    paper's 1,516 for C3.
    """

    def __init__(self, table: tuple[tuple[bool, ...], ...] | Tensor, kernel_size: int = 5) -> None:
        super().__init__()
        table = torch.as_tensor(table, dtype=torch.bool)  # out x in
        self.out_channels, self.in_channels = table.shape
        self.kernel_size = kernel_size
        n_kernels = int(table.sum())
        self.weight = nn.Parameter(torch.empty(n_kernels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(self.out_channels))
        # Wiring, not learned state: rebuilt from the table, so kept out of the state_dict.
        self.register_buffer("table", table, persistent=False)
        # For each (out, in) pair in row-major order: the index of its kernel in `weight`, or
        # n_kernels (an all-zero kernel appended in forward) where the table has no connection.
        kernel_index = torch.full((table.numel(),), n_kernels, dtype=torch.long)
        kernel_index[table.flatten()] = torch.arange(n_kernels)
        self.register_buffer("kernel_index", kernel_index, persistent=False)
        # The inverse: for each kernel in `weight`, its (out, in) pair's row-major position.
        self.register_buffer("pair_index", table.flatten().nonzero().squeeze(1), persistent=False)
        self.reset_parameters()

    def fan_in(self) -> Tensor:
        """Inputs per unit of each output map, excluding the bias (75, 100 or 150 for C3)."""
        return self.table.sum(dim=1) * self.kernel_size * self.kernel_size  # out

    def reset_parameters(self, rule: str = "paper") -> None:
        owner = self.table.nonzero()[:, 0]  # connections: the output map each kernel feeds
        bound = init_bound(self.fan_in().to(self.weight.dtype), rule)  # out
        with torch.no_grad():
            # Per output map, uniform in +-2.4 / F with that map's own F (Appendix A).
            unit = torch.rand_like(self.weight) * 2 - 1
            self.weight.copy_(unit * bound[owner].view(-1, 1, 1))
            self.bias.copy_((torch.rand_like(self.bias) * 2 - 1) * bound)

    def dense_weight(self, weight: Tensor | None = None) -> Tensor:
        """The full (out, in, k, k) kernel bank, zero wherever the table has no connection;
        of `weight` (connections x k x k, e.g. a gradient) in place of the layer's own."""
        return dense_kernels(
            self.weight if weight is None else weight,
            self.kernel_index,
            (self.out_channels, self.in_channels),
        )

    def connected(self, dense: Tensor) -> Tensor:
        """The inverse of dense_weight: the connected kernels of any dense (out, in, k, k)
        tensor, as (connections, k, k) in `weight`'s order (e.g. a per-weight curvature)."""
        return connected_kernels(dense, self.pair_index)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias)  # N x out x H-k+1 x W-k+1

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"connections={self.weight.shape[0]}"
        )


def dense_kernels(weight: Tensor, kernel_index: Tensor, maps: tuple[int, int]) -> Tensor:
    """MaskedConv2d's dense bank as a plain function of its tensors (so that a compiled
    step can take them as arguments): `weight` (connections x k x k) placed at the (out, in)
    pairs of `kernel_index`, zero kernels elsewhere. Only fixed-shape gathers, no masks."""
    k = weight.shape[-1]
    bank = torch.cat([weight, weight.new_zeros(1, k, k)]).index_select(0, kernel_index)
    return bank.view(*maps, k, k)  # out x in x k x k


def connected_kernels(dense: Tensor, pair_index: Tensor) -> Tensor:
    """The inverse of dense_kernels: the kernels of the connected pairs, connections x k x k."""
    k = dense.shape[-1]
    return dense.reshape(-1, k, k).index_select(0, pair_index)


class EuclideanRBF(nn.Module):
    """The output layer: one Euclidean radial basis function unit per class (eq. 7).

    Unit i outputs the penalty y_i = sum_j (x_j - w_ij)^2, the squared distance between the
    input and its prototype w_i. The prototypes are fixed, not learned (the paper keeps them
    fixed), so they are a buffer: they travel with the state_dict but never reach an optimiser.
    """

    def __init__(self, prototypes: Tensor) -> None:
        super().__init__()
        self.register_buffer("prototypes", prototypes.clone())  # classes x features

    def forward(self, x: Tensor) -> Tensor:
        difference = x.unsqueeze(1) - self.prototypes  # N x classes x features
        return difference.pow(2).sum(dim=2)  # N x classes

    def extra_repr(self) -> str:
        classes, features = self.prototypes.shape
        return f"in_features={features}, out_features={classes}"
