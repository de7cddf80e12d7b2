"""Deterministic cross-modal regression: what it recovers, from what, and what its loss covers."""

from __future__ import annotations

import numpy as np
import torch
from tests.conftest import build_model_for, train_batch


def build(**overrides: object):
    return build_model_for("cross_regression", **overrides)


def test_regresses_each_missing_entry_from_the_mean_of_the_available_ones() -> None:
    model, data = build()
    model.eval()
    mask = np.ones((24, 3), dtype=bool)
    mask[[0, 3], 0] = False
    mask[[1, 3], 2] = False
    batch = train_batch(data, mask, np.ones((24, 3), dtype=bool))
    with torch.no_grad():
        output = model(batch)
        features = model.extractors(batch)
        recovered = {m: index.tolist() for m, (index, _) in output["recovered"].items()}
        assert recovered == {"text": [0, 3], "vision": [1, 3]}
        # Sample 0 keeps audio and vision, sample 3 audio only.
        source = torch.stack(
            [(features["audio"][0] + features["vision"][0]) / 2, features["audio"][3]]
        )
        expected = model.regressors(source, group=0)  # text is modality 0
    torch.testing.assert_close(output["recovered"]["text"][1], expected)
    torch.testing.assert_close(output["features"]["text"][[0, 3]], expected)
    assert torch.equal(output["features"]["audio"], features["audio"])
    assert torch.equal(output["features"]["text"][[1, 2]], features["text"][[1, 2]])


def test_nothing_is_recovered_when_nothing_is_missing() -> None:
    model, data = build()
    model.eval()
    output = model(train_batch(data, np.ones((24, 3), dtype=bool), np.ones((24, 3), dtype=bool)))
    assert output["recovered"] == {}


def test_reconstruction_covers_only_entries_with_real_features() -> None:
    model, data = build()
    model.train()
    mask = np.ones((24, 3), dtype=bool)
    mask[0, 0] = False
    present = np.ones((24, 3), dtype=bool)
    present[0, 0] = False
    batch = train_batch(data, mask, present)
    output = model(batch)
    assert model.loss(output, batch)["reconstruction"].item() == 0.0
    present[0, 0] = True
    batch = train_batch(data, mask, present)
    losses = model.loss(output, batch)
    index = torch.tensor([0])
    real = model.target_features("text", batch, index)
    expected = (output["recovered"]["text"][1] - real).square().mean()
    torch.testing.assert_close(losses["reconstruction"], expected)
    weight = model.config.recovery.reconstruction_weight
    torch.testing.assert_close(losses["total"], losses["task"] + weight * expected)


def test_fitting_the_reconstruction_lowers_it() -> None:
    model, data = build(**{"model.recovery.reconstruction_weight": 1.0})
    model.train()
    mask = np.ones((24, 3), dtype=bool)
    mask[::2, 0] = False
    batch = train_batch(data, mask, np.ones((24, 3), dtype=bool))
    optimizer = torch.optim.Adam(model.regressors.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        losses = model.loss(model(batch), batch)
        first = losses["reconstruction"].item() if first is None else first
        optimizer.zero_grad()
        losses["reconstruction"].backward()
        optimizer.step()
    assert losses["reconstruction"].item() < 0.5 * first
