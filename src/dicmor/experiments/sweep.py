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
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from dicmor.config import Config
from dicmor.data import load_data
from dicmor.data.dataset import SPLITS, MultimodalDataset
from dicmor.experiments.run import run_experiment
from dicmor.missing.protocols import MissingProtocol
from dicmor.provenance import fingerprint, settings_digest
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
    out = Path(base.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    finished = _finished_runs(out) if resume else {}
    data_digest = fingerprint(dataset, SPLITS)
    runs = []
    for protocol in protocols:
        for seed in seeds:
            for method in methods:
                config = base.replace(**{"model.method": method, "train.seed": seed})
                config = replace(config, missing=protocol)
                key = settings_digest(config, data_digest=data_digest)
                if key in finished:
                    run = finished[key]
                    log(f"== {method}, {protocol}, seed {seed}: finished in {run['run_dir']}")
                    runs.append(run)
                    continue
                log(f"== {method}, {protocol}, seed {seed}")
                result = run_experiment(config, dataset=dataset, log=log)
                runs.append(
                    {
                        "protocol": str(protocol),
                        "kind": protocol.kind,
                        "rate": protocol.rate,
                        "method": method,
                        "seed": seed,
                        "run_dir": str(result.run_dir),
                        "key": key,
                        "metrics": result.metrics,
                    }
                )
                # Written after every run, so that an interrupted sweep can resume; the earlier
                # runs not redone yet stay listed until then.
                done = {run.get("key") for run in runs}
                pending = [run for k, run in finished.items() if k not in done]
                (out / "sweep.json").write_text(json.dumps(runs + pending, indent=1))
    rows = aggregate(runs, ["protocol", "kind", "rate", "method"])
    table = metrics_table(rows, dataset.task, ["protocol", "method", "n"])
    (out / "sweep.json").write_text(json.dumps(runs, indent=1))
    summary = {"task": dataset.task, "rows": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return runs, rows, table
