"""The inference path of a flow (eval mode without gradient): the step tensors it keeps between
calls are reused while the parameters stay and rebuilt as soon as one changes (an optimiser step,
fused or not, between the modes; an in-place change in eval mode; a loaded state; another
dtype); it computes the training path's function to rounding (`INFERENCE_RTOL`)."""

from __future__ import annotations

import pytest
import torch

from dicmor.flows.glow import INFERENCE_ATOL, INFERENCE_RTOL, Flow


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
            torch.testing.assert_close(b, a, rtol=INFERENCE_RTOL, atol=INFERENCE_ATOL)
            torch.testing.assert_close(c, a, rtol=INFERENCE_RTOL, atol=INFERENCE_ATOL)
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
        torch.testing.assert_close(b, c, rtol=INFERENCE_RTOL, atol=INFERENCE_ATOL)


def test_a_loaded_state_and_another_dtype_rebuild_the_maps() -> None:
    flow, other = _flow(), _flow()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
    x = torch.randn(2, 4, 6, 5)
    _cached(flow, x, [0, 1])
    flow.load_state_dict(other.state_dict())
    for a, b in zip(_cached(flow, x, [0, 1]), _reference(other, x, [0, 1]), strict=True):
        torch.testing.assert_close(a, b, rtol=INFERENCE_RTOL, atol=INFERENCE_ATOL)
    flow.double()
    x = x.double()
    for a, b in zip(_cached(flow, x, [0, 1]), _reference(flow, x, [0, 1]), strict=True):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=INFERENCE_RTOL, atol=INFERENCE_ATOL)


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
        torch.testing.assert_close(b, c, rtol=INFERENCE_RTOL, atol=INFERENCE_ATOL)


def test_nothing_is_kept_in_training_mode() -> None:
    flow = _flow().train()
    with torch.no_grad():
        flow.inverse(torch.randn(2, 4, 6, 5), group=[1, 2])
    assert not flow._affine_cache


@pytest.mark.parametrize("channels", [5, 32])
def test_the_inference_path_is_the_training_function_and_leaves_its_input(channels: int) -> None:
    # At the published depth, with conditioners far from their zero start.
    torch.manual_seed(1)
    flow = Flow(channels, 32, "glow", 64, groups=3)
    flow(torch.randn(3, 6, channels, 9))
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.02 * torch.randn_like(p))
    flow.eval()
    x = torch.randn(2, 3, channels, 9)
    keep = x.clone()
    for group in ([0, 1], [1, 2]):
        expected = _reference(flow, x, group)
        got = _cached(flow, x, group)
        assert torch.equal(x, keep)  # the couplings update copies in place, not the input
        for a, b in zip(expected, got, strict=True):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(b, a, rtol=INFERENCE_RTOL, atol=INFERENCE_ATOL)
    # The inverse of the inference path undoes its forward.
    with torch.no_grad():
        z, _ = flow(x, group=[0, 1])
        torch.testing.assert_close(flow.inverse(z, group=[0, 1]), x, rtol=0.0, atol=1e-4)
