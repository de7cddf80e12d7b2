"""The affine maps a flow keeps between calls in eval mode without gradient: reused while the
parameters stay, rebuilt as soon as one changes (an optimiser step, fused or not, between the
modes; an in-place change in eval mode; a loaded state; another dtype)."""

from __future__ import annotations

import pytest
import torch

from dicmor.flows.glow import Flow


def _flow() -> Flow:
    torch.manual_seed(0)
    flow = Flow(6, 3, "glow", 8, groups=3)
    flow(torch.randn(3, 5, 6, 4))  # ActNorm's data-dependent initialisation
    # Coupling conditioners start at zero; give them weights so that every part matters.
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return flow.eval()


def _reference(flow: Flow, x: torch.Tensor, group) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and inverse with gradient on: built afresh, never cached."""
    with torch.enable_grad():
        z, logdet = flow(x, group=group)
        back = flow.inverse(x, group=group)
    return torch.cat([z.flatten(), logdet.flatten()]).detach(), back.detach()


def _cached(flow: Flow, x: torch.Tensor, group) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        z, logdet = flow(x, group=group)
        back = flow.inverse(x, group=group)
    return torch.cat([z.flatten(), logdet.flatten()]), back


def test_maps_kept_without_gradient_give_the_fresh_result_and_are_reused() -> None:
    flow = _flow()
    x = torch.randn(2, 4, 6, 5)
    for group in ([1, 2], [0, 2]):
        expected = _reference(flow, x, group)
        first = _cached(flow, x, group)
        again = _cached(flow, x, group)
        for a, b, c in zip(expected, first, again, strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=0)
            torch.testing.assert_close(c, a, rtol=0, atol=0)
    assert len(flow._affine_cache) == 4  # two selections, two directions
    # Reused: the cached objects are returned as they are.
    key = (True, (1, 2))
    kept = flow._affine_cache[key][1]
    _cached(flow, x, [1, 2])
    assert flow._affine_cache[key][1] is kept


@pytest.mark.parametrize("fused", [False, True])
def test_an_optimiser_step_rebuilds_the_maps(fused: bool) -> None:
    # The fused Adam kernel updates parameters without bumping their version counters.
    flow = _flow()
    x = torch.randn(2, 4, 6, 5)
    before = _cached(flow, x, [1, 2])
    optimizer = torch.optim.Adam(flow.parameters(), lr=0.1, fused=fused)
    flow.train()
    z, logdet = flow(x, group=[1, 2])
    (z.square().mean() - logdet.mean()).backward()
    optimizer.step()
    flow.eval()
    after = _cached(flow, x, [1, 2])
    expected = _reference(flow, x, [1, 2])
    for a, b, c in zip(before, after, expected, strict=True):
        assert not torch.allclose(a, b)
        torch.testing.assert_close(b, c, rtol=0, atol=0)


def test_a_loaded_state_and_another_dtype_rebuild_the_maps() -> None:
    flow, other = _flow(), _flow()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
    x = torch.randn(2, 4, 6, 5)
    _cached(flow, x, [0, 1])
    flow.load_state_dict(other.state_dict())
    for a, b in zip(_cached(flow, x, [0, 1]), _reference(other, x, [0, 1]), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    flow.double()
    x = x.double()
    for a, b in zip(_cached(flow, x, [0, 1]), _reference(flow, x, [0, 1]), strict=True):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_an_in_place_change_in_eval_mode_rebuilds_the_maps() -> None:
    flow = _flow()
    x = torch.randn(2, 4, 6, 5)
    before = _cached(flow, x, [0, 1])
    with torch.no_grad():
        flow.steps[1].invconv.lower.add_(0.05)
        flow.steps[2].actnorm.bias.sub_(0.1)
    after = _cached(flow, x, [0, 1])
    for a, b, c in zip(before, after, _reference(flow, x, [0, 1]), strict=True):
        assert not torch.allclose(a, b)
        torch.testing.assert_close(b, c, rtol=0, atol=0)


def test_nothing_is_kept_in_training_mode() -> None:
    flow = _flow().train()
    with torch.no_grad():
        flow.inverse(torch.randn(2, 4, 6, 5), group=[1, 2])
    assert not flow._affine_cache
