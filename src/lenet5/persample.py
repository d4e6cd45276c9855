"""The classic network's training step on one sample, written out and compiled.

The paper updates the weights after every sample (section III-B). Through autograd such a step
costs about 1.8 ms on a CPU core, and almost none of that is arithmetic (a step is about 1.2
MFLOP): it is ~100 small operations, each paying dispatch, allocation and autograd bookkeeping.
Here the step is written out instead, the classic network's forward pass and back-propagation
for one image layer by layer, and torch.compile fuses the element-wise work around the matrix
products into a few kernels. Per layer, for one sample:

- convolution (C1, C3): the input's k x k patches gathered into columns by a fixed index (an
  "unfold"), then a = W cols + b. Back: dW = da cols^T, db = sum(da), d(cols) = W^T da added
  back into the input's shape (C1's input needs none). C3 uses its dense bank (Table I's
  missing kernels as zeros) and keeps only the connected kernels' gradients.
- C5, F6: a = W x + b. Back: dW = da x^T, d(x) = W^T da.
- subsampling (S2, S4): a = w * (sum of each 2x2 block) + b. Back: dw = sum(da * block sums),
  db = sum(da), d(input) = w da spread over each block's four inputs.
- squashing: x = A tanh(S a), so dx/da = A S (1 - tanh(S a)^2).
- RBF output: y_i = sum_j (x_j - P_ij)^2, so dy_i/dx_j = 2 (x_j - P_ij).
- criteria: plain (eq. 8) dE/dy = onehot(D); MAP (eq. 9) dE/dy_i = onehot(D)_i -
  exp(-y_i) / (exp(-j) + sum_k exp(-y_k)).

It is the same function with the same gradients as autograd through `lenet5.models.Classic`
(the tests compare the two). `make_step` is the `step_factory` that `lenet5.experiment` hands
to `lenet5.train.fit`: it supplies this step for the classic network trained with SDLM,
batch size 1, float32 and the plain or MAP criterion, and None for anything else (autograd
then). If torch.compile cannot run here (no C++ compiler, an unsupported Python), the step runs
eagerly with a warning: the same numbers, about 3x slower. `bench/bench_sdlm.py` times both
against autograd.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lenet5.models.classic import Classic
from lenet5.models.layers import Squash, connected_kernels, dense_kernels
from lenet5.sdlm import SDLM
from lenet5.train import Step, TrainConfig

CRITERIA = ("plain", "map")  # the paper's two, eqs. 8 and 9


def supports(model: nn.Module, criterion: str, batch_size: int) -> bool:
    """Whether `ClassicStep` can train this model with this criterion and batch size."""
    if type(model) is not Classic or criterion not in CRITERIA or batch_size != 1:
        return False
    squashes = {(m.amplitude, m.slope) for m in model.modules() if isinstance(m, Squash)}
    return len(squashes) == 1 and all(p.requires_grad for p in model.parameters())


def unfold_index(channels: int, side: int, k: int) -> Tensor:
    """For a channels x side x side input: (channels*k*k) x (side-k+1)^2 flat positions, so
    that x.reshape(-1)[index] is F.unfold(x, k), the columns of a k x k convolution."""
    positions = torch.arange(channels * side * side, dtype=torch.float64)
    return F.unfold(positions.view(1, channels, side, side), k)[0].long()


def _block_sum(x: Tensor) -> Tensor:
    """C x n x n -> C x n/2 x n/2: the sum of each 2x2 block."""
    c, n, _ = x.shape
    return x.view(c, n // 2, 2, n // 2, 2).sum((2, 4))


def _spread(g: Tensor) -> Tensor:
    """C x m x m -> C x 2m x 2m: each value copied to its 2x2 block's four positions."""
    c, m, _ = g.shape
    return g.view(c, m, 1, m, 1).expand(c, m, 2, m, 2).reshape(c, 2 * m, 2 * m)


