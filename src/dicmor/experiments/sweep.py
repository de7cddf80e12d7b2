"""Several methods × missing protocols × seeds, with one table of mean ± std.

For a given protocol and seed, every method trains and is tested on the same masks: masks
depend only on (dataset, split, protocol, seed), never on the method. Each run keeps its own
folder; the sweep writes ``sweep.json`` (every run, updated after each one) and
``summary.json`` (the aggregates).

A sweep resumes: a run that ``sweep.json`` in the output folder lists as finished, with the
same configuration, data contents and code version, is reused, not trained again, so an
interrupted sweep started again trains only what is left.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from dicmor.config import Config, ConfigError
from dicmor.data import load_data
from dicmor.data.dataset import SPLITS, MultimodalDataset
from dicmor.experiments.run import run_experiment
from dicmor.missing.protocols import MissingProtocol, make_masks
from dicmor.provenance import fingerprint, settings_digest
from dicmor.registry import get_model_class
from dicmor.reporting.tables import aggregate, metrics_table


def _finished_runs(out: Path) -> dict[str, dict]:
    """Runs of an earlier sweep in ``out`` whose folder still holds their metrics, by key."""
    path = out / "sweep.json"
    if not path.is_file():
        return {}
    try:
        runs = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return {
        run["key"]: run
        for run in runs
        if isinstance(run, dict)
        and "key" in run
        and (Path(run.get("run_dir", "")) / "metrics.json").is_file()
    }


def run_sweep(
    base: Config,
    methods: Sequence[str],
    protocols: Sequence[MissingProtocol],
    seeds: Sequence[int],
    *,
    log: Callable[[str], None] = print,
    resume: bool = True,
    dataset: MultimodalDataset | None = None,
) -> tuple[list[dict], list[dict], str]:
    """Train every (protocol, seed, method); return the runs, the aggregates and the table.

    With ``resume`` (the default) runs an earlier sweep in the same output folder finished with
    identical settings are reused. ``dataset`` saves loading ``base.data`` again.
    """
    dataset = dataset if dataset is not None else load_data(base.data)
    plan = _validated_plan(base, methods, protocols, seeds, dataset)
    out = Path(base.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    finished = _finished_runs(out) if resume else {}
    data_digest = fingerprint(dataset, SPLITS)
    runs: list[dict] = []
    for k, config in enumerate(plan, start=1):
        method, protocol, seed = config.model.method, config.missing, config.train.seed
        key = settings_digest(config, data_digest=data_digest)
        where = f"run {k}/{len(plan)}: {method}, {protocol}, seed {seed}"
        if key in finished:
            run = finished[key]
            log(f"== {where}: finished in {run['run_dir']}")
            runs.append(run)
            continue
        log(f"== {where}")
        result = run_experiment(config, dataset=dataset, log=log)
        runs.append(
            {
                "protocol": str(protocol),
                "kind": protocol.kind,
                "rate": protocol.rate,
                "method": method,
                "seed": seed,
                "run_dir": str(result.run_dir.resolve()),
                "key": key,
                "metrics": result.metrics,
            }
        )
        # Written after every run, so that an interrupted sweep can resume and `table` / `plot`
        # work mid-sweep; the earlier runs not redone yet stay listed until then.
        done = {run.get("key") for run in runs}
        pending = [run for k, run in finished.items() if k not in done]
        _write_json(out / "sweep.json", runs + pending)
        _write_json(out / "summary.json", _summary(runs, dataset.task))
    rows = aggregate(runs, ["protocol", "kind", "rate", "method"])
    table = metrics_table(rows, dataset.task, ["protocol", "method", "n"])
    _write_json(out / "sweep.json", runs)
    _write_json(out / "summary.json", _summary(runs, dataset.task))
    return runs, rows, table


def _summary(runs: list[dict], task: str) -> dict:
    return {"task": task, "rows": aggregate(runs, ["protocol", "kind", "rate", "method"])}


def _write_json(path: Path, value: object) -> None:
    """Write whole or not at all: a temporary file renamed over ``path``."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(value, indent=1))
    partial.replace(path)


def _validated_plan(
    base: Config,
    methods: Sequence[str],
    protocols: Sequence[MissingProtocol],
    seeds: Sequence[int],
    dataset: MultimodalDataset,
) -> list[Config]:
    """Every run's config, in order, after checking what can be checked before training:
    no duplicate method, protocol or seed; every method known and its options valid; every
    protocol's masks drawable on this data (a rate it cannot reach fails here)."""
    for what, values in (
        ("methods", list(methods)),
        ("protocols", [str(p) for p in protocols]),
        ("seeds", list(seeds)),
    ):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(f"sweep: {what} given more than once: {', '.join(repeated)}")
    presents = {s: split.present for s, split in dataset.splits.items()}
    for protocol in protocols:
        make_masks(protocol, presents, dataset.modality_names, seeds[0] if seeds else 0)
    plan = []
    for protocol in protocols:
        for seed in seeds:
            for method in methods:
                config = base.replace(**{"model.method": method, "train.seed": seed})
                get_model_class(method)
                plan.append(replace(config, missing=protocol))
    return plan
