"""The one training loop: early stopping and restoration, accumulation, non-finite losses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest
import torch
from tests.conftest import product_dtypes, small_config, tiny_dataset
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from dicmor.config import TrainConfig
from dicmor.data.batches import Batches
from dicmor.data.dataset import MultimodalDataset
from dicmor.models.base import DataInfo, MultimodalModel
from dicmor.registry import build_model
from dicmor.training.loop import TrainingError, fit, predict

NO_DROPOUT = {
    f"model.mult.{name}": 0.0
    for name in ("attn_dropout", "relu_dropout", "res_dropout", "embed_dropout", "out_dropout")
}


def zero_fill(data: MultimodalDataset, **overrides: object) -> MultimodalModel:
    torch.manual_seed(0)
    return build_model(DataInfo.from_dataset(data), small_config("zero_fill", **overrides).model)


def batches(data: MultimodalDataset, split: str, batch_size: int, **options) -> Batches:
    part = data.splits[split]
    return Batches(
        part, data.modality_names, part.present, batch_size, with_targets=True, **options
    )


def valid_loss(model: MultimodalModel, valid: Batches) -> float:
    """Sample-weighted mean validation loss, recomputed independently of the loop."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in valid:
            size = len(batch["label"])
            total += float(model.loss(model(batch), batch)["total"]) * size
            count += size
    return total / count


@contextmanager
def counting_optimizer_steps() -> Iterator[list[int]]:
    """Count every optimiser update, whatever optimiser class the loop builds."""
    calls: list[int] = []
    handle = register_optimizer_step_post_hook(lambda optimizer, args, kwargs: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def test_early_stopping_restores_the_best_validation_state() -> None:
    data = tiny_dataset("regression")
    model = zero_fill(data)
    valid = batches(data, "valid", 8)
    # Steps this large make the validation loss jump around, so it soon fails to improve.
    config = TrainConfig(
        batch_size=8, lr=0.5, patience=1, max_epochs=30, clip_value=None, progress=False
    )
    result = fit(model, batches(data, "train", 8, shuffle=True), valid, config)
    losses = [record["valid_total"] for record in result.history]
    assert len(losses) == result.epochs_run < config.max_epochs
    # Patience 1: the first epoch that does not improve is the last one.
    assert result.epochs_run == result.best_epoch + 1
    assert losses[-1] >= result.best_valid_loss
    assert result.best_valid_loss == min(losses) == losses[result.best_epoch - 1]
    restored = valid_loss(model, valid)
    assert restored == pytest.approx(result.best_valid_loss, rel=1e-6)
    assert restored != pytest.approx(losses[-1], rel=1e-6)


def test_patience_counts_epochs_without_improvement() -> None:
    data = tiny_dataset("regression")
    model = zero_fill(data)
    config = TrainConfig(batch_size=8, lr=0.5, patience=3, max_epochs=40, progress=False)
    result = fit(model, batches(data, "train", 8, shuffle=True), batches(data, "valid", 8), config)
    losses = [record["valid_total"] for record in result.history]
    after_best = losses[result.best_epoch :]
    assert result.epochs_run < config.max_epochs
    assert len(after_best) == 3
    assert all(loss >= result.best_valid_loss for loss in after_best)


@pytest.mark.parametrize(
    ("batch_size", "grad_accum", "expected"),
    [(4, 1, 6), (4, 2, 3), (4, 3, 2), (5, 1, 5), (5, 2, 3)],
)
def test_gradient_accumulation_steps_the_optimiser_less_often(
    batch_size: int, grad_accum: int, expected: int
) -> None:
    # 24 training samples: batches of 4 give 6 steps; of 5 give 5 (the last one of 4 samples),
    # and a last incomplete accumulation group still ends in an update.
    data = tiny_dataset("classification")
    model = zero_fill(data)
    config = TrainConfig(
        batch_size=batch_size, grad_accum=grad_accum, max_epochs=2, patience=5, progress=False
    )
    train = batches(data, "train", batch_size, shuffle=True)
    with counting_optimizer_steps() as calls:
        fit(model, train, batches(data, "valid", 8), config)
    assert len(calls) == 2 * expected


def _step_gradients(
    data: MultimodalDataset, batch_size: int, grad_accum: int, **options: object
) -> torch.Tensor:
    """The gradients the optimiser steps on during one epoch of zero-fill, flattened."""
    model = zero_fill(data, **NO_DROPOUT)
    config = TrainConfig(
        batch_size=batch_size, grad_accum=grad_accum, max_epochs=1, progress=False, **options
    )
    grads: list[torch.Tensor] = []

    def record(optimizer, args, kwargs) -> None:
        grads.extend(p.grad.clone() for g in optimizer.param_groups for p in g["params"])

    handle = register_optimizer_step_pre_hook(record)
    try:
        train = batches(data, "train", batch_size, shuffle=True)
        fit(model, train, batches(data, "valid", 8), config)
    finally:
        handle.remove()
    return torch.cat([g.flatten() for g in grads])


def test_accumulated_half_batches_give_the_full_batch_gradient() -> None:
    # 16 training samples: one step on all 16 must see the gradient of two accumulated steps on
    # 8 each, since both batch sizes take their samples from the same shuffled order.
    data = tiny_dataset("classification", n=16)
    full = _step_gradients(data, 16, 1, clip_value=None)
    mean = _step_gradients(data, 8, 2, clip_value=None, accumulation="mean")
    summed = _step_gradients(data, 8, 2, clip_value=None, accumulation="sum")
    assert full.abs().max() > 0
    torch.testing.assert_close(mean, full, rtol=1e-4, atol=1e-7)
    # The public code's accumulation does not divide: the step sees the sum of the two.
    torch.testing.assert_close(summed, 2 * full, rtol=1e-4, atol=1e-7)


class _Linear(MultimodalModel):
    """One weight w; the loss of a batch is w times its mean label, so its gradient is that
    mean: hand-chosen gradients per micro-batch."""

    def __init__(self, data: MultimodalDataset) -> None:
        super().__init__(DataInfo.from_dataset(data), small_config("zero_fill").model)
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"prediction": self.w.expand(len(batch["label"]))}

    def loss(self, output: dict, batch: dict) -> dict[str, torch.Tensor]:
        total = self.w * batch["label"].float().mean()
        return {"total": total, "task": total}


