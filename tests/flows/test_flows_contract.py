"""Contract every flow module must meet, with one group and with several: invertible, exact
log-determinant, independent groups, trainable, saveable."""

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

# Layers and steps act on points (G, N, C); flows on sequences (G, B, C, T).
FACTORIES: dict[str, Callable[[int, int], nn.Module]] = {
    "actnorm": lambda c, g: ActNorm(c, groups=g),
    "invconv": lambda c, g: InvertibleConv1x1(c, groups=g),
    "coupling": lambda c, g: AffineCoupling(c, hidden=8, groups=g),
    "glow-step": lambda c, g: GlowStep(c, hidden=8, groups=g),
    "coupling-only-step": lambda c, g: CouplingOnlyStep(c, hidden=8, groups=g),
    "flow-glow": lambda c, g: Flow(c, num_steps=3, step_type="glow", hidden=8, groups=g),
    "flow-coupling-only": lambda c, g: Flow(
        c, num_steps=3, step_type="coupling-only", hidden=8, groups=g
    ),
}
LENGTH = 3


@pytest.fixture(params=sorted(FACTORIES))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=[4, 5], ids=["C4", "C5"])
def channels(request: pytest.FixtureRequest) -> int:
    return request.param


@pytest.fixture(params=[1, 3], ids=["G1", "G3"])
def groups(request: pytest.FixtureRequest) -> int:
    return request.param


def is_sequence_flow(name: str) -> bool:
    return name.startswith("flow-")


def inputs(name: str, groups: int, channels: int, batch: int) -> torch.Tensor:
    """Random float64 input of ``batch`` samples per group: points or sequences."""
    shape = (
        (groups, batch, channels, LENGTH) if is_sequence_flow(name) else (groups, batch, channels)
    )
    return torch.randn(*shape, dtype=torch.float64)


def build(name: str, channels: int, groups: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return FACTORIES[name](channels, groups).double()


@pytest.fixture
def flow(name: str, channels: int, groups: int) -> nn.Module:
    """A float64 flow past ActNorm initialisation, with every parameter moved off its init.

    The zero-initialised coupling output would otherwise make parts of the flow trivial (and cut
    the gradient to the conditioner's earlier layers).
    """
    module = build(name, channels, groups, seed=0)
    module.train()
    module(3.0 * inputs(name, groups, channels, 16) + 1.0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return module


def test_inverse_recovers_input(flow: nn.Module, name: str, groups: int, channels: int) -> None:
    x = inputs(name, groups, channels, 4)
    z, logdet = flow(x)
    assert z.shape == x.shape
    assert logdet.shape == (groups, 4)
    torch.testing.assert_close(flow.inverse(z), x, rtol=0.0, atol=1e-6)
    torch.testing.assert_close(flow(flow.inverse(x))[0], x, rtol=0.0, atol=1e-6)


def test_logdet_matches_autograd_jacobian_per_group(
    flow: nn.Module, name: str, groups: int, channels: int
) -> None:
    x = inputs(name, groups, channels, 1)
    size = x[0].numel()

    def flat_forward(v: torch.Tensor) -> torch.Tensor:
        return flow(v.reshape(x.shape))[0].reshape(-1)

    jac = jacobian(flat_forward, x.reshape(-1))  # (G·size, G·size)
    _, logdet = flow(x)
    for g in range(groups):
        rows = slice(g * size, (g + 1) * size)
        expected = torch.linalg.slogdet(jac[rows, rows]).logabsdet
        torch.testing.assert_close(logdet[g, 0], expected, rtol=0.0, atol=1e-6)
        # Groups are independent flows: no output of one group depends on another's input.
        outside = torch.cat([jac[rows, : rows.start], jac[rows, rows.stop :]], dim=1)
        assert not outside.any()


def test_logdet_is_per_sample(flow: nn.Module, name: str, groups: int, channels: int) -> None:
    x = inputs(name, groups, channels, 3)
    _, logdet = flow(x)
    singles = torch.cat([flow(x[:, i : i + 1])[1] for i in range(3)], dim=1)
    torch.testing.assert_close(logdet, singles, rtol=0.0, atol=1e-10)


def test_one_group_runs_alone(flow: nn.Module, name: str, groups: int, channels: int) -> None:
    x = inputs(name, groups, channels, 4)
    z, logdet = flow(x)
    for g in range(groups):
        alone = x[g] if is_sequence_flow(name) else x[g : g + 1]
        z_g, logdet_g = flow(alone, group=g)
        torch.testing.assert_close(z_g.reshape(z[g].shape), z[g], rtol=0.0, atol=1e-12)
        torch.testing.assert_close(logdet_g.reshape(-1), logdet[g], rtol=0.0, atol=1e-12)
        torch.testing.assert_close(
            flow.inverse(alone, group=g).reshape(z[g].shape),
            flow.inverse(x)[g],
            rtol=0.0,
            atol=1e-12,
        )


def test_every_parameter_gets_a_gradient(
    flow: nn.Module, name: str, groups: int, channels: int
) -> None:
    z, logdet = flow(inputs(name, groups, channels, 4))
    (0.5 * z.square().sum() - logdet.sum()).backward()
    for param_name, p in flow.named_parameters():
        assert p.grad is not None, param_name
        # Every group of every parameter learns.
        assert (p.grad.reshape(groups, -1).abs().sum(dim=1) > 0).all(), param_name


def test_state_dict_roundtrip(flow: nn.Module, name: str, groups: int, channels: int) -> None:
    buffer = io.BytesIO()
    torch.save(flow.state_dict(), buffer)
    buffer.seek(0)
    fresh = build(name, channels, groups, seed=1)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    # Training mode with data of other statistics: a lost ActNorm flag would re-initialise here.
    flow.train()
    fresh.train()
    x = 5.0 * inputs(name, groups, channels, 4) - 2.0
    z, logdet = flow(x)
    z_fresh, logdet_fresh = fresh(x)
    torch.testing.assert_close(z_fresh, z, rtol=0.0, atol=0.0)
    torch.testing.assert_close(logdet_fresh, logdet, rtol=0.0, atol=0.0)
    torch.testing.assert_close(fresh.inverse(x), flow.inverse(x), rtol=0.0, atol=0.0)


def test_train_and_eval_agree_after_initialisation(
    flow: nn.Module, name: str, groups: int, channels: int
) -> None:
    x = 2.0 * inputs(name, groups, channels, 4) + 3.0
    flow.train()
    z_train, logdet_train = flow(x)
    flow.eval()
    z_eval, logdet_eval = flow(x)
    torch.testing.assert_close(z_eval, z_train, rtol=0.0, atol=0.0)
    torch.testing.assert_close(logdet_eval, logdet_train, rtol=0.0, atol=0.0)


def test_listed_groups_run_together(flow: nn.Module, name: str, groups: int, channels: int) -> None:
    x = inputs(name, groups, channels, 4)
    z, logdet = flow(x)
    chosen = [groups - 1, 0]
    z_some, logdet_some = flow(x[chosen], group=chosen)
    torch.testing.assert_close(z_some, z[chosen], rtol=0.0, atol=1e-12)
    torch.testing.assert_close(logdet_some, logdet[chosen], rtol=0.0, atol=1e-12)
    torch.testing.assert_close(
        flow.inverse(x[chosen], group=chosen), flow.inverse(x)[chosen], rtol=0.0, atol=1e-12
    )
