"""One run end to end: data, masks, stages, test metrics, and everything written to its folder.

A run directory holds ``config.yaml`` (resolved), ``masks.npz`` (the availability masks of every
split), ``run.json`` (the run's identity and status: ``training``, ``failed`` or ``finished``),
``state.pt`` while it trains (see :mod:`dicmor.training.state`), ``history.json`` (per-epoch
losses of each stage), ``test_predictions.npy``, ``recovered.npz`` (for methods that recover
features: the test split's recovered entries and the real ones, see
:func:`~dicmor.reporting.gaps.save_recovered`), ``checkpoint.pt`` (weights, config and data
description, enough for ``dicmor evaluate`` and ``dicmor predict``) and, written last,
``metrics.json`` (test metrics, read once at the end, plus the code version and the run's wall
time): a folder without it is not a finished run.

Running the same thing again (same settings, data, masks and code version) where an unfinished
run of it is left, e.g. after the process was killed, resumes that run in its folder from its
last epoch; ``restart=True`` starts it over there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from filelock import FileLock, Timeout

from dicmor.config import Config, ConfigError, to_dict
from dicmor.data import load_data
from dicmor.data.dataset import SPLITS, DataError, MultimodalDataset
from dicmor.evaluation.evaluate import evaluate
from dicmor.missing.protocols import make_masks, save_masks
from dicmor.models.base import DataInfo, MultimodalModel
from dicmor.outputs import writable_folder, write_text
from dicmor.provenance import code_version, fingerprint, settings_digest
from dicmor.registry import build_model
from dicmor.reporting.gaps import recovered_entries, save_recovered
from dicmor.training import distributed
from dicmor.training.checkpoints import save_checkpoint
from dicmor.training.loop import FitResult
from dicmor.training.stages import resolve_device, seed_everything, train_stages
from dicmor.training.state import STATE_FILE, load_state, save_state


@dataclass
class RunResult:
    """The outcome of :func:`run_experiment`."""

    run_dir: Path
    metrics: dict[str, float]
    stages: dict[str, FitResult]
    model: MultimodalModel
    masks: dict[str, np.ndarray]


RUN_FILE = "run.json"


def _identity(config: Config, dataset: MultimodalDataset, masks: dict[str, np.ndarray]) -> dict:
    """What a run's result depends on, each as a digest: the settings, the data, the masks and
    the code version."""
    masks_digest = hashlib.sha256()
    for split in sorted(masks):
        masks_digest.update(split.encode() + np.ascontiguousarray(masks[split]).tobytes())
    return {
        "config": settings_digest(config, code=None),
        "data": fingerprint(dataset, SPLITS),
        "masks": masks_digest.hexdigest(),
        "version": code_version(),
    }


def _read_run_file(run_dir: Path) -> dict | None:
    try:
        record = json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _checked_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError(
            f"run name {name!r}: must be one folder name inside the output folder "
            "(not empty, no '/', not '..')"
        )
    return name


class _RunFolder:
    """A run's folder, held by this process (a lock other runs respect) while it trains."""

    def __init__(self, path: Path, lock: FileLock) -> None:
        self.path, self.lock = path, lock

    @classmethod
    def claim(cls, path: Path) -> _RunFolder | None:
        """Hold ``path`` (an existing folder), or ``None`` when another process holds it."""
        lock = FileLock(path / ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return None
        return cls(path, lock)

    def clear(self) -> None:
        """Remove what an earlier attempt left, to start over."""
        for entry in self.path.iterdir():
            if entry.name != ".lock":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def release(self) -> None:
        self.lock.release()


def _differences(record: dict, identity: dict) -> list[str]:
    names = {"config": "settings", "data": "data", "masks": "masks", "version": "code version"}
    return [names[k] for k in names if record.get(k) != identity[k]]


def _run_folder(
    config: Config,
    dataset: MultimodalDataset,
    name: str | None,
    identity: dict,
    key: str,
    restart: bool,
) -> tuple[_RunFolder, bool]:
    """The folder this run trains in, held, and whether an earlier attempt of it is left there.

    Named: ``output_dir/name``, unless that holds a finished run (then ``name-2``, …). An
    unfinished run there of other settings, data, masks or code is refused unless ``restart``.
    Unnamed: an unfinished run of the same identity in ``output_dir`` if there is one not held
    by another process, else a new folder named after time, data, method, protocol and seed.
    """
    out = writable_folder(config.output_dir, create=False)
    if name is not None:
        base = out / _checked_name(name)
        record = _read_run_file(base)
        if record is not None and record.get("status") != "finished":
            differs = _differences(record, identity)
            if differs and not restart:
                raise ConfigError(
                    f"{base}: holds an unfinished run with other {', '.join(differs)}; rerun "
                    "with --restart to start over there, or choose another --name"
                )
            folder = _RunFolder.claim(base)
            if folder is None:
                raise ConfigError(f"{base}: this run is being trained by another process")
            if restart or differs:
                folder.clear()
            return folder, not (restart or differs)
    else:
        base = out / "-".join(
            [
                time.strftime("%Y%m%d-%H%M%S"),
                dataset.name,
                config.model.method,
                str(config.missing).replace(" ", "").replace("=", ""),
                f"s{config.train.seed}",
            ]
        )
        if out.is_dir():
            for candidate in sorted(out.iterdir()):
                record = _read_run_file(candidate)
                if record is None or record.get("status") == "finished":
                    continue
                if record.get("key") != key:
                    continue
                folder = _RunFolder.claim(candidate)
                if folder is not None:
                    if restart:
                        folder.clear()
                    return folder, not restart
    run_dir, k = base, 1
    while True:
        try:
            run_dir.mkdir(parents=True)
        except FileExistsError:
            k += 1
            run_dir = base.with_name(f"{base.name}-{k}")
            continue
        except (NotADirectoryError, PermissionError) as error:
            raise ConfigError(
                f"{run_dir}: cannot create the run folder ({error.strerror})"
            ) from None
        folder = _RunFolder.claim(run_dir)
        if folder is not None:
            return folder, False


def _checked_masks(
    masks: dict[str, np.ndarray],
    presents: dict[str, np.ndarray],
    names: tuple[str, ...],
    mask_names: tuple[str, ...] | None,
) -> dict[str, np.ndarray]:
    """Given masks, one per split of the data's shape and for the data's modalities, limited to
    what the data has; every sample keeps at least one modality."""
    if mask_names is not None and tuple(mask_names) != tuple(names):
        raise DataError(
            f"masks: they are for modalities {list(mask_names)}, but the data has {list(names)}"
        )
    for split_name, present in presents.items():
        given = masks.get(split_name)
        if given is None or given.shape != present.shape or given.dtype != bool:
            raise DataError(
                f"masks: split '{split_name}' needs a bool mask of shape {present.shape}, "
                f"got {None if given is None else given.shape}"
            )
    checked = {s: masks[s] & presents[s] for s in presents}
    for split_name, mask in checked.items():
        empty = int((~mask.any(axis=1)).sum())
        if empty:
            raise DataError(
                f"masks: split '{split_name}' leaves {empty} of {len(mask)} samples with no "
                "available modality"
            )
    return checked


def run_experiment(
    config: Config,
    *,
    name: str | None = None,
    dataset: MultimodalDataset | None = None,
    masks: dict[str, np.ndarray] | None = None,
    mask_names: tuple[str, ...] | None = None,
    log: Callable[[str], None] = print,
    restart: bool = False,
) -> RunResult:
    """Train ``config.model.method`` through its stages, then score the test split once.

    ``masks`` ({split: (N, M) bool}, e.g. another run's ``masks.npz``) replaces the masks the
    protocol would generate, so that several methods train and test on the same missing entries;
    ``mask_names``, the modalities they were saved for, must then be the data's.
    An unfinished run of the same settings, data, masks and code version (``name``'s, or any in
    the output folder when unnamed) is resumed where it stopped; ``restart`` starts it over.
    A run that fails before its first epoch leaves no folder; one that fails later is marked
    ``failed`` in its ``run.json`` and resumes from its last epoch when run again.
    """
    started = time.perf_counter()
    seed_everything(config.train.seed)
    if config.train.num_threads is not None:
        torch.set_num_threads(config.train.num_threads)
    world = distributed.start(config.train.device)
    device = resolve_device(config.train.device)
    if world is not None and not world.main:
        log = _quiet
    if dataset is None:
        dataset = load_data(config.data)
        for note in dataset.notes:
            log(f"data: {note}")
    names = dataset.modality_names
    presents = {s: split.present for s, split in dataset.splits.items()}
    if masks is None:
        masks = make_masks(config.missing, presents, names, config.train.seed)
    else:
        masks = _checked_masks(masks, presents, names, mask_names)
    identity = _identity(config, dataset, masks)
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    if world is not None and not world.main:
        return _other_rank(config, dataset, masks, device, key)
    try:
        folder, earlier = _run_folder(config, dataset, name, identity, key, restart)
    except Exception as error:
        if world is not None:  # the other ranks stop with the same message
            distributed.broadcast((None, False, str(error).splitlines()[0]))
        raise
    run_dir = folder.path
    if world is not None:
        distributed.broadcast((str(run_dir), earlier, None))
    try:
        saved = None
        if earlier:
            saved, problem = load_state(run_dir, key)
            if problem is not None:
                log(problem)
        record = {"status": "training", "key": key, **identity}
        write_text(run_dir / RUN_FILE, json.dumps(record, indent=1))
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        save_masks(run_dir / "masks.npz", masks, names, config.missing, config.train.seed)
        if saved is not None:
            log(f"resuming {run_dir}")
        metrics = _train_and_test(config, dataset, masks, device, run_dir, key, saved, log, started)
        record["status"] = "finished"
        (run_dir / STATE_FILE).unlink(missing_ok=True)
        write_text(run_dir / RUN_FILE, json.dumps(record, indent=1))
    except BaseException as error:
        if not (run_dir / STATE_FILE).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            failed = {"status": "failed", "key": key, **identity, "error": reason}
            write_text(run_dir / RUN_FILE, json.dumps(failed, indent=1))
        raise
    finally:
        folder.release()
    return RunResult(run_dir, *metrics)


def _quiet(message: str) -> None:
    """The log of every rank but the first."""


def _other_rank(
    config: Config,
    dataset: MultimodalDataset,
    masks: dict[str, np.ndarray],
    device: torch.device,
    key: str,
) -> RunResult:
    """A rank but the first of a run on several (see :mod:`dicmor.training.distributed`): rank 0
    holds the run folder and says where it is (or why there is none); this rank resumes from
    the state rank 0 left there, trains its share of every batch and writes nothing. Its result
    has no metrics: rank 0 alone scores the test split."""
    run_dir, earlier, problem = distributed.broadcast(None)
    if problem is not None:
        raise ConfigError(problem)
    saved = load_state(Path(run_dir), key)[0] if earlier else None
    model = build_model(DataInfo.from_dataset(dataset), config.model).to(device)
    stages = train_stages(model, dataset, masks, config, device, _quiet, saved=saved)
    return RunResult(Path(run_dir), {}, stages, model, masks)


def _train_and_test(
    config: Config,
    dataset: MultimodalDataset,
    masks: dict[str, np.ndarray],
    device: torch.device,
    run_dir: Path,
    key: str,
    saved: dict | None,
    log: Callable[[str], None],
    started: float,
) -> tuple[dict[str, float], dict[str, FitResult], MultimodalModel, dict[str, np.ndarray]]:
    """Train (or resume), score the test split, write the run's outputs, ``metrics.json`` last."""
    names = dataset.modality_names
    model = build_model(DataInfo.from_dataset(dataset), config.model).to(device)
    stages = train_stages(
        model,
        dataset,
        masks,
        config,
        device,
        log,
        save=lambda state: save_state(run_dir, key, state),
        saved=saved,
    )
    # Scoring draws from the seed again, however training went (resumed, cached stages).
    seed_everything(config.train.seed)
    metrics, predictions = evaluate(
        model,
        dataset.splits["test"],
        names,
        masks["test"],
        batch_size=config.train.batch_size,
        device=device,
    )
    history = {k: {"best_epoch": v.best_epoch, "epochs": v.history} for k, v in stages.items()}
    write_text(run_dir / "history.json", json.dumps(history, indent=1))
    np.save(run_dir / "test_predictions.npy", predictions)
    if config.train.save_recovered and hasattr(model, "target_features"):
        entries = recovered_entries(
            model, dataset.splits["test"], names, masks["test"], task=dataset.task
        )
        save_recovered(run_dir / "recovered.npz", entries, masks["test"])
    save_checkpoint(run_dir / "checkpoint.pt", model, config)
    summary = {
        "metrics": metrics,
        "dataset": dataset.name,
        "method": config.model.method,
        "protocol": str(config.missing),
        "seed": config.train.seed,
        "version": code_version(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_text(run_dir / "metrics.json", json.dumps(summary, indent=1))
    return metrics, stages, model, masks
