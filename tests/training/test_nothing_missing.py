"""Methods that differ only in recovery train identically when nothing is missing."""

from __future__ import annotations

import dataclasses
import json

from tests.conftest import small_config

from dicmor.data.synthetic import make_classification_dataset
from dicmor.experiments.run import run_experiment
from dicmor.missing.protocols import MissingProtocol

VARIANTS = (
    ("zero_fill_pretrained", {}),
    ("cross_regression", {}),
    ("dicmor", {}),
    ("dicmor", {"model.dicmor.train_flows": False}),
    ("dicmor", {"model.recovery.stage1_recovery_rate": 0.5}),
)


def test_recovering_methods_match_zero_fill_pretrained_at_mr_0(tmp_path) -> None:
    shapes = {"a": (4, 6), "b": (4, 6), "c": (4, 6)}
    data = make_classification_dataset(120, num_classes=3, modalities=shapes, shared_factors=3)
    results = []
    for method, extra in VARIANTS:
        config = small_config(method, output_dir=str(tmp_path), **{"train.max_epochs": 3, **extra})
        config = dataclasses.replace(config, missing=MissingProtocol())
        result = run_experiment(config, dataset=data, log=lambda _: None)
        assert list(result.stages) == ["complete"]
        metrics = json.loads((result.run_dir / "metrics.json").read_text())["metrics"]
        results.append((metrics, result.model.fusion.head.weight.detach().clone()))
    reference, head = results[0]
    for (method, extra), (metrics, weights) in zip(VARIANTS, results, strict=True):
        assert metrics == reference, (method, extra)
        assert (weights == head).all(), (method, extra)
