"""DiCMoR's own behaviour: what is recovered, what the losses cover, the stages, the options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.conftest import small_config, tiny_dataset

from dicmor.data.batches import Batches
from dicmor.models.base import DataInfo
from dicmor.registry import build_model


def build(**overrides: object):
    torch.manual_seed(0)
    data = tiny_dataset("regression")
    config = small_config("dicmor", **overrides)
    return build_model(DataInfo.from_dataset(data), config.model), data


def batch_with(data, mask: np.ndarray, present: np.ndarray | None = None) -> dict:
    split = data.splits["train"]
    if present is not None:
        split.present[:] = present
    return next(iter(Batches(split, data.modality_names, mask, 8, with_targets=True)))


def test_recovers_exactly_the_missing_entries() -> None:
    model, data = build()
    mask = np.ones((24, 3), dtype=bool)
    mask[[0, 3], 0] = False
    mask[[1, 3], 2] = False
    mask[0, 1] = True
    model.train()
    output = model(batch_with(data, mask, np.ones((24, 3), dtype=bool)))
    recovered = {m: index.tolist() for m, (index, _) in output["recovered"].items()}
    assert recovered == {"text": [0, 3], "vision": [1, 3]}
    latents = {m: index.tolist() for m, (index, _, _) in output["latents"].items()}
    assert latents == {
        "text": [1, 2, 4, 5, 6, 7],
        "audio": list(range(8)),
        "vision": [0, 2, 4, 5, 6, 7],
    }
    # Present modalities keep their own features; recovered ones are filled in.
    features = model.extractors(batch_with(data, mask))
    assert torch.equal(output["features"]["audio"], features["audio"])
    assert torch.equal(output["features"]["text"][1], features["text"][1])
    assert output["features"]["text"][0].abs().sum() > 0


def test_nothing_is_recovered_or_encoded_at_inference_when_nothing_is_missing() -> None:
    model, data = build()
    model.eval()
    output = model(batch_with(data, np.ones((24, 3), dtype=bool), np.ones((24, 3), dtype=bool)))
    assert output["recovered"] == {} and output["latents"] == {}


def test_genuinely_absent_entries_are_no_reconstruction_target() -> None:
    model, data = build()
    model.train()
    mask = np.ones((24, 3), dtype=bool)
    mask[0, 0] = False  # text of sample 0 hidden by the protocol...
    present = np.ones((24, 3), dtype=bool)
    present[0, 0] = False  # ...and genuinely absent
    batch = batch_with(data, mask, present)
    output = model(batch)
    assert 0 in output["recovered"]["text"][0].tolist()
    losses = model.loss(output, batch)
    assert losses["reconstruction"].item() == 0.0
    present[0, 0] = True
    losses = model.loss(output, batch_with(data, mask, present))
    assert losses["reconstruction"].item() > 0.0


def test_labels_enter_only_the_loss() -> None:
    model, data = build()
    with torch.no_grad():
        model.prior.mean.normal_()  # classes start with one shared Gaussian; separate them
    model.train()
    mask = np.ones((24, 3), dtype=bool)
    mask[:4, 1] = False
    batch = batch_with(data, mask)
    torch.manual_seed(1)
    first = model(batch)
    other = dict(batch, label=-batch["label"])
    torch.manual_seed(1)
    second = model(other)
    assert torch.equal(first["prediction"], second["prediction"])
    assert model.loss(first, batch)["nll"] != model.loss(second, other)["nll"]


def test_stage_two_freezes_the_extractors_only() -> None:
    model, _ = build()
    complete, missing = model.stages()
    assert complete.complete_data and not missing.complete_data
    model.begin_stage(missing)
    assert not any(p.requires_grad for p in model.extractors.parameters())
    others = [p for n, p in model.named_parameters() if not n.startswith("extractors.")]
    assert all(p.requires_grad for p in others)


@pytest.mark.parametrize(
    "overrides",
    [
        {"model.dicmor.transfer": "decode-merge"},
        {"model.dicmor.flow_step_type": "coupling-only"},
    ],
)
def test_options_train_and_recover(overrides: dict) -> None:
    model, data = build(**overrides)
    model.train()
    mask = np.ones((24, 3), dtype=bool)
    mask[:3, 0] = False
    mask[3:5, 1:] = False
    batch = batch_with(data, mask)
    output = model(batch)
    losses = model.loss(output, batch)
    losses["total"].backward()
    assert torch.isfinite(losses["total"]) and losses["reconstruction"] > 0
    if "decode-merge" in overrides.values():
        assert model.mergers is not None
        assert all(p.grad is not None for p in model.mergers.parameters())