def _first_step_gradient(accumulation: str) -> float:
    """The gradient of the first update, on micro-batches of gradient 1.0, then -0.5 (clip
    0.6); the samples come in split order."""
    data = tiny_dataset("regression", n=4)
    data.splits["train"].labels[:] = np.array([1.0, -0.5, 0.0, 0.0], dtype=np.float32)
    model = _Linear(data)
    config = TrainConfig(
        batch_size=1, grad_accum=2, max_epochs=1, clip_value=0.6, accumulation=accumulation
    )
    seen: list[float] = []

    def record(optimizer, args, kwargs) -> None:
        seen.append(float(model.w.grad))

    handle = register_optimizer_step_pre_hook(record)
    try:
        fit(model, batches(data, "train", 1), batches(data, "valid", 2), config)
    finally:
        handle.remove()
    return seen[0]


def test_summed_accumulation_clips_the_running_sum_after_every_micro_batch() -> None:
    # sum: clip(clip(1.0) - 0.5) = 0.1; clipping only the sum would give clip(0.5) = 0.5.
    assert _first_step_gradient("sum") == pytest.approx(0.1)
    # mean: clip((1.0 - 0.5) / 2) = 0.25.
    assert _first_step_gradient("mean") == pytest.approx(0.25)


def test_accumulation_modes_agree_without_accumulation() -> None:
    data = tiny_dataset("classification", n=16)
    summed = _step_gradients(data, 8, 1, accumulation="sum")
    mean = _step_gradients(data, 8, 1, accumulation="mean")
    assert torch.equal(summed, mean)


def test_a_non_finite_loss_names_the_epoch_and_step(monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiny_dataset("classification")
    model = zero_fill(data)
    original = type(model).loss
    training_calls = []

    def loss(self, output, batch):
        losses = original(self, output, batch)
        if self.training:
            training_calls.append(1)
            # 24 samples in batches of 8: call 5 is epoch 2, step 2.
            if len(training_calls) == 5:
                losses["total"] = losses["total"] * float("nan")
        return losses

    monkeypatch.setattr(type(model), "loss", loss)
    config = TrainConfig(batch_size=8, max_epochs=3, progress=False)
    with pytest.raises(TrainingError, match=r"epoch 2, step 2"):
        fit(model, batches(data, "train", 8, shuffle=True), batches(data, "valid", 8), config)


def test_features_that_overflow_stop_training_with_a_clear_error() -> None:
    data = tiny_dataset("regression")
    for split in data.splits.values():
        for x in split.modalities.values():
            x *= np.float32(1e37)
    model = zero_fill(data)
    config = TrainConfig(batch_size=8, max_epochs=2, progress=False)
    with pytest.raises(TrainingError, match=r"non-finite loss at epoch 1, step 1"):
        fit(model, batches(data, "train", 8), batches(data, "valid", 8), config)


def test_bfloat16_training_steps_and_validates_in_bfloat16_and_predicts_in_float32() -> None:
    data = tiny_dataset()
    train, valid = batches(data, "train", 8), batches(data, "valid", 8)
    results = {}
    for precision in ("float32", "bfloat16"):
        model = zero_fill(data, **NO_DROPOUT)
        config = replace(small_config("zero_fill").train, precision=precision, max_epochs=3)
        with product_dtypes() as dtypes:
            result = fit(model, train, valid, config)
        with product_dtypes() as predicting:
            predict(model, valid)
        results[precision] = result
        if precision == "float32":
            assert set(dtypes) == {torch.float32}
        else:
            assert torch.bfloat16 in dtypes
        # Autocast ends with the loop: test predictions are float32.
        assert predicting and set(predicting) == {torch.float32}
    reference, low = results["float32"], results["bfloat16"]
    assert low.epochs_run == reference.epochs_run
    for ours, theirs in zip(low.history, reference.history, strict=True):
        for key in ("train_total", "valid_total"):
            assert ours[key] == pytest.approx(theirs[key], rel=2e-2), key