def classic_step(
    x: Tensor,
    label: Tensor,
    params: list[Tensor],
    constants: list[Tensor],
    amplitude: float,
    slope: float,
    criterion: str,
    j: float,
) -> tuple[Tensor, list[Tensor]]:
    """Loss and gradients of one sample: x is 1 x 1 x 32 x 32, label holds one class index.

    `params` are the classic network's trainable tensors in `parameters()` order; `constants`
    are (prototypes, C3's kernel_index and pair_index, C1's and C3's unfold indices). Returns
    the loss (a 0-d tensor) and one gradient per parameter, in the same order."""
    w1, b1, w2, b2, w3, b3, w4, b4, w5, b5, w6, b6 = params
    prototypes, kernel_index, pair_index, cols1_index, cols3_index = constants
    gain = amplitude * slope
    maps1, maps3 = w1.shape[0], b3.shape[0]  # 6, 16
    side1 = x.shape[-1] - w1.shape[-1] + 1  # 28
    side3 = side1 // 2 - w3.shape[-1] + 1  # 10

    # Forward, keeping tanh(S a) of every layer: its derivative is all back-propagation needs.
    cols1 = x.reshape(-1)[cols1_index]  # 25 x 784
    t1 = torch.tanh(slope * (w1.view(maps1, -1) @ cols1 + b1[:, None]))  # C1, 6 x 784
    sums2 = _block_sum((amplitude * t1).view(maps1, side1, side1))  # 6 x 14 x 14
    t2 = torch.tanh(slope * (w2[:, None, None] * sums2 + b2[:, None, None]))  # S2
    w3_dense = dense_kernels(w3, kernel_index, (maps3, maps1)).view(maps3, -1)  # 16 x 150
    cols3 = (amplitude * t2).reshape(-1)[cols3_index]  # 150 x 100
    t3 = torch.tanh(slope * (w3_dense @ cols3 + b3[:, None]))  # C3, 16 x 100
    sums4 = _block_sum((amplitude * t3).view(maps3, side3, side3))  # 16 x 5 x 5
    t4 = torch.tanh(slope * (w4[:, None, None] * sums4 + b4[:, None, None]))  # S4
    x4 = (amplitude * t4).reshape(-1)  # 400
    t5 = torch.tanh(slope * (w5.view(w5.shape[0], -1) @ x4 + b5))  # C5, 120
    x5 = amplitude * t5
    t6 = torch.tanh(slope * (w6 @ x5 + b6))  # F6, 84
    difference = amplitude * t6 - prototypes  # 10 x 84
    penalties = (difference * difference).sum(1)  # y, 10

    onehot = F.one_hot(label.reshape(()), len(penalties)).to(penalties.dtype)
    loss = (onehot * penalties).sum()  # y_D
    d_penalties = onehot
    if criterion == "map":
        # 11 logits: the "-y" of eq. 9, with the "none of these" class last.
        logits = torch.cat([-penalties, penalties.new_full((1,), -j)])
        loss = loss + torch.logsumexp(logits, 0)
        d_penalties = onehot - torch.softmax(logits, 0)[:-1]

    # Back-propagation: dE/da of each layer, from the output down.
    def through_squash(d_out: Tensor, t: Tensor) -> Tensor:
        return d_out * (1 - t * t) * gain

    da6 = through_squash(2 * (d_penalties @ difference), t6)  # 84
    da5 = through_squash(w6.t() @ da6, t5)  # 120
    da4 = through_squash((w5.view(w5.shape[0], -1).t() @ da5).view_as(t4), t4)  # 16 x 5 x 5
    da3 = through_squash(_spread(w4[:, None, None] * da4).view_as(t3), t3)  # 16 x 100
    d_cols3 = w3_dense.t() @ da3  # 150 x 100
    # Each column entry goes back to the S2 output it was gathered from: 6*14*14, flat.
    d_x2 = torch.zeros_like(t2).view(-1).index_add_(0, cols3_index.view(-1), d_cols3.view(-1))
    da2 = through_squash(d_x2.view_as(t2), t2)  # 6 x 14 x 14
    da1 = through_squash(_spread(w2[:, None, None] * da2).view_as(t1), t1)  # 6 x 784

    grads = [  # shaped like params: C1 6x1x5x5, 6; S2 6, 6; C3 60x5x5, 16; S4 16, 16; ...
        (da1 @ cols1.t()).view_as(w1),
        da1.sum(1),
        (da2 * sums2).sum((1, 2)),
        da2.sum((1, 2)),
        connected_kernels((da3 @ cols3.t()).view(maps3, maps1, *w3.shape[1:]), pair_index),
        da3.sum(1),
        (da4 * sums4).sum((1, 2)),
        da4.sum((1, 2)),
        torch.outer(da5, x4).view_as(w5),
        da5,
        torch.outer(da6, x5),
        da6,
    ]
    return loss, grads


