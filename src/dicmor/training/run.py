"""One run end to end: data, masks, stages, test metrics, and everything written to its folder.

A run directory holds ``config.yaml`` (resolved), ``masks.npz`` (the availability masks of every
split), ``history.json`` (per-epoch losses of each stage), ``metrics.json`` (test metrics, read
once at the end, plus the code version) and ``checkpoint.pt`` (weights, config and data
description, enough for ``dicmor evaluate`` and ``dicmor predict``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

import dicmor
from dicmor.config import (
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    from_dict,
    to_dict,
)
from dicmor.data import load_dataset
from dicmor.data.batches import Batches
from dicmor.data.dataset import DataError, MultimodalDataset
from dicmor.data.embedded import load_embedded
from dicmor.evaluation.evaluate import evaluate
from dicmor.missing.protocols import MissingProtocol, epoch_mask, make_masks, save_masks
from dicmor.models.base import DataInfo, MultimodalModel, Stage
from dicmor.registry import build_model
from dicmor.training.loop import FitResult, fit

EMBEDDED_NAMES = ("mfeat", "embedded")


@dataclass
class RunResult:
    """The outcome of :func:`run_experiment`."""

    run_dir: Path
    metrics: dict[str, float]
    stages: dict[str, FitResult]
    model: MultimodalModel
    masks: dict[str, np.ndarray]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch; ask PyTorch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; an unavailable CUDA device is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name} but CUDA is not available on this machine")
    return torch.device(name)


def load_data(config: DataConfig) -> MultimodalDataset:
    """The dataset a config names, restricted to its modalities."""
    if config.source in EMBEDDED_NAMES:
        if config.modalities is None:
            return load_embedded(seed=config.split_seed)
        return load_embedded(views=config.modalities, seed=config.split_seed)
    options: dict[str, Any] = {}
    if config.source.endswith(".pkl") and config.seq_len is not None:
        options["seq_len"] = config.seq_len
    dataset = load_dataset(config.source, **options)
    if config.modalities is not None:
        dataset = dataset.select(config.modalities)
    return dataset


def code_version() -> str:
    """The package version and, when run from a git checkout, its commit."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{dicmor.__version__}+{commit}" if commit else dicmor.__version__


def _new_run_dir(config: Config, dataset: MultimodalDataset, name: str | None) -> Path:
    label = name or "-".join(
        [
            time.strftime("%Y%m%d-%H%M%S"),
            dataset.name,
            config.model.method,
            str(config.missing).replace(" ", "").replace("=", ""),
            f"s{config.train.seed}",
        ]
    )
    base = Path(config.output_dir) / label
    run_dir, k = base, 1
    while run_dir.exists():
        k += 1
        run_dir = base.with_name(f"{base.name}-{k}")
    run_dir.mkdir(parents=True)
    return run_dir


