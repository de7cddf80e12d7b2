"""Mean-fill: the mean it learns, and what a missing modality's input becomes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.conftest import small_config, tiny_dataset

from dicmor.data.batches import Batches
from dicmor.models.base import DataInfo
from dicmor.models.mean_fill import RunningMean
from dicmor.registry import build_model


def test_running_mean_is_the_mean_of_every_row_seen() -> None:
    rng = np.random.default_rng(0)
    first, second = rng.normal(3.0, 2.0, (4, 5, 3)), rng.normal(-1.0, 1.0, (2, 5, 3))
    mean = RunningMean(3)
    torch.testing.assert_close(mean.value(), torch.zeros(3, dtype=torch.float64))
    mean.update(torch.tensor(first, dtype=torch.float32))
    mean.update(torch.tensor(second, dtype=torch.float32))
    expected = np.concatenate([first, second]).reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(mean.value().numpy(), expected, rtol=1e-6)


def setup():
    torch.manual_seed(0)
    data = tiny_dataset("classification")
    info = DataInfo.from_dataset(data)
    model = build_model(info, small_config("mean_fill").model)
    split = data.splits["train"]
    mask = split.present.copy()
    mask[::2, 0] = False
    batch = next(iter(Batches(split, data.modality_names, mask, 8)))
    return data, info, model, batch


def test_the_mean_covers_available_training_inputs_only() -> None:
    data, _, model, batch = setup()
    model.eval()
    model(batch)
    assert model.means[data.modality_names[0]].count.item() == 0  # nothing learnt in eval mode
    model.train()
    model(batch)
    first = data.modality_names[0]
    x = batch["inputs"][first][batch["available"][:, 0]]  # (n, T, D)
    expected = x.reshape(-1, x.shape[-1]).double().mean(dim=0)
    torch.testing.assert_close(model.means[first].value(), expected)


def test_a_missing_input_becomes_the_mean() -> None:
    data, info, model, batch = setup()
    model.train()
    model(batch)
    model.eval()
    plain = build_model(info, small_config("zero_fill").model)
    plain.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("means.")}
    )
    plain.eval()
    filled = {}
    for j, m in enumerate(data.modality_names):
        mean = model.means[m].value().float()
        filled[m] = torch.where(batch["available"][:, j, None, None], batch["inputs"][m], mean)
    with torch.no_grad():
        expected = plain({**batch, "inputs": filled})["prediction"]
        got = model(batch)["prediction"]
        zero_filled = plain(batch)["prediction"]
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, zero_filled)


def test_a_text_encoder_is_refused_with_the_option_named() -> None:
    data = tiny_dataset("classification")
    config = small_config("mean_fill", **{"model.text_encoder": "/nowhere"})
    with pytest.raises(ValueError, match=r"model\.text_encoder: mean_fill"):
        build_model(DataInfo.from_dataset(data), config.model)
