"""sdlm.py and losses.py against independent references (Appendix C, eqs. 8-9)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from lenet5.losses import map_loss, map_probabilities, plain
from lenet5.models import build
from lenet5.models.layers import EuclideanRBF, MaskedConv2d, Squash, Subsampling
from lenet5.sdlm import SDLM, gauss_newton_diagonal, paper_eta


@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons need float64; the default is restored for the other test files."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def tiny_chain(prototypes: int = 4) -> nn.Sequential:
    """A small network of the paper's own layers: masked conv, subsampling, linear, RBF."""
    torch.manual_seed(0)
    table = ((1, 0), (1, 1), (0, 1))
    net = nn.Sequential(
        MaskedConv2d(table, kernel_size=3),  # N x 3 x 4 x 4 from N x 2 x 6 x 6
        Squash(),
        Subsampling(3),  # N x 3 x 2 x 2
        Squash(),
        nn.Flatten(),  # N x 12
        nn.Linear(12, 5),  # N x 5
        Squash(),
        EuclideanRBF(torch.randint(0, 2, (prototypes, 5)).double() * 2 - 1),
    )
    for p in net.parameters():  # larger weights than the paper's init: curvature far from 0
        p.data.uniform_(-1, 1)
    return net


def reference_diagonal(net: nn.Sequential, x: torch.Tensor) -> dict:
    """The same recursion, computed with dense autograd Jacobians instead of convolution
    gradients: per sample, d2E/dx2 = (J_x^2)^T d2E/da2 with J_x the layer's Jacobian, and
    h_w = (J_w of the layer applied to x^2)^T d2E/da2, which sums x_j^2 over the connections
    that share each weight."""
    total = {p: torch.zeros_like(p) for p in net.parameters()}
    for sample in x:
        inputs = [sample.unsqueeze(0)]
        for layer in net:
            inputs.append(layer(inputs[-1]))
        h = torch.full_like(inputs[-2], 2.0).flatten()  # at the RBF input
        for index in reversed(range(len(net) - 1)):
            layer, u = net[index], inputs[index]
            if isinstance(layer, Squash):
                slope = layer.amplitude * layer.slope * (1 - torch.tanh(layer.slope * u) ** 2)
                h = slope.flatten() ** 2 * h
                continue
            if isinstance(layer, nn.Flatten):
                continue
            j_x = jacobian(lambda v, layer=layer: layer(v), u).reshape(h.numel(), u.numel())
            for name, param in layer.named_parameters():
                squared_input = u**2 if name == "weight" else u

                def apply(w, name=name, layer=layer, squared_input=squared_input):
                    values = dict(layer.named_parameters())
                    values[name] = w
                    if name == "bias":  # the bias's input is the constant 1
                        values["weight"] = torch.zeros_like(values["weight"])
                    return torch.func.functional_call(layer, values, (squared_input,))

                j_w = jacobian(apply, param.detach()).reshape(h.numel(), param.numel())
                total[param] += (j_w.T @ h).reshape(param.shape)
            h = (j_x**2).T @ h
    return {p: v / len(x) for p, v in total.items()}


def test_diagonal_equals_dense_jacobian_recursion():
    net = tiny_chain()
    x = torch.randn(3, 2, 6, 6)
    ours = gauss_newton_diagonal(net, x)
    reference = reference_diagonal(net, x)
    assert set(ours) == set(net.parameters())
    for param in net.parameters():
        assert torch.allclose(ours[param], reference[param], rtol=1e-10, atol=1e-12)
        assert (ours[param] > 0).all()  # Gauss-Newton: positive, never the squared gradient


def test_last_layer_diagonal_equals_exact_gauss_newton():
    """For F6's weights the recursion is exact: diag(J^T H J) with J the Jacobian of the F6
    outputs with respect to the weights and H = 2 I the Hessian of y_D = |x - w_D|^2."""
    net = tiny_chain()
    x = torch.randn(4, 2, 6, 6)
    linear = net[5]
    features = net[:5](x)  # N x 12

    def f6(weight):
        return net[6](features @ weight.T + linear.bias)  # N x 5

    jac = jacobian(f6, linear.weight.detach()).reshape(len(x), 5, -1)  # N x 5 x 60
    exact = (2 * jac**2).sum(dim=1).mean(dim=0).reshape(linear.weight.shape)
    assert torch.allclose(gauss_newton_diagonal(net, x)[linear.weight], exact, rtol=1e-10)


def test_single_path_chain_equals_exact_gauss_newton():
    """When every parameter reaches the output by one path (one unit per layer), dropping the
    off-diagonal terms drops nothing: the recursion equals diag(J^T H J) for every layer."""
    torch.manual_seed(1)
    net = nn.Sequential(
        MaskedConv2d(((1,),), kernel_size=1),
        Squash(),
        Subsampling(1, kernel_size=1),
        Squash(),
        nn.Flatten(),
        nn.Linear(1, 1),
        Squash(),
        EuclideanRBF(torch.ones(1, 1)),
    )
    for p in net.parameters():
        p.data.uniform_(-1, 1)
    x = torch.randn(5, 1, 1, 1)
    params = dict(net.named_parameters())

    def f6(*values):
        return torch.func.functional_call(net[:-1], dict(zip(params, values, strict=True)), (x,))

    jacs = jacobian(f6, tuple(p.detach() for p in params.values()))  # each N x 1 x shape
    ours = gauss_newton_diagonal(net, x)
    for (name, param), jac in zip(params.items(), jacs, strict=True):
        exact = (2 * jac.reshape(len(x), -1) ** 2).mean(dim=0).reshape(param.shape)
        assert torch.allclose(ours[param], exact, rtol=1e-10), name


