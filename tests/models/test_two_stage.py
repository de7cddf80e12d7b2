"""The two-stage schedule shared by DiCMoR and the pretrained zero-fill baseline."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import small_config, tiny_dataset

from dicmor.data.batches import Batches
from dicmor.models.base import DataInfo
from dicmor.models.zero_fill import ZeroFill
from dicmor.models.zero_fill_pretrained import ZeroFillPretrained
from dicmor.registry import build_model

TWO_STAGE = ("dicmor", "zero_fill_pretrained")


def build(method: str, **overrides: object):
    torch.manual_seed(0)
    data = tiny_dataset("classification")
    config = small_config(method, **overrides)
    return build_model(DataInfo.from_dataset(data), config.model), data


@pytest.mark.parametrize("method", TWO_STAGE)
def test_stage_two_freezes_the_extractors_only(method: str) -> None:
    model, _ = build(method)
    complete, missing = model.stages()
    assert complete.complete_data and not missing.complete_data
    model.begin_stage(missing)
    assert not any(p.requires_grad for p in model.extractors.parameters())
    others = [p for n, p in model.named_parameters() if not n.startswith("extractors.")]
    assert others and all(p.requires_grad for p in others)
    model.begin_stage(complete)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("method", TWO_STAGE)
def test_stage_one_epochs_come_from_the_dicmor_option(method: str) -> None:
    model, _ = build(method, **{"model.stage1_epochs": 3})
    complete, missing = model.stages()
    assert (complete.max_epochs, missing.max_epochs) == (3, None)


def test_pretrained_zero_fill_is_zero_fill_with_two_stages() -> None:
    pretrained, data = build("zero_fill_pretrained")
    torch.manual_seed(0)
    plain = build_model(DataInfo.from_dataset(data), small_config("zero_fill").model)
    assert isinstance(pretrained, ZeroFill) and isinstance(pretrained, ZeroFillPretrained)
    assert len(plain.stages()) == 1 and len(pretrained.stages()) == 2
    # Same parameters, same function: only the schedule differs.
    pretrained.load_state_dict(plain.state_dict())
    pretrained.eval()
    plain.eval()
    split = data.splits["test"]
    mask = split.present.copy()
    mask[::2, 0] = False
    batch = next(iter(Batches(split, data.modality_names, mask, len(split))))
    with torch.no_grad():
        assert torch.equal(pretrained(batch)["prediction"], plain(batch)["prediction"])
