"""Every registered method: forward/backward smoke, no label or missing-value leaks, save/load.

Parametrised from the registry, so a new method is tested by being registered.
"""

from __future__ import annotations

import copy
import io
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.conftest import product_dtypes, small_config, tiny_dataset

from dicmor.data.batches import Batches
from dicmor.models.base import DataInfo
from dicmor.nn.precision import autocast
from dicmor.registry import build_model, model_names

TASKS = ("regression", "classification")


def make(method: str, task: str):
    torch.manual_seed(0)
    data = tiny_dataset(task)
    model = build_model(DataInfo.from_dataset(data), small_config(method).model)
    return model, data


def one_batch(model, data, available: np.ndarray | None = None, targets: bool = True) -> dict:
    """The first training batch of 8, made as the method makes its batches."""
    split = data.splits["train"]
    mask = split.present.copy() if available is None else available
    batches = Batches(
        split, data.modality_names, mask, 8, with_targets=targets, batching=model.batching()
    )
    return next(iter(batches))


def partial_mask(data) -> np.ndarray:
    mask = data.splits["train"].present.copy()
    mask[0:8:3, 0] = False
    mask[1:8:3, 2] = False
    mask[2:8:3, 1:] = False
    return mask


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("method", model_names())
def test_forward_backward_reaches_parameters(method: str, task: str) -> None:
    model, data = make(method, task)
    for stage in model.stages():
        model.begin_stage(stage)
    model.train()
    batch = one_batch(model, data, partial_mask(data))
    output = model(batch)
    size = len(batch["index"])  # 8, or what the method's own batching made of it
    expected = (size,) if task == "regression" else (size, 3)
    assert output["prediction"].shape == expected
    losses = model.loss(output, batch)
    assert torch.isfinite(losses["total"])
    losses["total"].backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    without = [n for n, p in trainable if p.grad is None or not torch.any(p.grad != 0)]
    # A coupling conditioner's last layer starts at zero, so on the first step no gradient
    # reaches the layers before it; every other parameter must receive one.
    assert all(re.search(r"coupling\.net\.[0-2]\.", n) for n in without), without


@pytest.mark.parametrize("method", model_names())
def test_every_stage_trains_in_bfloat16_close_to_float32(method: str) -> None:
    """``train.precision: bfloat16``: the products run in bfloat16, the losses and gradients
    come out float32, within 2 % of float32's losses and pointing the same way."""
    model, data = make(method, "regression")
    for stage in model.stages():
        model.begin_stage(stage)
        model.train()
        batch = one_batch(model, data, partial_mask(data))
        twin = copy.deepcopy(model)
        torch.manual_seed(1)
        expected = model.loss(model(batch), batch)
        expected["total"].backward()
        torch.manual_seed(1)
        with autocast("bfloat16", torch.device("cpu")), product_dtypes() as dtypes:
            losses = twin.loss(twin(batch), batch)
            losses["total"].backward()
        assert torch.bfloat16 in dtypes, stage.name
        for key, value in expected.items():
            assert losses[key].dtype == torch.float32, (stage.name, key)
            difference = abs(float(losses[key].detach()) - float(value.detach()))
            assert difference <= 2e-2 * abs(float(value)) + 1e-3, (stage.name, key)
        pairs = [
            (p.grad, q.grad)
            for p, q in zip(model.parameters(), twin.parameters(), strict=True)
            if p.grad is not None
        ]
        assert all(q is not None and q.dtype == torch.float32 for _, q in pairs), stage.name
        reference = torch.cat([p.flatten() for p, _ in pairs])
        low = torch.cat([q.flatten() for _, q in pairs])
        cosine = float(F.cosine_similarity(reference, low, dim=0))
        assert cosine > 0.99, (stage.name, cosine)
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("method", model_names())
def test_prediction_ignores_masked_values_and_labels(method: str) -> None:
    model, data = make(method, "regression")
    model.eval()
    mask = partial_mask(data)
    batch = one_batch(model, data, mask, targets=False)
    with torch.no_grad():
        reference = model(batch)["prediction"]
        changed = one_batch(model, data, mask, targets=False)
        changed["label"] = torch.randn_like(changed["label"]) * 100
        for j, m in enumerate(data.modality_names):
            hidden = ~changed["available"][:, j]
            changed["inputs"][m][hidden] = 0.0
        assert torch.equal(model(changed)["prediction"], reference)
    # The masked values never reach the model: rebuilding the batch from data whose masked
    # entries were overwritten gives identical predictions.
    split = data.splits["train"]
    for j, m in enumerate(data.modality_names):
        split.modalities[m][~mask[:, j]] = 1e3
        split.labels[:] = 7.0
    with torch.no_grad():
        again = model(one_batch(model, data, mask, targets=False))["prediction"]
    assert torch.equal(again, reference)


@pytest.mark.parametrize("method", model_names())
def test_state_dict_round_trip(method: str) -> None:
    model, data = make(method, "classification")
    model.train()
    batch = one_batch(model, data, partial_mask(data))
    model(batch)  # data-dependent initialisations happen on the first training batch
    model.eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    clone, _ = make(method, "classification")
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    clone.eval()
    with torch.no_grad():
        assert torch.allclose(model(batch)["prediction"], clone(batch)["prediction"])