def fingerprint(dataset: MultimodalDataset, splits: Sequence[str] = ("train", "valid")) -> str:
    """A digest of the contents of ``splits`` (by default what a complete-data stage learns
    from: the train and valid splits)."""
    digest = hashlib.sha256(repr(dataset.modality_names).encode())
    for name in splits:
        split = dataset.splits[name]
        arrays = [*split.modalities.values(), split.labels, split.present, *split.extras.values()]
        for array in arrays:
            digest.update(repr((array.shape, array.dtype.str)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def settings_digest(config: Config, **extra: Any) -> str:
    """A digest of what a result depends on: ``config`` (less its output folder and progress
    display), the code version and ``extra`` (entries given as ``None`` are left out)."""
    key = to_dict(config)
    key.pop("output_dir")
    key["train"].pop("progress")
    key["code"] = code_version()
    for name, value in extra.items():
        if value is None:
            key.pop(name, None)
        else:
            key[name] = value
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _stage_cache_path(config: Config, dataset: MultimodalDataset, stage: str) -> Path:
    """Where a complete-data stage's weights are cached: keyed by everything but the protocol,
    and by the code version, so weights trained by other code are not reused."""
    dataset_key = [dataset.source, dataset.name, fingerprint(dataset)]
    digest = settings_digest(config, missing=None, dataset=dataset_key, stage=stage)[:16]
    return Path(config.output_dir) / "cache" / f"{config.model.method}-{stage}-{digest}.pt"


def _load_cached(model: MultimodalModel, path: Path, device: torch.device) -> str | None:
    """Load cached stage weights into ``model``; or, leaving ``model`` as it is, say why not."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # any unreadable file: a truncated write, another format
        return f"unreadable: {type(error).__name__}"
    expected = model.state_dict()
    if not isinstance(state, dict) or set(state) != set(expected):
        return "its parameters are not this model's"
    mismatched = [k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if mismatched:
        return f"{mismatched[0]} has another shape"
    model.load_state_dict(state)
    return None


def training_batches(
    dataset: MultimodalDataset,
    masks: dict[str, np.ndarray],
    config: TrainConfig,
    device: torch.device | str = "cpu",
    *,
    protocol: MissingProtocol | None = None,
    simulate_rate: float = 0.0,
) -> tuple[Batches, Batches]:
    """The shuffled train and the ordered valid batches of a stage, with reconstruction targets.

    With ``config.redraw_masks`` and a ``protocol``, the training mask of every epoch is drawn
    anew (:func:`~dicmor.missing.protocols.epoch_mask`); ``simulate_rate > 0`` adds a simulated
    random mask at that rate to every batch (drawn anew every epoch for training, fixed for
    validation).
    """
    names = dataset.modality_names
    train_split, valid_split = dataset.splits["train"], dataset.splits["valid"]
    schedule = None
    if protocol is not None and config.redraw_masks:

        def schedule(epoch: int, order: np.ndarray) -> np.ndarray:
            return epoch_mask(protocol, train_split.present, names, config.seed, epoch, order)

    simulate = simulate_valid = None
    if simulate_rate > 0:
        simulated = MissingProtocol("random", simulate_rate)

        def simulate(epoch: int, order: np.ndarray) -> np.ndarray:
            present = masks["train"]
            return epoch_mask(simulated, present, names, config.seed, epoch, split="simulated")

        fixed = epoch_mask(simulated, masks["valid"], names, config.seed, 0, split="simulated")

        def simulate_valid(epoch: int, order: np.ndarray) -> np.ndarray:
            return fixed

    train = Batches(
        train_split,
        names,
        masks["train"],
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        device=device,
        with_targets=True,
        schedule=schedule,
        simulate=simulate,
    )
    valid = Batches(
        valid_split,
        names,
        masks["valid"],
        config.batch_size,
        device=device,
        with_targets=True,
        simulate=simulate_valid,
    )
    return train, valid


def _fit_stage(
    model: MultimodalModel,
    stage: Stage,
    dataset: MultimodalDataset,
    masks: dict[str, np.ndarray],
    config: Config,
    device: torch.device,
) -> FitResult:
    """Train one stage: complete data or the protocol's masks, the stage's own settings."""
    train, valid = training_batches(
        dataset,
        masks,
        config.train,
        device,
        protocol=None if stage.complete_data else config.missing,
        simulate_rate=stage.simulate_rate if stage.complete_data else 0.0,
    )
    return fit(
        model,
        train,
        valid,
        config.train,
        max_epochs=stage.max_epochs,
        desc=stage.name,
        objective=stage.objective,
        monitor=stage.monitor,
        lr=stage.lr,
    )


def run_experiment(
    config: Config,
    *,
    name: str | None = None,
    dataset: MultimodalDataset | None = None,
    masks: dict[str, np.ndarray] | None = None,
    log: Any = print,
) -> RunResult:
    """Train ``config.model.method`` through its stages, then score the test split once.

    ``masks`` ({split: (N, M) bool}, e.g. another run's ``masks.npz``) replaces the masks the
    protocol would generate, so that several methods train and test on the same missing entries.
    """
    seed_everything(config.train.seed)
    if config.train.num_threads is not None:
        torch.set_num_threads(config.train.num_threads)
    device = resolve_device(config.train.device)
    dataset = dataset if dataset is not None else load_data(config.data)
    for note in dataset.notes:
        log(f"data: {note}")
    names = dataset.modality_names
    presents = {s: split.present for s, split in dataset.splits.items()}
    if masks is None:
        masks = make_masks(config.missing, presents, names, config.train.seed)
    else:
        for split_name, present in presents.items():
            given = masks.get(split_name)
            if given is None or given.shape != present.shape:
                raise DataError(
                    f"masks: split '{split_name}' needs a bool mask of shape {present.shape}, "
                    f"got {None if given is None else given.shape}"
                )
        masks = {s: masks[s] & presents[s] for s in presents}
    run_dir = _new_run_dir(config, dataset, name)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    save_masks(run_dir / "masks.npz", masks, names, config.missing, config.train.seed)

    info = DataInfo.from_dataset(dataset)
    model = build_model(info, config.model).to(device)
    # Training draws (dropout) start from the seed again, whatever the construction drew: methods
    # that differ only in modules the data never reach (recovery when nothing is missing) then
    # train identically.
    seed_everything(config.train.seed)
    train_cfg = config.train
    stages: dict[str, FitResult] = {}
    nothing_missing = all(np.array_equal(masks[s], presents[s]) for s in ("train", "valid"))
    trained_complete = False
    for stage in model.stages():
        if nothing_missing and trained_complete and not stage.complete_data:
            # Under no missing data this stage would train on what the complete stage saw.
            log(f"{stage.name}: nothing is missing, stage skipped")
            continue
        trained_complete = trained_complete or stage.complete_data
        model.begin_stage(stage)
        stage_masks = presents if stage.complete_data else masks
        cache = _stage_cache_path(config, dataset, stage.name) if stage.complete_data else None
        if cache is not None and cache.exists():
            problem = _load_cached(model, cache, device)
            if problem is None:
                log(f"{stage.name}: reusing cached weights {cache}")
                continue
            log(f"{stage.name}: not reusing {cache} ({problem}); training the stage again")
        result = _fit_stage(model, stage, dataset, stage_masks, config, device)
        stages[stage.name] = result
        log(
            f"{stage.name}: best epoch {result.best_epoch}/{result.epochs_run}, "
            f"valid loss {result.best_valid_loss:.4f}"
        )
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            # Written whole or not at all: an interrupted run leaves no truncated cache entry.
            partial = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
            torch.save(model.state_dict(), partial)
            partial.replace(cache)

    metrics, predictions = evaluate(
        model,
        dataset.splits["test"],
        names,
        masks["test"],
        batch_size=train_cfg.batch_size,
        device=device,
    )
    history = {k: {"best_epoch": v.best_epoch, "epochs": v.history} for k, v in stages.items()}
    (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    summary = {
        "metrics": metrics,
        "dataset": dataset.name,
        "method": config.model.method,
        "protocol": str(config.missing),
        "seed": config.train.seed,
        "version": code_version(),
    }
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    np.save(run_dir / "test_predictions.npy", predictions)
    save_checkpoint(run_dir / "checkpoint.pt", model, config)
    return RunResult(run_dir, metrics, stages, model, masks)


def save_checkpoint(path: Path, model: MultimodalModel, config: Config) -> None:
    """Weights, the resolved config and the data description, for later use."""
    torch.save(
        {
            "config": to_dict(config),
            "info": asdict(model.info),
            "state_dict": model.state_dict(),
            "version": code_version(),
        },
        path,
    )


def load_checkpoint(
    path: Path | str, device: torch.device | str = "cpu"
) -> tuple[MultimodalModel, Config]:
    """Rebuild a model saved by :func:`save_checkpoint`."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint here")
    payload = torch.load(path, map_location=device, weights_only=True)
    config = from_dict(Config, payload["config"])
    info_fields = dict(payload["info"])
    info_fields["modality_names"] = tuple(info_fields["modality_names"])
    info = DataInfo(**info_fields)
    model = build_model(info, from_dict(ModelConfig, payload["config"]["model"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), config
