"""Behaviour specific to each flow layer: initialisation, groups, parity mode, input validation."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from dicmor.flows import ActNorm, AffineCoupling, Flow, GlowStep, InvertibleConv1x1


def test_actnorm_first_training_batch_is_standardised_per_group() -> None:
    torch.manual_seed(0)
    layer = ActNorm(4, groups=2)
    shift = torch.tensor([[1.0, -2.0, 0.5, 4.0], [-3.0, 0.0, 2.0, 1.0]])  # (G, C)
    scale = torch.tensor([[3.0], [0.5]])  # (G, 1)
    x = scale[:, None] * torch.randn(2, 160, 4) + shift[:, None]
    z, logdet = layer(x)
    torch.testing.assert_close(z.mean(dim=1), torch.zeros(2, 4), rtol=0.0, atol=1e-5)
    torch.testing.assert_close(z.std(dim=1, correction=0), torch.ones(2, 4), rtol=0.0, atol=1e-4)
    assert layer.initialized.tolist() == [True, True]
    expected_logdet = -x.std(dim=1, correction=0).log().sum(dim=1)  # (G,)
    torch.testing.assert_close(logdet, expected_logdet[:, None].expand(2, 160))


def test_actnorm_initialisation_uses_only_unmasked_points() -> None:
    torch.manual_seed(0)
    layer = ActNorm(3, groups=3)
    x = torch.randn(3, 10, 3)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[0, 6:] = False
    mask[2] = False
    x[0, 6:] = 100.0  # masked points: they must not move the statistics
    layer(x, mask=mask)
    assert layer.initialized.tolist() == [True, True, False]
    var, mean = torch.var_mean(x[0, :6], dim=0, correction=0)
    torch.testing.assert_close(layer.bias[0], -mean)
    torch.testing.assert_close(layer.log_scale[0], -torch.log(var.sqrt() + layer.eps))
    # A group without any unmasked point stays the identity until data arrives for it.
    torch.testing.assert_close(layer.log_scale[2], torch.zeros(3), rtol=0.0, atol=0.0)
    layer(x)
    assert layer.initialized.tolist() == [True, True, True]


def test_actnorm_initialises_a_selected_group_only() -> None:
    torch.manual_seed(0)
    layer = ActNorm(3, groups=2)
    layer(2.0 * torch.randn(1, 8, 3) + 1.0, group=1)
    assert layer.initialized.tolist() == [False, True]
    assert layer.log_scale[1].abs().sum() > 0 and not layer.log_scale[0].any()


def test_actnorm_initialises_only_once() -> None:
    torch.manual_seed(0)
    layer = ActNorm(3)
    layer(torch.randn(1, 40, 3) * 2.0)
    bias, log_scale = layer.bias.detach().clone(), layer.log_scale.detach().clone()
    layer(torch.randn(1, 40, 3) * 7.0 + 1.0)
    torch.testing.assert_close(layer.bias, bias, rtol=0.0, atol=0.0)
    torch.testing.assert_close(layer.log_scale, log_scale, rtol=0.0, atol=0.0)


def test_actnorm_is_identity_until_initialised_in_training_mode() -> None:
    torch.manual_seed(0)
    layer = ActNorm(3).eval()
    x = torch.randn(1, 10, 3) * 4.0 + 1.0
    z, logdet = layer(x)
    torch.testing.assert_close(z, x, rtol=0.0, atol=0.0)
    torch.testing.assert_close(logdet, torch.zeros(1, 10), rtol=0.0, atol=0.0)
    torch.testing.assert_close(layer.inverse(x), x, rtol=0.0, atol=0.0)
    assert not bool(layer.initialized.any())


def test_actnorm_flags_survive_loading_into_a_nested_flow() -> None:
    torch.manual_seed(0)
    flow = Flow(4, num_steps=2, hidden=8, groups=2)
    flow(torch.randn(2, 8, 4, 5))
    buffer = io.BytesIO()
    torch.save(flow.state_dict(), buffer)
    buffer.seek(0)
    fresh = Flow(4, num_steps=2, hidden=8, groups=2)
    assert "steps.0.actnorm.initialized" in flow.state_dict()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh(5.0 * torch.randn(2, 8, 4, 5) + 3.0)
    for step, loaded in zip(flow.steps, fresh.steps, strict=True):
        assert loaded.actnorm.initialized.all()
        torch.testing.assert_close(loaded.actnorm.bias, step.actnorm.bias, rtol=0.0, atol=0.0)
        torch.testing.assert_close(
            loaded.actnorm.log_scale, step.actnorm.log_scale, rtol=0.0, atol=0.0
        )


def test_invconv_starts_orthogonal_and_volume_preserving_in_every_group() -> None:
    torch.manual_seed(0)
    layer = InvertibleConv1x1(6, groups=3)
    weight = layer.weight()
    assert weight.shape == (3, 6, 6)
    torch.testing.assert_close(
        weight @ weight.transpose(1, 2), torch.eye(6).expand(3, 6, 6), rtol=0.0, atol=1e-5
    )
    assert not torch.allclose(weight[0], weight[1])
    _, logdet = layer(torch.randn(3, 4, 6))
    torch.testing.assert_close(logdet, torch.zeros(3, 4), rtol=0.0, atol=1e-5)


def test_invconv_initialisation_follows_the_global_seed() -> None:
    torch.manual_seed(5)
    first = InvertibleConv1x1(4).weight()
    torch.manual_seed(5)
    second = InvertibleConv1x1(4).weight()
    torch.manual_seed(6)
    third = InvertibleConv1x1(4).weight()
    torch.testing.assert_close(first, second, rtol=0.0, atol=0.0)
    assert not torch.allclose(first, third)


def test_invconv_mixes_channels_per_point() -> None:
    torch.manual_seed(0)
    layer = InvertibleConv1x1(3, groups=2)
    x = torch.randn(2, 4, 3)
    z, _ = layer(x)
    expected = torch.einsum("gij,gnj->gni", layer.weight(), x)
    torch.testing.assert_close(z, expected)


@pytest.mark.parametrize("channels", [4, 5])
def test_coupling_starts_as_a_fixed_scaling_of_the_second_half(channels: int) -> None:
    torch.manual_seed(0)
    layer = AffineCoupling(channels, hidden=8, groups=2)
    x = torch.randn(2, 6, channels)
    z, logdet = layer(x)
    half = channels // 2
    torch.testing.assert_close(z[..., :half], x[..., :half], rtol=0.0, atol=0.0)
    torch.testing.assert_close(z[..., half:], x[..., half:] * torch.sigmoid(torch.tensor(2.0)))
    expected = (channels - half) * F.logsigmoid(torch.tensor(2.0))
    torch.testing.assert_close(logdet, expected.expand(2, 6))


def test_coupling_inverse_is_finite_for_tiny_scales() -> None:
    torch.manual_seed(0)
    layer = AffineCoupling(2, hidden=4).double()
    with torch.no_grad():
        layer.net[-1].bias.copy_(torch.tensor([[-60.0, 0.0]], dtype=torch.float64))
    x = torch.randn(1, 12, 2, dtype=torch.float64)
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


def test_single_group_flow_takes_sequences_with_or_without_the_group_axis() -> None:
    flow = perturbed_flow("glow")
    x = torch.randn(3, 4, 5)
    z, logdet = flow(x)
    z4, logdet4 = flow(x[None])
    assert z.shape == (3, 4, 5) and logdet.shape == (3,)
    torch.testing.assert_close(z4, z[None], rtol=0.0, atol=0.0)
    torch.testing.assert_close(logdet4, logdet[None], rtol=0.0, atol=0.0)
    torch.testing.assert_close(flow.inverse(z), flow.inverse(z[None])[0], rtol=0.0, atol=0.0)


@pytest.mark.parametrize("step_type", ["glow", "coupling-only"])
def test_grouped_flow_equals_independent_flows_with_the_same_parameters(step_type: str) -> None:
    torch.manual_seed(0)
    grouped = Flow(4, num_steps=3, step_type=step_type, hidden=8, groups=3).double()
    with torch.no_grad():
        for p in grouped.parameters():
            p.add_(0.2 * torch.randn_like(p))
    state = grouped.state_dict()
    singles = []
    for g in range(3):
        single = Flow(4, num_steps=3, step_type=step_type, hidden=8).double()
        single.load_state_dict({key: value[g : g + 1] for key, value in state.items()})
        singles.append(single)
    x = 2.0 * torch.randn(3, 5, 4, 6, dtype=torch.float64) + 1.0
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, :2] = False
    # The first training call initialises ActNorm from each group's own (unmasked) samples.
    z, logdet = grouped(x, mask=mask)
    for g, single in enumerate(singles):
        keep = mask[g].nonzero().squeeze(1)
        single(x[g].index_select(0, keep))
        z_g, logdet_g = single(x[g])
        torch.testing.assert_close(z[g], z_g, rtol=0.0, atol=1e-12)
        torch.testing.assert_close(logdet[g], logdet_g, rtol=0.0, atol=1e-12)
        torch.testing.assert_close(
            grouped.inverse(x)[g], single.inverse(x[g]), rtol=0.0, atol=1e-12
        )


@pytest.mark.parametrize(
    "factory",
    [ActNorm, InvertibleConv1x1, AffineCoupling],
    ids=["actnorm", "invconv", "coupling"],
)
def test_layers_reject_wrong_shapes_and_groups(factory: Callable[..., torch.nn.Module]) -> None:
    module = factory(4, groups=2)
    with pytest.raises(
        ValueError, match=r"expected a tensor of shape \(2, N, 4\), got \(2, 5, 3\)"
    ):
        module(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match=r"expected a tensor of shape \(1, N, 4\)"):
        module(torch.randn(2, 5, 4), group=1)
    with pytest.raises(ValueError, match=r"group must be in \[0, 2\), got 2"):
        module(torch.randn(1, 5, 4), group=2)
    with pytest.raises(ValueError, match="expected a tensor of shape"):
        module.inverse(torch.randn(2, 4))


def test_flow_rejects_wrong_shapes() -> None:
    single, grouped = Flow(4, num_steps=1), Flow(4, num_steps=1, groups=2)
    with pytest.raises(ValueError, match=r"Flow: expected a tensor of shape \(B, 4, T\), got"):
        single(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"Flow: expected a tensor of shape \(2, B, 4, T\), got"):
        grouped(torch.randn(3, 2, 4, 5))
    with pytest.raises(ValueError, match=r"Flow: expected a tensor of shape \(2, B, 4, T\), got"):
        grouped.inverse(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match=r"group must be in \[0, 2\)"):
        grouped(torch.randn(2, 4, 5), group=-1)
    with pytest.raises(ValueError, match=r"Flow: expected a tensor of shape \(2, B, 4, T\)"):
        grouped(torch.randn(1, 3, 4, 5), group=[1, 0])
    with pytest.raises(ValueError, match=r"group must be in \[0, 2\)"):
        grouped(torch.randn(2, 3, 4, 5), group=[0, 2])
    with pytest.raises(ValueError, match=r"Flow: mask must have shape \(2, 3\)"):
        grouped(torch.randn(2, 3, 4, 5), mask=torch.ones(3, 2, dtype=torch.bool))


def test_flow_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="Flow: step_type must be one of"):
        Flow(4, step_type="real-nvp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Flow: num_steps must be >= 1"):
        Flow(4, num_steps=0)
    with pytest.raises(ValueError, match="Flow: groups must be >= 1"):
        Flow(4, groups=0)
    with pytest.raises(ValueError, match="AffineCoupling: channels must be >= 2"):
        Flow(1, num_steps=1)


@pytest.mark.parametrize("step_type", ["glow", "coupling-only"])
def test_flow_is_its_steps_in_sequence_summed_over_time(step_type: str) -> None:
    torch.manual_seed(0)
    flow = Flow(4, num_steps=3, step_type=step_type, hidden=8, groups=2).double()
    flow(torch.randn(2, 6, 4, 5, dtype=torch.float64))  # ActNorm initialisation
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    z, logdet = flow(x)
    points = x.transpose(2, 3).reshape(2, 15, 4)  # (G, B·T, C)
    total = torch.zeros(2, 15, dtype=torch.float64)
    for step in flow.steps:
        points, step_logdet = step(points)
        total = total + step_logdet
    torch.testing.assert_close(z, points.view(2, 3, 5, 4).transpose(2, 3))
    torch.testing.assert_close(logdet, total.view(2, 3, 5).sum(dim=2))
    for step in reversed(flow.steps):
        points = step.inverse(points)
    torch.testing.assert_close(flow.inverse(z), points.view(2, 3, 5, 4).transpose(2, 3))


def test_glow_step_is_actnorm_then_invconv_then_coupling() -> None:
    torch.manual_seed(0)
    step = GlowStep(4, hidden=8, groups=2)
    step(torch.randn(2, 10, 4))
    with torch.no_grad():
        for p in step.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(2, 7, 4)
    h, logdet_norm = step.actnorm(x)
    h, logdet_conv = step.invconv(h)
    expected, logdet_coupling = step.coupling(h)
    z, logdet = step(x)
    torch.testing.assert_close(z, expected)
    torch.testing.assert_close(logdet, logdet_norm + logdet_conv + logdet_coupling)


def test_initialising_pass_equals_the_later_passes() -> None:
    torch.manual_seed(0)
    flow = Flow(4, num_steps=3, hidden=8, groups=2).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = 3.0 * torch.randn(2, 6, 4, 5, dtype=torch.float64) - 1.0
    z_first, logdet_first = flow(x)  # initialises ActNorm step by step
    z, logdet = flow(x)
    # Bit for bit: a model's first training step computes like every later one.
    assert torch.equal(z, z_first) and torch.equal(logdet, logdet_first)
    # The initialisation standardised the input of each step's ActNorm, so the first is N(0, 1).
    first = flow.steps[0].actnorm(x.transpose(2, 3).reshape(2, 30, 4))[0]
    torch.testing.assert_close(first.mean(dim=1), torch.zeros(2, 4, dtype=torch.float64))


def test_groups_without_data_do_not_rerun_the_initialisation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    flow = Flow(4, num_steps=2, hidden=8, groups=2)
    mask = torch.tensor([[True, True, True], [False, False, False]])
    flow(torch.randn(2, 3, 4, 5), mask=mask)
    assert [step.actnorm.initialized.tolist() for step in flow.steps] == [[True, False]] * 2

    def step_by_step(*args: object) -> None:
        raise AssertionError("the initialising pass ran again")

    for step in flow.steps:
        monkeypatch.setattr(step, "forward", step_by_step)
    flow(torch.randn(2, 3, 4, 5), mask=mask)  # group 1 still has nothing to learn from
