"""A sweep's runs as Ray tasks, on a local Ray instance or a cluster (``--executor ray``).

Every run is one task asking for ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs; Ray places it
on a node with them free, sets the task's ``CUDA_VISIBLE_DEVICES`` to its GPUs, and the task uses
as many CPU threads as it asked for CPUs (``train.num_threads`` when set). The dataset goes to
the object store once and every task reads it from there, so the nodes need no copy of the data
files; they need dicmor installed (the same version) and the sweep's output folder on a file
system they share with the driver, with working file locks (local disk on one machine, NFSv4,
Lustre, BeeGFS, …): run folders, the stage-1 cache and ``sweep.json`` are guarded by the same
locks as with ``--workers`` — one task trains a cache entry, the others that need it wait for it
and read it — and the driver alone writes ``sweep.json`` and ``summary.json``.

Ray is an optional dependency: ``pip install "dicmor[ray]"``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from dicmor.config import Config, ConfigError
from dicmor.data.dataset import MultimodalDataset

INSTALL_HINT = (
    "sweep --executor ray needs Ray, which is not installed: "
    'pip install "dicmor[ray]" (or pip install -c constraints.txt ray)'
)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


def default_gpus_per_run(config: Config) -> float:
    """One GPU per run when runs train on CUDA, none otherwise (``auto`` then finds none)."""
    return 1.0 if config.train.device.startswith("cuda") else 0.0


def _train_task(config: Config, dataset: MultimodalDataset, resume: bool, threads: int, label):
    import torch

    from dicmor.experiments.sweep import run_log, train_one

    torch.set_num_threads(threads)
    return train_one(config, dataset, resume, run_log(label))


def run_on_ray(
    jobs: list[tuple[int, Config]],
    dataset: MultimodalDataset,
    resume: bool,
    labels: list[str],
    finish: Callable[[int, dict], None],
    starting: Callable[[str], None],
    *,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_run: float = 1.0,
    gpus_per_run: float = 0.0,
) -> None:
    """Train ``jobs`` as Ray tasks; ``finish`` gets each result as it comes.

    ``address`` is a running cluster's (``auto``, ``ray://host:10001``, ``host:6379``); without
    one, the Ray instance this process already joined, else the one ``RAY_ADDRESS`` names, else
    a new local instance with ``workers × cpus_per_run`` CPUs (all of this machine's without
    ``workers``). On a cluster, ``workers`` caps the runs in flight at once.
    """
    if cpus_per_run <= 0 or gpus_per_run < 0:
        raise ConfigError(
            f"sweep: --cpus-per-run must be > 0 and --gpus-per-run >= 0, got "
            f"{cpus_per_run} and {gpus_per_run}"
        )
    ray = _import_ray()
    started_here = False
    if not ray.is_initialized():
        options: dict[str, Any] = {"include_dashboard": False, "logging_level": "warning"}
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            options["address"] = address
        elif workers is not None:
            options["num_cpus"] = max(1, round(workers * cpus_per_run))
        try:
            ray.init(**options)
        except (ConnectionError, RuntimeError, ValueError) as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            where = address or "a new local instance"
            raise ConfigError(f"sweep: cannot start Ray ({where}): {message}") from None
        started_here = True
    pending: dict[Any, int] = {}
    try:
        threads = jobs[0][1].train.num_threads or max(1, int(cpus_per_run))
        task = ray.remote(_train_task).options(
            num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0
        )
        data = ray.put(dataset)
        limit = workers or len(jobs)
        queue = list(jobs)
        while queue or pending:
            while queue and len(pending) < limit:
                k, config = queue.pop(0)
                starting(labels[k])
                pending[task.remote(config, data, resume, threads, labels[k])] = k
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                finish(pending.pop(ref), ray.get(ref))
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started_here:
            ray.shutdown()
