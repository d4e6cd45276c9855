"""Stochastic diagonal Levenberg-Marquardt: the paper's own optimiser (Appendix C).

Each parameter k gets its own step size eta / (mu + h_kk), where h_kk is a Gauss-Newton
estimate of the second derivative of the loss with respect to w_k. The estimate is obtained by
back-propagating second derivatives through the network the way gradients are back-propagated,
with squares (Appendix C, eqs. 25-28):

- through a squashing unit x = f(a):      d2E/da2 = f'(a)^2 d2E/dx2
- through weights a_i = sum_j w_ij x_j:   d2E/dx_j2 = sum_i w_ij^2 d2E/da_i2
- for a weight:                           d2E/dw_ij2 = d2E/da_i2 x_j^2, summed over every
                                          connection that shares the weight

For a convolution that is a weight-gradient computation with x**2 as input and d2E/da2 as the
incoming gradient, and an input-gradient computation with w**2 as the kernel; for the
subsampling layers, the coefficient's connections are the k*k inputs of each block. At the
output, the RBF penalty of the correct class, y_D = sum_j (x_j - w_Dj)^2, has d2E/dx_j2 = 2.
That is the whole Gauss-Newton curvature of the plain criterion; for the MAP criterion its
second term contributes negative diagonal terms (dropped: Gauss-Newton keeps only the positive
ones) and a small positive semi-definite part that we also leave out, as the paper does by
using the same estimate for both.

The estimate is per parameter, averaged over the samples it is computed on (the paper uses
500 before each pass), and never summed over a layer. It works on any network built as a chain
of the paper's layers (classic); a network whose modules form anything but a chain, or that
uses another layer type, is refused with a clear error instead of being given a wrong estimate.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lenet5.models.layers import EuclideanRBF, MaskedConv2d, Squash, Subsampling

MU = 0.02  # the paper's safety term in eta / (mu + h)
CURVATURE_SAMPLES = 500  # samples the estimate is computed on before each pass
# The paper's global learning rate by pass (section III-B): passes 1-2, 3-5, 6-8, 9-12, 13-20.
PAPER_ETA = (5e-4,) * 2 + (2e-4,) * 3 + (1e-4,) * 3 + (5e-5,) * 4 + (1e-5,) * 8


def paper_eta(epoch: int) -> float:
    """eta for a 0-based pass; passes beyond the 20th keep the last value."""
    return PAPER_ETA[min(epoch, len(PAPER_ETA) - 1)]


# A rule takes (module, its input, d2E/d(output)2) and returns (d2E/d(input)2, {param: h}).
Rule = Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, dict[nn.Parameter, Tensor]]]


def _squash(module: Squash, x: Tensor, h_out: Tensor):
    slope_gain = module.amplitude * module.slope
    derivative = slope_gain * (1 - torch.tanh(module.slope * x) ** 2)  # f'(a)
    return derivative**2 * h_out, {}


def _conv(module: nn.Conv2d | MaskedConv2d, x: Tensor, h_out: Tensor):
    weight = module.dense_weight() if isinstance(module, MaskedConv2d) else module.weight
    weight = weight.detach()
    h_weight = torch.nn.grad.conv2d_weight(x**2, weight.shape, h_out)  # out x in x k x k
    h_x = torch.nn.grad.conv2d_input(x.shape, weight**2, h_out)  # like x
    if isinstance(module, MaskedConv2d):  # keep only the connected kernels, in their order
        h_weight = module.connected(h_weight)  # connections x k x k
    params = {module.weight: h_weight, module.bias: h_out.sum(dim=(0, 2, 3))}
    return h_x, params


def _linear(module: nn.Linear, x: Tensor, h_out: Tensor):
    h_weight = h_out.T @ x**2  # out x in
    h_x = h_out @ module.weight.detach() ** 2  # N x in
    return h_x, {module.weight: h_weight, module.bias: h_out.sum(dim=0)}


def _subsampling(module: Subsampling, x: Tensor, h_out: Tensor):
    k = module.kernel_size
    coefficient = module.weight.detach().view(1, -1, 1, 1)
    # Every input of a block is connected through the map's coefficient.
    h_x = F.interpolate(h_out, scale_factor=k, mode="nearest") * coefficient**2  # like x
    block_sum_sq = F.avg_pool2d(x**2, k) * (k * k)  # N x C x H/k x W/k
    params = {
        module.weight: (h_out * block_sum_sq).sum(dim=(0, 2, 3)),
        module.bias: h_out.sum(dim=(0, 2, 3)),
    }
    return h_x, params


def _flatten(module: nn.Flatten, x: Tensor, h_out: Tensor):
    return h_out.reshape(x.shape), {}


RULES: dict[type, Rule] = {
    Squash: _squash,
    nn.Conv2d: _conv,
    MaskedConv2d: _conv,
    nn.Linear: _linear,
    Subsampling: _subsampling,
    nn.Flatten: _flatten,
}


@torch.no_grad()
def gauss_newton_diagonal(model: nn.Module, x: Tensor) -> dict[nn.Parameter, Tensor]:
    """h_kk for every trainable parameter, averaged over the samples in x.

    Runs the forward pass once, recording each leaf module's input, then walks the modules
    backwards applying the rules above. The network must be a chain of supported leaf modules
    ending in an EuclideanRBF output layer.
    """
    calls: list[tuple[nn.Module, Tensor, Tensor]] = []
    hooks = [
        module.register_forward_hook(lambda m, args, out: calls.append((m, args[0], out)))
        for module in model.modules()
        if not list(module.children())
    ]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()

    if not calls or not isinstance(calls[-1][0], EuclideanRBF):
        raise ValueError("SDLM needs a network whose output layer is the paper's EuclideanRBF")
    for (_, _, previous_out), (module, module_in, _) in zip(calls, calls[1:], strict=False):
        if module_in is not previous_out:
            raise ValueError(
                f"SDLM needs a chain of layers; {type(module).__name__} does not take the "
                "previous layer's output (branches or skips are not supported)"
            )
    unsupported = {type(m).__name__ for m, _, _ in calls[:-1] if type(m) not in RULES}
    if unsupported:
        raise ValueError(
            f"SDLM cannot back-propagate curvature through {', '.join(sorted(unsupported))}; "
            f"supported layers: {', '.join(t.__name__ for t in RULES)}"
        )

    _, rbf_in, _ = calls[-1]
    h = torch.full_like(rbf_in, 2.0)  # d2 y_D / d x_j2 = 2 for every F6 output
    curvature: dict[nn.Parameter, Tensor] = {}
    for module, module_in, _ in reversed(calls[:-1]):
        h, params = RULES[type(module)](module, module_in, h)
        for param, value in params.items():
            if param.requires_grad:
                curvature[param] = curvature.get(param, 0) + value / len(x)
    return curvature


class SDLM(torch.optim.Optimizer):
    """w_k -= lr / (mu + h_kk) * dE/dw_k, with h from `set_curvature` (Appendix C).

    Per-sample updates (batch size 1) are the paper's method. With a mini-batch of B the loss
    is the batch mean, so each step is scaled by B (`batch_scale`) to move as far as B
    per-sample steps would: the documented mini-batch mode.

    `set_curvature` also stores each parameter's 1 / (mu + h) ("inverse"), fixed for the pass,
    so that a step is one fused multiply-add over all parameters.
    """

    def __init__(self, params, lr: float = PAPER_ETA[0], mu: float = MU) -> None:
        if lr <= 0 or mu <= 0:
            raise ValueError("SDLM needs lr > 0 and mu > 0")
        super().__init__(params, {"lr": lr, "mu": mu, "batch_scale": 1.0})

    @torch.no_grad()
    def set_curvature(self, curvature: dict[nn.Parameter, Tensor]) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if param not in curvature:
                    raise ValueError("curvature estimate is missing a trainable parameter")
                self.state[param]["h"] = curvature[param].detach().clone()
                self._refresh_inverse(param, group["mu"])

    def _refresh_inverse(self, param: Tensor, mu: float) -> Tensor:
        """1 / (mu + h), rebuilt when h or mu changed since it was last built (a loaded
        state without it, a group whose mu was changed)."""
        state = self.state[param]
        if "h" not in state:
            raise RuntimeError("SDLM.step() before set_curvature(): no estimate of h")
        if state.get("inverse_mu") != mu or "inverse" not in state:
            state["inverse"] = 1 / (mu + state["h"])
            state["inverse_mu"] = mu
        return state["inverse"]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [param for param in group["params"] if param.grad is not None]
            inverses = [self._refresh_inverse(param, group["mu"]) for param in params]
            if params:
                torch._foreach_addcmul_(
                    params,
                    [param.grad for param in params],
                    inverses,
                    value=-group["lr"] * group["batch_scale"],
                )
        return loss
