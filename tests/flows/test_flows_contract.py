"""Contract every flow module must meet: invertible, exact log-determinant, trainable, saveable."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from dicmor.flows import (
    ActNorm,
    AffineCoupling,
    CouplingOnlyStep,
    Flow,
    GlowStep,
    InvertibleConv1x1,
)

FACTORIES: dict[str, Callable[[int], nn.Module]] = {
    "actnorm": ActNorm,
    "invconv": InvertibleConv1x1,
    "coupling": lambda c: AffineCoupling(c, hidden=8),
    "glow-step": lambda c: GlowStep(c, hidden=8),
    "coupling-only-step": lambda c: CouplingOnlyStep(c, hidden=8),
    "flow-glow": lambda c: Flow(c, num_steps=3, step_type="glow", hidden=8),
    "flow-coupling-only": lambda c: Flow(c, num_steps=3, step_type="coupling-only", hidden=8),
}


@pytest.fixture(params=sorted(FACTORIES))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=[4, 5], ids=["C4", "C5"])
def channels(request: pytest.FixtureRequest) -> int:
    return request.param


def build(name: str, channels: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return FACTORIES[name](channels).double()


@pytest.fixture
def flow(name: str, channels: int) -> nn.Module:
    """A float64 flow past ActNorm initialisation, with every parameter moved off its init.

    The zero-initialised coupling output would otherwise make parts of the flow trivial (and cut
    the gradient to the conditioner's earlier layers).
    """
    module = build(name, channels, seed=0)
    module.train()
    module(3.0 * torch.randn(16, channels, 6, dtype=torch.float64) + 1.0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return module


def test_inverse_recovers_input(flow: nn.Module, channels: int) -> None:
    x = torch.randn(4, channels, 7, dtype=torch.float64)
    z, logdet = flow(x)
    assert z.shape == x.shape
    assert logdet.shape == (4,)
    torch.testing.assert_close(flow.inverse(z), x, rtol=0.0, atol=1e-6)
    torch.testing.assert_close(flow(flow.inverse(x))[0], x, rtol=0.0, atol=1e-6)


def test_logdet_matches_autograd_jacobian(flow: nn.Module, channels: int) -> None:
    length = 3
    x = torch.randn(1, channels, length, dtype=torch.float64)

    def flat_forward(v: torch.Tensor) -> torch.Tensor:
        return flow(v.reshape(1, channels, length))[0].reshape(-1)

    jac = jacobian(flat_forward, x.reshape(-1))  # (C*T, C*T)
    expected = torch.linalg.slogdet(jac).logabsdet
    _, logdet = flow(x)
    torch.testing.assert_close(logdet[0], expected, rtol=0.0, atol=1e-6)


def test_logdet_is_per_sample(flow: nn.Module, channels: int) -> None:
    x = torch.randn(3, channels, 5, dtype=torch.float64)
    _, logdet = flow(x)
    singles = torch.cat([flow(x[i : i + 1])[1] for i in range(3)])
    torch.testing.assert_close(logdet, singles, rtol=0.0, atol=1e-10)


def test_every_parameter_gets_a_gradient(flow: nn.Module, channels: int) -> None:
    z, logdet = flow(torch.randn(4, channels, 5, dtype=torch.float64))
    (0.5 * z.square().sum() - logdet.sum()).backward()
    for param_name, p in flow.named_parameters():
        assert p.grad is not None, param_name
        assert p.grad.abs().sum() > 0, param_name


def test_state_dict_roundtrip(flow: nn.Module, name: str, channels: int) -> None:
    buffer = io.BytesIO()
    torch.save(flow.state_dict(), buffer)
    buffer.seek(0)
    fresh = build(name, channels, seed=1)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    # Training mode with data of other statistics: a lost ActNorm flag would re-initialise here.
    flow.train()
    fresh.train()
    x = 5.0 * torch.randn(4, channels, 6, dtype=torch.float64) - 2.0
    z, logdet = flow(x)
    z_fresh, logdet_fresh = fresh(x)
    torch.testing.assert_close(z_fresh, z, rtol=0.0, atol=0.0)
    torch.testing.assert_close(logdet_fresh, logdet, rtol=0.0, atol=0.0)
    torch.testing.assert_close(fresh.inverse(x), flow.inverse(x), rtol=0.0, atol=0.0)


def test_train_and_eval_agree_after_initialisation(flow: nn.Module, channels: int) -> None:
    x = 2.0 * torch.randn(4, channels, 6, dtype=torch.float64) + 3.0
    flow.train()
    z_train, logdet_train = flow(x)
    flow.eval()
    z_eval, logdet_eval = flow(x)
    torch.testing.assert_close(z_eval, z_train, rtol=0.0, atol=0.0)
    torch.testing.assert_close(logdet_eval, logdet_train, rtol=0.0, atol=0.0)
