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
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import torch
from filelock import FileLock

from dicmor.config import Config, ConfigError
from dicmor.data import load_data
from dicmor.data.dataset import SPLITS, MultimodalDataset
from dicmor.experiments.run import run_experiment
from dicmor.missing.protocols import MissingProtocol, make_masks
from dicmor.outputs import write_text
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


def _record_in_order(out: Path, runs: list[dict], task: str) -> None:
    """Rewrite ``sweep.json`` and ``summary.json`` with ``runs`` in the sweep's order, after the
    other entries, so that a parallel sweep writes the files of the serial one."""
    with FileLock(out / ".sweep.lock"):
        slots = {_slot(run) for run in runs}
        every = [other for other in _read_runs(out) if _slot(other) not in slots] + runs
        _write_json(out / "sweep.json", every)
        _write_json(out / "summary.json", _summary(every, task))


def run_sweep(
    base: Config,
    methods: Sequence[str],
    protocols: Sequence[MissingProtocol],
    seeds: Sequence[int],
    *,
    log: Callable[[str], None] = print,
    resume: bool = True,
    dataset: MultimodalDataset | None = None,
    workers: int | None = None,
    executor: str = "process",
    address: str | None = None,
    cpus_per_run: float | None = None,
    gpus_per_run: float | None = None,
) -> tuple[list[dict], list[dict], str]:
    """Train every (protocol, seed, method); return the runs, the aggregates and the table.

    With ``resume`` (the default) runs an earlier sweep in the same output folder finished with
    identical settings are reused and unfinished ones resumed; without, every run is trained
    from the start. ``dataset`` saves loading ``base.data`` again. The table is of this sweep's
    runs; ``summary.json`` aggregates every run ``sweep.json`` lists.

    ``workers`` > 1 trains that many runs at once in separate processes on this machine. That
    gives the runs of the serial sweep: each run depends only on its config, data and masks, and
    a stage-1 cache entry is trained by one process while the others that need it wait for it
    (see :func:`~dicmor.training.stages.train_stages`). Bit-identical results need the same
    thread count as the serial sweep (``train.num_threads``); by default each worker takes its
    share of the CPU cores.

    ``executor="ray"`` makes every run a Ray task asking for ``cpus_per_run`` CPUs (default
    ``train.num_threads``, else 1) and ``gpus_per_run`` GPUs (default 1 on CUDA, else 0), on the
    Ray cluster at ``address`` or a local instance with ``workers`` runs at once (see
    :mod:`dicmor.experiments.ray_runs`); the results are again the serial sweep's.
    """
    if workers is not None and workers < 1:
        raise ConfigError(f"sweep: --workers must be >= 1, got {workers}")
    if executor not in ("process", "ray"):
        raise ConfigError(f"sweep: --executor must be 'process' or 'ray', got {executor!r}")
    if executor == "process" and (address or cpus_per_run or gpus_per_run is not None):
        raise ConfigError("sweep: --address, --cpus-per-run and --gpus-per-run need --executor ray")
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
    labels = [
        f"run {k}/{len(plan)}: {c.model.method}, {c.missing}, seed {c.train.seed}"
        for k, c in enumerate(plan, start=1)
    ]
    todo = []
    for k, key in enumerate(keys):
        if key in finished:
            log(f"== {labels[k]}: finished in {finished[key]['run_dir']}")
            _record(out, finished[key], dataset.task)
        else:
            todo.append(k)
    progress = _Progress(log, len(todo))
    done: dict[int, dict] = {}

    def finish(k: int, result: dict) -> None:
        run = {**result, "key": keys[k]}
        done[k] = run
        # Recorded after every run, so that an interrupted sweep can resume and `table` / `plot`
        # work mid-sweep.
        _record(out, run, dataset.task)
        progress.finished(labels[k])

    jobs = [(k, replace(plan[k], output_dir=str(out))) for k in todo]
    if executor == "ray" and jobs:
        from dicmor.experiments.ray_runs import default_gpus_per_run, run_on_ray

        run_on_ray(
            jobs,
            dataset,
            resume,
            labels,
            finish,
            progress.starting,
            address=address,
            workers=workers,
            cpus_per_run=cpus_per_run or base.train.num_threads or 1.0,
            gpus_per_run=default_gpus_per_run(base) if gpus_per_run is None else gpus_per_run,
        )
    elif (workers or 1) > 1 and len(jobs) > 1:
        _run_in_processes(jobs, dataset, resume, labels, finish, progress, workers or 1)
    else:
        for k, config in jobs:
            progress.starting(labels[k])
            finish(k, train_one(config, dataset, resume, log))
    runs = [done.get(k) or finished[keys[k]] for k in range(len(plan))]
    if len(done) > 1:
        _record_in_order(out, runs, dataset.task)  # parallel runs finish in any order
    rows = aggregate(runs, ["protocol", "kind", "rate", "method"])
    table = metrics_table(rows, dataset.task, ["protocol", "method", "n"])
    return runs, rows, table