def test_classic_network_has_an_estimate_for_every_parameter():
    model = build("classic").double()
    curvature = gauss_newton_diagonal(model, torch.randn(8, 1, 32, 32))
    for name, param in model.named_parameters():
        assert curvature[param].shape == param.shape, name
        assert torch.isfinite(curvature[param]).all() and (curvature[param] >= 0).all()


@pytest.mark.parametrize("arch", ["twin", "modern"])
def test_networks_outside_the_paper_are_refused(arch):
    with pytest.raises(ValueError, match="SDLM"):
        gauss_newton_diagonal(build(arch).double(), torch.randn(2, 1, 32, 32))


def test_step_is_eta_over_mu_plus_h():
    w = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    h = torch.tensor([0.0, 0.5, 10.0])
    optimiser = SDLM([w], lr=0.1, mu=0.02)
    optimiser.set_curvature({w: h})
    loss = (w**2).sum() / 2  # gradient = w
    loss.backward()
    before = w.detach().clone()
    optimiser.step()
    assert torch.allclose(w.detach(), before - 0.1 / (0.02 + h) * before)


def test_step_follows_mu_and_loaded_states_without_the_inverse():
    """1/(mu + h) is rebuilt when mu changes after set_curvature, and when a loaded state
    (written before the inverse was kept) holds only h."""
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    h = torch.tensor([0.5, 2.0])
    optimiser = SDLM([w], lr=0.1, mu=0.02)
    optimiser.set_curvature({w: h})
    optimiser.param_groups[0]["mu"] = 1.0
    w.grad = torch.ones(2)
    optimiser.step()
    assert torch.allclose(w.detach(), torch.tensor([1.0, -2.0]) - 0.1 / (1.0 + h))

    state = optimiser.state_dict()
    for per_param in state["state"].values():
        del per_param["inverse"], per_param["inverse_mu"]
    fresh_w = nn.Parameter(torch.zeros(2))
    fresh = SDLM([fresh_w], lr=0.1, mu=0.02)
    fresh.load_state_dict(state)
    fresh_w.grad = torch.ones(2)
    fresh.step()
    assert torch.allclose(fresh_w.detach(), -0.1 / (1.0 + h))


def test_step_without_curvature_is_an_error():
    w = nn.Parameter(torch.ones(2))
    (w.sum()).backward()
    with pytest.raises(RuntimeError, match="set_curvature"):
        SDLM([w]).step()


def test_paper_schedule():
    etas = [paper_eta(epoch) for epoch in range(22)]
    assert etas[:2] == [5e-4] * 2 and etas[2:5] == [2e-4] * 3 and etas[5:8] == [1e-4] * 3
    assert etas[8:12] == [5e-5] * 4 and etas[12:] == [1e-5] * 10


# --- losses ----------------------------------------------------------------------------------


def test_map_loss_matches_formula_and_autograd():
    torch.manual_seed(2)
    penalties = torch.rand(6, 10) * 20
    labels = torch.randint(0, 10, (6,))
    j = 0.7
    direct = torch.stack(
        [
            penalties[n, labels[n]]
            + torch.log(torch.exp(torch.tensor(-j)) + torch.exp(-penalties[n]).sum())
            for n in range(6)
        ]
    )
    scores = (-penalties).requires_grad_()
    loss = map_loss(j)(scores, labels)
    assert torch.allclose(loss, direct)
    loss.sum().backward()
    # d/d score_i: -[i = D] + exp(score_i) / (exp(-j) + sum_k exp(score_k))
    p = torch.exp(-penalties) / (torch.exp(torch.tensor(-j)) + torch.exp(-penalties).sum(1, True))
    expected = p - torch.nn.functional.one_hot(labels, 10)
    assert torch.allclose(scores.grad, expected)
    assert torch.allclose(map_probabilities(-penalties, j), p)
    assert (map_probabilities(-penalties, j).sum(1) < 1).all()


def test_plain_loss_is_the_correct_penalty():
    penalties = torch.rand(4, 10)
    labels = torch.tensor([0, 3, 9, 3])
    assert torch.equal(plain(-penalties, labels), penalties[torch.arange(4), labels])


def test_map_with_huge_j_is_cross_entropy():
    scores = torch.randn(5, 10)
    labels = torch.randint(0, 10, (5,))
    ce = torch.nn.functional.cross_entropy(scores, labels, reduction="none")
    assert torch.allclose(map_loss(1e6)(scores, labels), ce)
