"""One padded pass for modalities missing from different samples: which passes, and that the
padded pass computes what one pass per set of samples computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.conftest import build_model_for, train_batch

import dicmor.models.recovery as recovery
from dicmor.models.recovery import recovery_passes


def _available(batch: int, missing: dict[int, list[int]]) -> torch.Tensor:
    available = torch.ones(batch, 3, dtype=torch.bool)
    for j, samples in missing.items():
        available[samples, j] = False
    return available


def test_modalities_missing_from_the_same_samples_share_one_gather() -> None:
    (only,) = recovery_passes(_available(4, {1: [0, 1, 2, 3], 2: [0, 1, 2, 3]}))
    assert only.targets == [1, 2]
    assert only.rows is None
    source = torch.arange(4.0)[:, None]
    assert only.inputs(source).shape == (2, 4, 1)


def test_modalities_missing_from_different_samples_run_in_one_padded_pass() -> None:
    (only,) = recovery_passes(_available(4, {0: [0], 2: [1, 2, 3]}))
    assert only.targets == [0, 2]
    assert only.rows.tolist() == [[0, 0, 0], [1, 2, 3]]  # text's one sample repeated
    source = torch.arange(4.0)[:, None] * 10
    inputs = only.inputs(source)  # (2, 3, 1)
    assert inputs[:, :, 0].tolist() == [[0, 0, 0], [10, 20, 30]]
    estimates = only.estimates(inputs + 1)
    assert estimates[0][0].tolist() == [0] and estimates[0][1][:, 0].tolist() == [1]
    assert estimates[2][0].tolist() == [1, 2, 3]
    assert estimates[2][1][:, 0].tolist() == [11, 21, 31]


def test_a_pass_that_would_compute_much_padding_stays_one_pass_per_set_of_samples() -> None:
    # 3 groups of 12 samples for 14 missing entries: 22 padded samples for 2 passes saved.
    available = _available(16, {0: [0], 1: list(range(1, 13)), 2: [13]})
    passes = recovery_passes(available)
    assert [(p.targets, p.rows) for p in passes] == [([0], None), ([1], None), ([2], None)]
    assert [p.indices[0].tolist() for p in passes] == [[0], list(range(1, 13)), [13]]
    assert len(recovery_passes(_available(4, {0: [0], 2: [1, 2, 3]}), padded=False)) == 2


@pytest.mark.parametrize("method", ["dicmor", "cross_regression"])
def test_the_padded_pass_computes_what_one_pass_per_set_of_samples_computes(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = build_model_for(method)
    networks = model.refiners if method == "dicmor" else model.regressors
    mask = np.ones((24, 3), dtype=bool)
    mask[[0, 3, 5], 0] = False  # text missing from three samples, vision from two others
    mask[[1, 3], 2] = False
    batch = train_batch(data, mask, np.ones((24, 3), dtype=bool))
    model.train()

    def run() -> tuple:
        calls = []
        hook = networks.register_forward_hook(lambda *_: calls.append(1))
        torch.manual_seed(0)
        output = model(batch)
        losses = model.loss(output, batch)
        model.zero_grad(set_to_none=True)
        losses["total"].backward()
        hook.remove()
        grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        return len(calls), {k: v.detach() for k, v in losses.items()}, grads, output

    padded_calls, padded_losses, padded_grads, padded_output = run()
    monkeypatch.setattr(recovery, "PADDED_PASS_MAX_EXTRA", -1)
    plain_calls, plain_losses, plain_grads, plain_output = run()
    assert (padded_calls, plain_calls) == (1, 2)
    for name, value in plain_losses.items():
        torch.testing.assert_close(padded_losses[name], value, rtol=1e-5, atol=1e-6)
    for m, (index, x) in plain_output["recovered"].items():
        assert torch.equal(padded_output["recovered"][m][0], index)
        torch.testing.assert_close(padded_output["recovered"][m][1], x, rtol=1e-5, atol=1e-6)
    for padded, plain in zip(padded_grads, plain_grads, strict=True):
        assert (padded is None) == (plain is None)
        if plain is not None:
            torch.testing.assert_close(padded, plain, rtol=1e-4, atol=1e-6)
