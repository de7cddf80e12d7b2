"""DiCMoR's own behaviour: what is recovered, what the losses cover, the stages, the options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.conftest import build_model_for, train_batch


def build(**overrides: object):
    return build_model_for("dicmor", **overrides)


def test_recovers_exactly_the_missing_entries() -> None:
    model, data = build()
    mask = np.ones((24, 3), dtype=bool)
    mask[[0, 3], 0] = False
    mask[[1, 3], 2] = False
    mask[0, 1] = True
    model.train()
    output = model(train_batch(data, mask, np.ones((24, 3), dtype=bool)))
    recovered = {m: index.tolist() for m, (index, _) in output["recovered"].items()}
    assert recovered == {"text": [0, 3], "vision": [1, 3]}
    latents = {m: index.tolist() for m, (index, _, _) in output["latents"].items()}
    assert latents == {
        "text": [1, 2, 4, 5, 6, 7],
        "audio": list(range(8)),
        "vision": [0, 2, 4, 5, 6, 7],
    }
    # Present modalities keep their own features; recovered ones are filled in.
    features = model.extractors(train_batch(data, mask))
    assert torch.equal(output["features"]["audio"], features["audio"])
    assert torch.equal(output["features"]["text"][1], features["text"][1])
    assert output["features"]["text"][0].abs().sum() > 0


def test_nothing_is_recovered_or_encoded_at_inference_when_nothing_is_missing() -> None:
    model, data = build()
    model.eval()
    output = model(train_batch(data, np.ones((24, 3), dtype=bool), np.ones((24, 3), dtype=bool)))
    assert output["recovered"] == {} and output["latents"] == {}


def test_genuinely_absent_entries_are_no_reconstruction_target() -> None:
    model, data = build()
    model.train()
    mask = np.ones((24, 3), dtype=bool)
    mask[0, 0] = False  # text of sample 0 hidden by the protocol...
    present = np.ones((24, 3), dtype=bool)
    present[0, 0] = False  # ...and genuinely absent
    batch = train_batch(data, mask, present)
    output = model(batch)
    assert 0 in output["recovered"]["text"][0].tolist()
    losses = model.loss(output, batch)
    assert losses["reconstruction"].item() == 0.0
    present[0, 0] = True
    losses = model.loss(output, train_batch(data, mask, present))
    assert losses["reconstruction"].item() > 0.0


def test_labels_enter_only_the_loss() -> None:
    model, data = build()
    with torch.no_grad():
        model.prior.mean.normal_()  # classes start with one shared Gaussian; separate them
    model.train()
    mask = np.ones((24, 3), dtype=bool)
    mask[:4, 1] = False
    batch = train_batch(data, mask)
    torch.manual_seed(1)
    first = model(batch)
    other = dict(batch, label=-batch["label"])
    torch.manual_seed(1)
    second = model(other)
    assert torch.equal(first["prediction"], second["prediction"])
    assert model.loss(first, batch)["nll"] != model.loss(second, other)["nll"]


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
    batch = train_batch(data, mask)
    output = model(batch)
    losses = model.loss(output, batch)
    losses["total"].backward()
    assert torch.isfinite(losses["total"]) and losses["reconstruction"] > 0
    if "decode-merge" in overrides.values():
        assert model.mergers is not None
        assert all(p.grad is not None for p in model.mergers.parameters())


def test_validation_on_complete_data_still_counts_the_flow_nll() -> None:
    model, data = build()
    batch = train_batch(data, np.ones((24, 3), dtype=bool), np.ones((24, 3), dtype=bool))
    model.train()
    model.loss(model(batch), batch)  # data-dependent initialisations
    model.eval()
    with torch.no_grad():
        output = model(batch)
        assert output["latents"] == {}  # inference skips the flows when nothing is missing
        assert model.loss(output, batch)["nll"] > 0


def test_prior_starts_at_the_class_means_of_the_first_latents() -> None:
    model, data = build()
    model.train()
    batch = train_batch(data, np.ones((24, 3), dtype=bool), np.ones((24, 3), dtype=bool))
    output = model(batch)
    assert not model.prior_initialized
    model.loss(output, batch)
    assert model.prior_initialized
    classes = torch.round(torch.clamp(batch["label"], -3, 3)).long() + 3
    points = torch.cat([z for _, z, _ in output["latents"].values()])  # (3B, d, T')
    labels = classes.repeat(3)
    for c in labels.unique():
        expected = points[labels == c].mean(dim=(0, 2))
        assert torch.allclose(model.prior.mean[c], expected, atol=1e-5)
    unseen = sorted(set(range(7)) - set(labels.tolist()))
    assert all(not model.prior.mean[c].any() for c in unseen)


def test_recovered_values_stay_within_the_range_of_real_features() -> None:
    model, data = build()
    model.train()
    mask = np.ones((24, 3), dtype=bool)
    batch = train_batch(data, mask)
    model(batch)
    bound = model.feature_bound.clone()
    assert (bound > 0).all()
    with torch.no_grad():  # a wildly expanding inverse flow
        for step in model.flows.steps:
            for p in step.parameters():
                p.mul_(50.0)
    mask[:4, 0] = False
    model.eval()
    with torch.no_grad():
        output = model(train_batch(data, mask))
    assert torch.isfinite(output["prediction"]).all()
    assert torch.equal(model.feature_bound, bound)  # evaluation does not move the bound


def test_alignment_is_the_spread_of_a_samples_latents_about_their_mean() -> None:
    model, _ = build(**{"model.dicmor.align_weight": 1.0})
    available = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    z = {
        "text": torch.tensor([[[1.0]], [[0.0]], [[5.0]]]),
        "audio": torch.tensor([[[3.0]], [[3.0]]]),
        "vision": torch.tensor([[[6.0]]]),
    }
    latents = {
        "text": (torch.tensor([0, 1, 2]), z["text"], torch.zeros(3)),
        "audio": (torch.tensor([0, 1]), z["audio"], torch.zeros(2)),
        "vision": (torch.tensor([1]), z["vision"], torch.zeros(1)),
    }
    # Sample 0: latents 1 and 3 about 2 → 1 + 1; sample 1: 0, 3, 6 about 3 → 9 + 0 + 9;
    # sample 2 has one latent and is left out: (2 + 18) / 5 entries.
    assert model._alignment(latents, available).item() == pytest.approx(4.0)
    one_each = torch.tensor([[True, False, False], [False, True, False], [True, False, False]])
    alone = {
        "text": (torch.tensor([0, 2]), z["text"][:2], torch.zeros(2)),
        "audio": (torch.tensor([1]), z["audio"][:1], torch.zeros(1)),
    }
    assert model._alignment(alone, one_each).item() == 0.0


def test_alignment_trains_the_flows_only() -> None:
    model, data = build(**{"model.dicmor.align_weight": 1.0})
    model.train()
    batch = train_batch(data, np.ones((24, 3), dtype=bool), np.ones((24, 3), dtype=bool))
    losses = model.loss(model(batch), batch)
    assert losses["alignment"].item() > 0
    losses["alignment"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.flows.parameters())
    assert all(p.grad is None for p in model.extractors.parameters())


def test_under_bfloat16_autocast_the_flows_and_likelihood_stay_float32() -> None:
    from dicmor.nn.precision import autocast

    model, data = build()
    mask = np.ones((24, 3), dtype=bool)
    mask[[0, 3], 0] = False
    mask[[1, 3], 2] = False
    batch = train_batch(data, mask, np.ones((24, 3), dtype=bool))
    model.train()
    model.loss(model(batch), batch)  # data-dependent initialisations happen here
    model.eval()  # no dequantisation noise: the two encodings see the same input
    with torch.no_grad():
        features = model.extractors(batch)
        expected = model._encode(features, batch["available"])
        with autocast("bfloat16", torch.device("cpu")):
            latents = model._encode(features, batch["available"])
            decoded = model._inverse(latents["audio"][1], 0)
            output = model(batch)
            nll = model.loss(output, batch)["nll"]
        reference = model.loss(output, batch)["nll"]
        decoded_reference = model._inverse(expected["audio"][1], 0)
    for m, (index, z, logdet) in expected.items():
        assert torch.equal(latents[m][0], index)
        assert latents[m][1].dtype == latents[m][2].dtype == torch.float32
        assert torch.equal(latents[m][1], z) and torch.equal(latents[m][2], logdet)
    assert decoded.dtype == torch.float32 and torch.equal(decoded, decoded_reference)
    assert nll.dtype == torch.float32 and torch.equal(nll, reference)
    # The refinement and fusion ran in bfloat16, the recovered rows filled into its features.
    assert output["features"]["text"].dtype == torch.bfloat16
    assert all(z.dtype == torch.float32 for _, z, _ in output["latents"].values())