def train_one(
    config: Config, dataset: MultimodalDataset, resume: bool, log: Callable[[str], None]
) -> dict:
    """Train (or resume) one run of a sweep; its ``sweep.json`` entry, less the key."""
    result = run_experiment(config, dataset=dataset, log=log, restart=not resume)
    protocol = config.missing
    return {
        "protocol": str(protocol),
        "kind": protocol.kind,
        "rate": protocol.rate,
        "method": config.model.method,
        "seed": config.train.seed,
        "run_dir": str(result.run_dir.resolve()),
        "metrics": result.metrics,
    }


class _Progress:
    """``== run k/N`` lines with the time elapsed and an estimate of what is left."""

    def __init__(self, log: Callable[[str], None], total: int) -> None:
        self.log, self.total, self.count = log, total, 0
        self.started = time.perf_counter()

    def _eta(self) -> str:
        if not self.count:
            return ""
        elapsed = time.perf_counter() - self.started
        return f", ETA {_duration(elapsed / self.count * (self.total - self.count))}"

    def starting(self, label: str) -> None:
        elapsed = time.perf_counter() - self.started
        self.log(f"== {label} (elapsed {_duration(elapsed)}{self._eta()})")

    def finished(self, label: str) -> None:
        self.count += 1
        self.log(f"== {label} done, {self.count}/{self.total} trained{self._eta()}")


# What one worker process holds: the dataset, loaded once, and how it logs.
_WORKER: dict = {}


def _worker_start(dataset: MultimodalDataset, threads: int, counter, gpus: int) -> None:
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
    torch.set_num_threads(threads)
    _WORKER["dataset"] = dataset


def run_log(label: str) -> Callable[[str], None]:
    """How a run trained in another process logs: its lines, prefixed ``[run k/N]``."""
    prefix = f"[{label.split(':')[0]}]"

    def log(message: str) -> None:
        print(f"{prefix} {message}", flush=True)

    return log


def _worker_run(config: Config, resume: bool, label: str) -> dict:
    return train_one(config, _WORKER["dataset"], resume, run_log(label))


def _run_in_processes(
    jobs: list[tuple[int, Config]],
    dataset: MultimodalDataset,
    resume: bool,
    labels: list[str],
    finish: Callable[[int, dict], None],
    progress: _Progress,
    workers: int,
) -> None:
    """Run ``jobs`` in ``workers`` spawned processes, each with its share of the CPU threads
    (``train.num_threads`` when set) and, on CUDA, its own GPU in turn."""
    context = multiprocessing.get_context("spawn")
    threads = jobs[0][1].train.num_threads or max(1, (os.cpu_count() or 1) // workers)
    gpus = torch.cuda.device_count() if jobs[0][1].train.device != "cpu" else 0
    counter = context.Value("i", 0)
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=context,
        initializer=_worker_start,
        initargs=(dataset, threads, counter, gpus),
    ) as pool:
        futures = {}
        for k, config in jobs:
            progress.starting(labels[k])
            futures[pool.submit(_worker_run, config, resume, labels[k])] = k
        for future in as_completed(futures):
            finish(futures[future], future.result())


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _summary(runs: list[dict], task: str) -> dict:
    return {"task": task, "rows": aggregate(runs, ["protocol", "kind", "rate", "method"])}


def _write_json(path: Path, value: object) -> None:
    write_text(path, json.dumps(value, indent=1))


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
