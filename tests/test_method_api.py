"""The method API: a method is one file, found without a list, with its own options, stages,
batch size and batching, trained, evaluated and predicted through the command line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from dicmor import registry
from dicmor.cli import main
from dicmor.config import ConfigError, load_config, to_dict
from dicmor.data.batches import Batches
from dicmor.experiments.run import run_experiment
from dicmor.missing.protocols import MissingProtocol
from dicmor.training import stages as stages_module
from tests.conftest import small_config, tiny_dataset

METHOD = '''
"""A method outside the package: per-modality means, an MLP, and two stages of its own."""

from dataclasses import dataclass

import torch
from torch import nn

from dicmor.models.base import MultimodalModel, Stage
from dicmor.registry import register


@dataclass(frozen=True)
class MeanMLPConfig:
    """Options of ``mean_mlp``."""

    hidden: int = 4
    """Hidden width."""
    first_batch_size: int = 3
    """Batch size of the first stage."""


@register("mean_mlp", config=MeanMLPConfig)
class MeanMLP(MultimodalModel):
    """Time-averaged inputs, concatenated, through an MLP."""

    def __init__(self, info, config):
        super().__init__(info, config)
        width = sum(info.feature_dims.values())
        self.body = nn.Sequential(nn.Linear(width, self.options.hidden), nn.ReLU())
        self.head = nn.Linear(self.options.hidden, info.output_dim)

    def stages(self):
        return [
            Stage("warmup", complete_data=True, batch_size=self.options.first_batch_size),
            Stage("head", frozen=("body",), max_epochs=1),
        ]

    def forward(self, batch):
        x = torch.cat([v.mean(dim=1) for v in batch["inputs"].values()], dim=1)
        prediction = self.head(self.body(x))
        if self.info.task == "regression":
            prediction = prediction.squeeze(-1)
        return {"prediction": prediction}
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``mean_mlp`` written as one file in a temporary package and named in DICMOR_PLUGINS;
    the registry is restored afterwards."""
    package = tmp_path / "outside"
    package.mkdir()
    (package / "mean_mlp.py").write_text(METHOD)
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    monkeypatch.setattr(registry, "_plugins", set(registry._plugins))
    monkeypatch.setenv("DICMOR_PLUGINS", str(package / "mean_mlp.py"))
    return package


