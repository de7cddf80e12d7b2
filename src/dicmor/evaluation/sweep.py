"""Several methods × missing protocols × seeds, with one table of mean ± std.

For a given protocol and seed, every method trains and is tested on the same masks: masks
depend only on (dataset, split, protocol, seed), never on the method. Each run keeps its own
folder; the sweep writes ``sweep.json`` (every run) and ``summary.json`` (the aggregates).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from dicmor.config import Config
from dicmor.missing.protocols import MissingProtocol
from dicmor.reporting.tables import aggregate, metrics_table
from dicmor.training.run import load_data, run_experiment


def run_sweep(
    base: Config,
    methods: Sequence[str],
    protocols: Sequence[MissingProtocol],
    seeds: Sequence[int],
    *,
    log: Callable[[str], None] = print,
) -> tuple[list[dict], list[dict], str]:
    """Train every (protocol, seed, method); return the runs, the aggregates and the table."""
    dataset = load_data(base.data)
    runs = []
    for protocol in protocols:
        for seed in seeds:
            for method in methods:
                config = base.replace(**{"model.method": method, "train.seed": seed})
                config = Config(
                    config.data, config.model, config.train, protocol, config.output_dir
                )
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
                        "metrics": result.metrics,
                    }
                )
    rows = aggregate(runs, ["protocol", "kind", "rate", "method"])
    table = metrics_table(rows, dataset.task, ["protocol", "method", "n"])
    out = Path(base.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(runs, indent=1))
    summary = {"task": dataset.task, "rows": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return runs, rows, table