class ClassicStep:
    """`step(x, label) -> (loss, grads)` for one sample through a Classic model's live weights.

    Gradients come in `model.parameters()` order, detached; the weights are read at every
    call, so updating them in place between calls is all a training loop needs to do."""

    def __init__(self, model: Classic, criterion: str, j: float, compiled: bool = True) -> None:
        if not supports(model, criterion, 1):
            raise ValueError(
                f"the written-out step needs a Classic model with every parameter trainable "
                f"and one of the criteria {CRITERIA}; got {type(model).__name__}, {criterion!r}"
            )
        squash = next(m for m in model.modules() if isinstance(m, Squash))
        side = model.input_size
        c3 = model.c3.conv
        k1, k3 = model.c1.conv.kernel_size[0], c3.kernel_size
        side2 = (side - k1 + 1) // 2
        self.params = list(model.parameters())
        self.constants = [
            model.output.prototypes,
            c3.kernel_index,
            c3.pair_index,
            unfold_index(1, side, k1).to(c3.kernel_index.device),
            unfold_index(c3.in_channels, side2, k3).to(c3.kernel_index.device),
        ]
        self.settings = (squash.amplitude, squash.slope, criterion, float(j))
        self.function = classic_step
        if compiled:
            try:  # torch.compile refuses some Pythons outright
                self.function = torch.compile(classic_step, dynamic=False)
            except Exception as error:  # noqa: BLE001 (whatever the reason: eager, loudly)
                _warn_eager(error)

    @torch.no_grad()
    def __call__(self, x: Tensor, label: Tensor) -> tuple[Tensor, list[Tensor]]:
        if x.shape[0] != 1:
            raise ValueError(f"the written-out step takes one sample at a time, got {x.shape[0]}")
        try:
            return self.function(x, label, self.params, self.constants, *self.settings)
        except Exception as error:  # noqa: BLE001 (compilation happens at the first call)
            if self.function is classic_step:
                raise
            # A compiler failure falls back; a genuine error in the step fails again, eagerly.
            _warn_eager(error)
            self.function = classic_step
            return self.function(x, label, self.params, self.constants, *self.settings)


def _warn_eager(error: Exception) -> None:
    warnings.warn(
        f"torch.compile failed ({type(error).__name__}: {error}); the per-sample step runs "
        "eagerly instead (same numbers, slower)",
        RuntimeWarning,
        stacklevel=3,
    )


def make_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig
) -> Step | None:
    """The per-sample SDLM step for `lenet5.train.fit(step_factory=...)`, or None where it does
    not apply (another network, optimiser, criterion, batch size or precision)."""
    if not (
        isinstance(optimizer, SDLM)
        and config.precision == "fp32"
        and supports(model, config.loss, config.batch_size)
    ):
        return None
    written = ClassicStep(model, config.loss, config.map_j)

    def per_sample_step(inputs: Tensor, labels: Tensor) -> Tensor:
        loss, grads = written(inputs, labels)
        for param, grad in zip(written.params, grads, strict=True):
            param.grad = grad
        optimizer.step()  # SDLM: w -= eta / (mu + h) * grad, one fused operation
        return loss

    return per_sample_step