def test_a_method_in_one_outside_file_trains_evaluates_and_predicts(
    plugin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    seen: dict[str, int] = {}
    original = stages_module.fit

    def fit(model, train, valid, config, **kwargs):
        seen[kwargs["desc"]] = train.batch_size
        return original(model, train, valid, config, **kwargs)

    monkeypatch.setattr(stages_module, "fit", fit)
    config = tmp_path / "run.yaml"
    config.write_text(
        textwrap.dedent(
            """
            model:
              method: mean_mlp
              mean_mlp:
                hidden: 6
                first_batch_size: 5
            train:
              batch_size: 16
              max_epochs: 2
              progress: false
            missing:
              kind: random
              rate: 0.3
            """
        )
    )
    out = tmp_path / "runs"
    assert main(["train", str(config), "--output-dir", str(out), "--name", "r"]) == 0
    run = out / "r"
    assert seen == {"warmup": 5, "head": 16}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["mean_mlp"] == {"hidden": 6, "first_batch_size": 5}
    history = json.loads((run / "history.json").read_text())
    assert set(history) == {"warmup", "head"}
    assert main(["evaluate", str(run), "--missing", "random:0.5"]) == 0
    assert "random MR=0.50" in capsys.readouterr().out
    from dicmor.data import load_embedded

    test = load_embedded(seed=0).splits["test"]
    inputs = tmp_path / "new.npz"
    np.savez(inputs, **{m: x[:7] for m, x in test.modalities.items()})
    predictions = tmp_path / "p.csv"
    assert main(["predict", str(run), str(inputs), "--out", str(predictions)]) == 0
    assert len(predictions.read_text().splitlines()) == 8


def test_a_methods_options_are_validated_like_the_rest(plugin: Path) -> None:
    config = load_config("tiny", {"model.method": "mean_mlp", "model.mean_mlp.hidden": 9})
    assert config.model.options.hidden == 9
    assert to_dict(config)["model"]["mean_mlp"]["hidden"] == 9
    with pytest.raises(ConfigError, match=r"unknown key 'model\.mean_mlp\.hiden'"):
        load_config("tiny", {"model.method": "mean_mlp", "model.mean_mlp.hiden": 9})
    with pytest.raises(ConfigError, match=r"model\.mean_mlp\.hidden must be an integer"):
        load_config("tiny", {"model.mean_mlp.hidden": "wide"})
    with pytest.raises(ConfigError, match=r"unknown key 'model\.nonexistent\.x'"):
        load_config("tiny", {"model.nonexistent.x": 1})


def test_a_plugin_that_cannot_be_imported_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_plugins", set(registry._plugins))
    monkeypatch.setenv("DICMOR_PLUGINS", "no_such_module_here")
    with pytest.raises(ConfigError, match="DICMOR_PLUGINS: cannot import 'no_such_module_here'"):
        registry.model_names()


def test_reserved_and_repeated_names_are_refused() -> None:
    with pytest.raises(ValueError, match="identifier other than"):
        registry.register("recovery")
    with pytest.raises(ValueError, match="registered twice"):

        @registry.register("dicmor")
        class Other:
            pass


def test_a_custom_sampler_keeps_groups_together_and_predictions_stay_in_split_order(
    tmp_path: Path,
) -> None:
    from tests.methods.segments import groups_of

    data = tiny_dataset("regression")
    config = small_config("segment_pool", **{"output_dir": str(tmp_path)})
    result = run_experiment(config, dataset=data, log=lambda _: None)
    model = result.model
    split = data.splits["train"]
    groups = groups_of(split, model.options.group_size)
    batches = Batches(
        split, data.modality_names, split.present, 10, shuffle=True, batching=model.batching()
    )
    rows = []
    for batch in batches:
        index = batch["index"].numpy()
        rows += index.tolist()
        # Every group in a batch is there whole, and the collate gave each sample its group.
        for g in set(groups[index]):
            assert set(np.flatnonzero(groups == g)) <= set(index)
        np.testing.assert_array_equal(batch["extra"]["group"].numpy(), groups[index])
    assert sorted(rows) == list(range(len(split)))
    assert len(batches) == len(list(batches))
    predictions = np.load(result.run_dir / "test_predictions.npy")
    # Evaluated one sample at a time: the same predictions only if the group context is the
    # same, so compare with a run over the test split in its own order instead.
    from dicmor.evaluation.evaluate import evaluate

    _, again = evaluate(model, data.splits["test"], data.modality_names, result.masks["test"])
    np.testing.assert_allclose(predictions, again, rtol=1e-6)


def test_a_sampler_that_loses_a_sample_is_an_error() -> None:
    from dicmor.data.batches import Batching

    data = tiny_dataset("regression")
    split = data.splits["train"]

    def lossy(split, order, batch_size):
        return [order[1:]]

    batches = Batches(split, data.modality_names, split.present, 8, batching=Batching(lossy))
    with pytest.raises(ValueError, match="every sample exactly once"):
        next(iter(batches))


def test_at_mr_0_a_two_stage_method_trains_both_stages_or_says_why_not(tmp_path: Path) -> None:
    data = tiny_dataset("regression")
    logged: list[str] = []
    config = small_config("segment_pool", **{"output_dir": str(tmp_path / "a")})
    result = run_experiment(config, dataset=data, log=logged.append)
    assert config.missing == MissingProtocol()
    assert set(result.stages) == {"first", "second"}
    config = small_config("zero_fill_pretrained", **{"output_dir": str(tmp_path / "b")})
    result = run_experiment(config, dataset=data, log=logged.append)
    assert set(result.stages) == {"complete"}
    assert any(line.startswith("missing: skipped, nothing is missing") for line in logged)
