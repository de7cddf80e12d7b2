"""Text encoded from MMSA ``text_bert`` tokens by a local BERT-like model (SPEC §5.1, §5.9)."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import small_config
from transformers import BertConfig, BertModel

from dicmor.data.batches import Batches
from dicmor.data.dataset import MultimodalDataset
from dicmor.data.mmsa import load_mmsa
from dicmor.data.synthetic import make_mmsa_dict
from dicmor.experiments.run import run_experiment
from dicmor.missing.protocols import MissingProtocol
from dicmor.models.base import DataInfo, MultimodalModel
from dicmor.registry import build_model

VOCAB = 50
METHODS = ("zero_fill", "dicmor")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised BERT saved as a Hugging Face model directory."""
    path = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def mmsa_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MMSA-layout pickle whose token ids fit the tiny vocabulary."""
    content = make_mmsa_dict(16, 8, 8, seq_len=6, dims={"text": 8, "audio": 3, "vision": 4}, seed=0)
    for part in content.values():
        # The generator draws BERT-base ids (up to 30000); padding (0) stays 0.
        part["text_bert"][:, 0] %= VOCAB
    path = tmp_path_factory.mktemp("mmsa") / "aligned.pkl"
    with open(path, "wb") as handle:
        pickle.dump(content, handle)
    return path


@pytest.fixture
def data(mmsa_path: Path) -> MultimodalDataset:
    dataset = load_mmsa(mmsa_path)
    assert dataset.splits["train"].extras["text_bert"][:, 0].max() < VOCAB
    return dataset


def build(method: str, data: MultimodalDataset, bert_dir: Path) -> MultimodalModel:
    torch.manual_seed(0)
    config = small_config(method, **{"model.text_encoder": str(bert_dir)})
    return build_model(DataInfo.from_dataset(data), config.model)


def encoder_parameters(model: MultimodalModel) -> dict[str, torch.Tensor]:
    # BERT's pooler is not used: only the token states feed the extractor.
    return {
        name: p
        for name, p in model.extractors.text_encoder.named_parameters()
        if not name.startswith("model.pooler.")
    }


def one_batch(data: MultimodalDataset, split: str, available: np.ndarray) -> dict:
    part = data.splits[split]
    names = data.modality_names
    return next(iter(Batches(part, names, available, len(part), with_targets=True)))


def text_dropped(data: MultimodalDataset, split: str) -> np.ndarray:
    """Text unavailable for every other sample; audio unavailable for a few others."""
    available = data.splits[split].present.copy()
    available[::2, 0] = False
    available[1::4, 1] = False
    return available


@pytest.mark.parametrize("method", METHODS)
def test_one_training_step_reaches_the_encoder_and_predicts(
    method: str, data: MultimodalDataset, bert_dir: Path
) -> None:
    model = build(method, data, bert_dir)
    model.begin_stage(model.stages()[0])
    model.train()
    batch = one_batch(data, "train", data.splits["train"].present)
    model.loss(model(batch), batch)["total"].backward()
    parameters = encoder_parameters(model)
    without = [n for n, p in parameters.items() if p.grad is None or not p.grad.any()]
    assert not without
    before = {n: p.detach().clone() for n, p in parameters.items()}
    torch.optim.Adam(model.parameters(), lr=1e-3).step()
    assert all(not torch.equal(before[n], p) for n, p in parameters.items())

    model.eval()
    test = one_batch(data, "test", text_dropped(data, "test"))
    with torch.no_grad():
        prediction = model(test)["prediction"]
    assert prediction.shape == (len(data.splits["test"]),)
    assert torch.isfinite(prediction).all()


def test_dicmor_freezes_the_encoder_in_stage_two(data: MultimodalDataset, bert_dir: Path) -> None:
    model = build("dicmor", data, bert_dir)
    complete, missing = model.stages()
    model.begin_stage(missing)
    assert not any(p.requires_grad for p in model.extractors.parameters())
    model.train()
    batch = one_batch(data, "train", text_dropped(data, "train"))
    model.loss(model(batch), batch)["total"].backward()
    assert all(p.grad is None for p in model.extractors.text_encoder.parameters())
    assert any(p.grad is not None for p in model.refiners.parameters())
    # Frozen, the encoder is a fixed feature function: no dropout, and reconstruction targets
    # that do not change from call to call.
    assert not model.extractors.text_encoder.training and model.fusion.training
    index = torch.arange(4)
    first = model.target_features("text", batch, index)
    assert torch.equal(first, model.target_features("text", batch, index))
    model.begin_stage(complete)
    assert model.extractors.text_encoder.training
    assert all(p.requires_grad for p in encoder_parameters(model).values())


def test_dicmor_run_trains_the_encoder_then_keeps_it(
    mmsa_path: Path, bert_dir: Path, tmp_path: Path
) -> None:
    config = small_config(
        "dicmor",
        **{
            "data.source": str(mmsa_path),
            "model.text_encoder": str(bert_dir),
            "output_dir": str(tmp_path),
        },
    )
    config = replace(config, missing=MissingProtocol("random", 0.4))
    result = run_experiment(config, log=lambda _: None)
    assert set(result.stages) == {"complete", "missing"}
    initial = BertModel.from_pretrained(bert_dir).state_dict()
    (cache,) = (tmp_path / "cache").glob("dicmor-complete-*.pt")
    after_stage_one = torch.load(cache, weights_only=True)
    final = result.model.state_dict()
    key = "extractors.text_encoder.model.embeddings.word_embeddings.weight"
    assert not torch.equal(after_stage_one[key], initial["embeddings.word_embeddings.weight"])
    for name in encoder_parameters(result.model):
        full = f"extractors.text_encoder.{name}"
        assert torch.equal(final[full], after_stage_one[full]), full
    assert all(np.isfinite(v) for v in result.metrics.values())


def test_a_missing_encoder_directory_names_the_option(
    data: MultimodalDataset, tmp_path: Path
) -> None:
    for path in (tmp_path / "absent", tmp_path):
        with pytest.raises(FileNotFoundError, match=r"model\.text_encoder: .*no config\.json"):
            build("zero_fill", data, path)


@pytest.mark.parametrize("method", METHODS)
def test_tokens_of_unavailable_text_change_no_prediction(
    method: str, data: MultimodalDataset, bert_dir: Path
) -> None:
    model = build(method, data, bert_dir)
    model.eval()
    available = text_dropped(data, "test")
    hidden = ~available[:, 0]
    batch = one_batch(data, "test", available)
    rng = np.random.default_rng(1)
    with torch.no_grad():
        reference = model(batch)["prediction"]
        # Tokens handed to the model for a sample without text are ignored...
        changed = one_batch(data, "test", available)
        noise = torch.from_numpy(rng.integers(1, VOCAB, (int(hidden.sum()), 6))).float()
        changed["text_bert"][torch.from_numpy(hidden), 0] = noise
        changed["text_bert"][torch.from_numpy(hidden), 1] = 1.0
        assert torch.equal(model(changed)["prediction"], reference)
        # ... and so are the dataset's own tokens for it.
        tokens = data.splits["test"].extras["text_bert"]
        tokens[hidden, 0] = rng.integers(1, VOCAB, (int(hidden.sum()), 6))
        assert torch.equal(model(one_batch(data, "test", available))["prediction"], reference)
        # Tokens of available text do matter.
        tokens[~hidden, 0] = rng.integers(1, VOCAB, (int((~hidden).sum()), 6))
        moved = model(one_batch(data, "test", available))["prediction"]
    assert not torch.allclose(
        moved[~torch.from_numpy(hidden)], reference[~torch.from_numpy(hidden)]
    )


def test_text_missing_from_a_whole_batch_is_not_encoded_in_evaluation(
    data: MultimodalDataset, bert_dir: Path
) -> None:
    model = build("dicmor", data, bert_dir)
    model.eval()
    calls = [0]
    model.extractors.text_encoder.register_forward_hook(
        lambda *_: calls.__setitem__(0, calls[0] + 1)
    )
    available = data.splits["test"].present.copy()
    available[:, 0] = False
    with torch.no_grad():
        skipped = model(one_batch(data, "test", available))
        assert calls[0] == 0
        available[0, 0] = True
        encoded = model(one_batch(data, "test", available))
        assert calls[0] == 1
    torch.testing.assert_close(
        skipped["prediction"][1:], encoded["prediction"][1:], rtol=1e-5, atol=1e-6
    )
