"""Behaviour specific to each flow layer: initialisation, parity mode, input validation."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from dicmor.flows import ActNorm, AffineCoupling, Flow, InvertibleConv1x1


def test_actnorm_first_training_batch_is_standardised() -> None:
    torch.manual_seed(0)
    layer = ActNorm(4)
    x = 3.0 * torch.randn(16, 4, 10) + torch.tensor([1.0, -2.0, 0.5, 4.0])[:, None]
    z, logdet = layer(x)
    torch.testing.assert_close(z.mean(dim=(0, 2)), torch.zeros(4), rtol=0.0, atol=1e-5)
    torch.testing.assert_close(z.std(dim=(0, 2), correction=0), torch.ones(4), rtol=0.0, atol=1e-4)
    assert bool(layer.initialized)
    expected_logdet = -10 * x.std(dim=(0, 2), correction=0).log().sum()
    torch.testing.assert_close(logdet, expected_logdet.expand(16), rtol=1e-5, atol=1e-5)


def test_actnorm_initialises_only_once() -> None:
    torch.manual_seed(0)
    layer = ActNorm(3)
    layer(torch.randn(8, 3, 5) * 2.0)
    bias, log_scale = layer.bias.detach().clone(), layer.log_scale.detach().clone()
    layer(torch.randn(8, 3, 5) * 7.0 + 1.0)
    torch.testing.assert_close(layer.bias, bias, rtol=0.0, atol=0.0)
    torch.testing.assert_close(layer.log_scale, log_scale, rtol=0.0, atol=0.0)


def test_actnorm_is_identity_until_initialised_in_training_mode() -> None:
    torch.manual_seed(0)
    layer = ActNorm(3).eval()
    x = torch.randn(2, 3, 5) * 4.0 + 1.0
    z, logdet = layer(x)
    torch.testing.assert_close(z, x, rtol=0.0, atol=0.0)
    torch.testing.assert_close(logdet, torch.zeros(2), rtol=0.0, atol=0.0)
    torch.testing.assert_close(layer.inverse(x), x, rtol=0.0, atol=0.0)
    assert not bool(layer.initialized)


def test_actnorm_flag_survives_loading_into_a_nested_flow() -> None:
    torch.manual_seed(0)
    flow = Flow(4, num_steps=2, hidden=8)
    flow(torch.randn(8, 4, 5))
    buffer = io.BytesIO()
    torch.save(flow.state_dict(), buffer)
    buffer.seek(0)
    fresh = Flow(4, num_steps=2, hidden=8)
    assert "steps.0.actnorm.initialized" in flow.state_dict()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh(5.0 * torch.randn(8, 4, 5) + 3.0)
    for step, loaded in zip(flow.steps, fresh.steps, strict=True):
        assert bool(loaded.actnorm.initialized)
        torch.testing.assert_close(loaded.actnorm.bias, step.actnorm.bias, rtol=0.0, atol=0.0)
        torch.testing.assert_close(
            loaded.actnorm.log_scale, step.actnorm.log_scale, rtol=0.0, atol=0.0
        )


def test_invconv_starts_orthogonal_and_volume_preserving() -> None:
    torch.manual_seed(0)
    layer = InvertibleConv1x1(6)
    weight = layer.weight()
    torch.testing.assert_close(weight @ weight.T, torch.eye(6), rtol=0.0, atol=1e-5)
    _, logdet = layer(torch.randn(3, 6, 4))
    torch.testing.assert_close(logdet, torch.zeros(3), rtol=0.0, atol=1e-5)


def test_invconv_initialisation_follows_the_global_seed() -> None:
    torch.manual_seed(5)
    first = InvertibleConv1x1(4).weight()
    torch.manual_seed(5)
    second = InvertibleConv1x1(4).weight()
    torch.manual_seed(6)
    third = InvertibleConv1x1(4).weight()
    torch.testing.assert_close(first, second, rtol=0.0, atol=0.0)
    assert not torch.allclose(first, third)


def test_invconv_mixes_channels_per_time_step() -> None:
    torch.manual_seed(0)
    layer = InvertibleConv1x1(3)
    x = torch.randn(2, 3, 4)
    z, _ = layer(x)
    expected = torch.einsum("ij,bjt->bit", layer.weight(), x)
    torch.testing.assert_close(z, expected)


@pytest.mark.parametrize("channels", [4, 5])
def test_coupling_starts_as_a_fixed_scaling_of_the_second_half(channels: int) -> None:
    torch.manual_seed(0)
    layer = AffineCoupling(channels, hidden=8)
    x = torch.randn(2, channels, 6)
    z, logdet = layer(x)
    half = channels // 2
    torch.testing.assert_close(z[:, :half], x[:, :half], rtol=0.0, atol=0.0)
    torch.testing.assert_close(z[:, half:], x[:, half:] * torch.sigmoid(torch.tensor(2.0)))
    expected = 6 * (channels - half) * F.logsigmoid(torch.tensor(2.0))
    torch.testing.assert_close(logdet, expected.expand(2))


def test_coupling_inverse_is_finite_for_tiny_scales() -> None:
    torch.manual_seed(0)
    layer = AffineCoupling(2, hidden=4).double()
    with torch.no_grad():
        layer.net[-1].bias.copy_(torch.tensor([-60.0, 0.0], dtype=torch.float64))
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    z, logdet = layer(x)
    assert torch.isfinite(logdet).all()
    torch.testing.assert_close(layer.inverse(z), x, rtol=1e-6, atol=1e-6)


def perturbed_flow(step_type: str) -> Flow:
    torch.manual_seed(0)
    flow = Flow(4, num_steps=4, step_type=step_type, hidden=8)
    flow(torch.randn(8, 4, 5))
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return flow


def test_coupling_only_flow_leaves_the_first_half_unchanged() -> None:
    flow = perturbed_flow("coupling-only")
    x = torch.randn(3, 4, 5)
    z, _ = flow(x)
    torch.testing.assert_close(z[:, :2], x[:, :2], rtol=0.0, atol=0.0)
    assert (z[:, 2:] - x[:, 2:]).abs().min() > 0


def test_glow_flow_changes_every_channel() -> None:
    flow = perturbed_flow("glow")
    x = torch.randn(3, 4, 5)
    z, _ = flow(x)
    assert ((z - x).abs().amax(dim=(0, 2)) > 1e-3).all()


@pytest.mark.parametrize(
    "factory",
    [ActNorm, InvertibleConv1x1, AffineCoupling, lambda c: Flow(c, num_steps=1)],
    ids=["actnorm", "invconv", "coupling", "flow"],
)
def test_wrong_channel_count_is_rejected(factory: Callable[[int], torch.nn.Module]) -> None:
    module = factory(4)
    with pytest.raises(
        ValueError, match=r"expected a tensor of shape \(B, 4, T\), got \(2, 3, 5\)"
    ):
        module(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="expected a tensor of shape"):
        module.inverse(torch.randn(2, 4))


def test_flow_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="Flow: step_type must be one of"):
        Flow(4, step_type="real-nvp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Flow: num_steps must be >= 1"):
        Flow(4, num_steps=0)
    with pytest.raises(ValueError, match="AffineCoupling: channels must be >= 2"):
        Flow(1, num_steps=1)


def test_flow_logdet_is_the_sum_over_steps() -> None:
    torch.manual_seed(0)
    flow = Flow(4, num_steps=3, hidden=8)
    x = torch.randn(2, 4, 5)
    z, logdet = flow(x)
    total = torch.zeros(2)
    h = x
    for step in flow.steps:
        h, step_logdet = step(h)
        total = total + step_logdet
    torch.testing.assert_close(z, h)
    torch.testing.assert_close(logdet, total)
