"""Several methods × missing protocols × seeds, with one table of mean ± std.

For a given protocol and seed, every method trains and is tested on the same masks: masks
depend only on (dataset, split, protocol, seed), never on the method. Each run keeps its own
folder; the sweep writes ``sweep.json`` (every run, updated after each one) and
``summary.json`` (the aggregates).

A sweep resumes: a run that ``sweep.json`` in the output folder lists as finished, with the
same configuration, data contents and code version, is reused, not trained again, and a run
that was interrupted resumes from its last epoch, so an interrupted sweep started again trains
only what is left, to the same results.

Several sweeps may write one folder at once: ``sweep.json`` is read, merged and replaced under a
lock, one entry per (protocol, method, seed), the latest run's.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from filelock import FileLock

from dicmor.config import Config, ConfigError
from dicmor.data import load_data
from dicmor.data.dataset import SPLITS, MultimodalDataset
from dicmor.experiments.run import run_experiment
from dicmor.missing.protocols import MissingProtocol, make_masks
from dicmor.provenance import fingerprint, settings_digest
from dicmor.registry import get_model_class
from dicmor.reporting.tables import aggregate, metrics_table


def _read_runs(out: Path) -> list[dict]:
    """The entries of ``out/sweep.json``; none if it is absent or unreadable."""
    try:
        runs = json.loads((out / "sweep.json").read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(runs, list):
        return []
    return [run for run in runs if isinstance(run, dict) and "key" in run]


def _finished_runs(out: Path) -> dict[str, dict]:
    """Runs of an earlier sweep in ``out`` whose folder still holds their metrics, by key."""
    return {
        run["key"]: run
        for run in _read_runs(out)
        if (Path(str(run.get("run_dir", ""))) / "metrics.json").is_file()
    }


def _slot(run: dict) -> tuple:
    return (run.get("protocol"), run.get("method"), run.get("seed"))


def _record(out: Path, run: dict, task: str) -> list[dict]:
    """Add ``run`` to ``out/sweep.json`` (replacing the entry of its protocol, method and seed)
    and rewrite ``summary.json``, under the folder's lock; returns every entry."""
    with FileLock(out / ".sweep.lock"):
        runs = [other for other in _read_runs(out) if _slot(other) != _slot(run)] + [run]
        _write_json(out / "sweep.json", runs)
        _write_json(out / "summary.json", _summary(runs, task))
    return runs


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
    identical settings are reused and unfinished ones resumed; without, every run is trained
    from the start. ``dataset`` saves loading ``base.data`` again. The table is of this sweep's
    runs; ``summary.json`` aggregates every run ``sweep.json`` lists.
    """
    if dataset is None:
        dataset = load_data(base.data)
        for note in dataset.notes:
            log(f"data: {note}")
    plan = _validated_plan(base, methods, protocols, seeds, dataset)
    out = Path(base.output_dir).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"output_dir {out}: not a folder") from None
    finished = _finished_runs(out) if resume else {}
    data_digest = fingerprint(dataset, SPLITS)
    keys = [settings_digest(config, data_digest=data_digest) for config in plan]
    runs: list[dict] = []
    started, trained, training_seconds = time.perf_counter(), 0, 0.0
    for k, (config, key) in enumerate(zip(plan, keys, strict=True), start=1):
        method, protocol, seed = config.model.method, config.missing, config.train.seed
        where = f"run {k}/{len(plan)}: {method}, {protocol}, seed {seed}"
        if key in finished:
            run = finished[key]
            log(f"== {where}: finished in {run['run_dir']}")
            runs.append(run)
            _record(out, run, dataset.task)
            continue
        elapsed = time.perf_counter() - started
        eta = ""
        if trained:
            left = sum(1 for other in keys[k - 1 :] if other not in finished)
            eta = f", ETA {_duration(training_seconds / trained * left)}"
        log(f"== {where} (elapsed {_duration(elapsed)}{eta})")
        run_started = time.perf_counter()
        result = run_experiment(
            replace(config, output_dir=str(out)), dataset=dataset, log=log, restart=not resume
        )
        training_seconds += time.perf_counter() - run_started
        trained += 1
        run = {
            "protocol": str(protocol),
            "kind": protocol.kind,
            "rate": protocol.rate,
            "method": method,
            "seed": seed,
            "run_dir": str(result.run_dir.resolve()),
            "key": key,
            "metrics": result.metrics,
        }
        runs.append(run)
        # Recorded after every run, so that an interrupted sweep can resume and `table` / `plot`
        # work mid-sweep.
        _record(out, run, dataset.task)
    rows = aggregate(runs, ["protocol", "kind", "rate", "method"])
    table = metrics_table(rows, dataset.task, ["protocol", "method", "n"])
    return runs, rows, table


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


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
