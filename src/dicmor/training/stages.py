"""A method's stages trained one after another: batches, settings and the stage cache.

Each `~dicmor.models.base.Stage` says what it trains and on what; this module turns it into
batches (complete data or the protocol's masks, the stage's batch size, the method's batching)
and a call of the one training loop, and reuses a complete-data stage's cached weights.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from dicmor.config import Config, ConfigError, TrainConfig
from dicmor.data.batches import Batches, Batching
from dicmor.data.dataset import MultimodalDataset
from dicmor.missing.protocols import MissingProtocol, epoch_mask
from dicmor.models.base import MultimodalModel, Stage
from dicmor.training.checkpoints import load_cached, save_cached, stage_cache_path
from dicmor.training.loop import FitResult, fit


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


def training_batches(
    dataset: MultimodalDataset,
    masks: dict[str, np.ndarray],
    config: TrainConfig,
    device: torch.device | str = "cpu",
    *,
    protocol: MissingProtocol | None = None,
    simulate_rate: float = 0.0,
    batching: Batching | None = None,
) -> tuple[Batches, Batches]:
    """The shuffled train and the ordered valid batches of a stage, with reconstruction targets.

    With ``config.redraw_masks`` and a ``protocol``, the training mask of every epoch is drawn
    anew (:func:`~dicmor.missing.protocols.epoch_mask`); ``simulate_rate > 0`` adds a simulated
    random mask at that rate to every batch (drawn anew every epoch for training, fixed for
    validation). ``batching`` is the method's (default: consecutive samples).
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

    common = {"device": device, "with_targets": True, "batching": batching}
    train = Batches(
        train_split,
        names,
        masks["train"],
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        schedule=schedule,
        simulate=simulate,
        **common,
    )
    valid = Batches(
        valid_split, names, masks["valid"], config.batch_size, simulate=simulate_valid, **common
    )
    return train, valid


def fit_stage(
    model: MultimodalModel,
    stage: Stage,
    dataset: MultimodalDataset,
    masks: dict[str, np.ndarray],
    config: Config,
    device: torch.device,
) -> FitResult:
    """Train one stage: complete data or the protocol's masks, the stage's own settings."""
    train_config = config.train
    if stage.batch_size is not None:
        train_config = replace(train_config, batch_size=stage.batch_size)
    train, valid = training_batches(
        dataset,
        masks,
        train_config,
        device,
        protocol=None if stage.complete_data else config.missing,
        simulate_rate=stage.simulate_rate if stage.complete_data else 0.0,
        batching=model.batching(),
    )
    return fit(
        model,
        train,
        valid,
        train_config,
        max_epochs=stage.max_epochs,
        desc=stage.name,
        objective=stage.objective,
        monitor=stage.monitor,
        lr=stage.lr,
        optimizer_name=stage.optimizer,
        weight_decay=stage.weight_decay,
    )


def train_stages(
    model: MultimodalModel,
    dataset: MultimodalDataset,
    masks: dict[str, np.ndarray],
    config: Config,
    device: torch.device,
    log: Callable[[str], None] = print,
) -> dict[str, FitResult]:
    """Train every stage of ``model`` in order; returns each trained stage's result.

    A complete-data stage reuses cached weights when there are any, and caches its own. A stage
    that declares ``skip_when_complete`` is skipped, with its reason logged, when nothing is
    missing in the training and validation data; every other stage runs.
    """
    presents = {s: split.present for s, split in dataset.splits.items()}
    nothing_missing = all(np.array_equal(masks[s], presents[s]) for s in ("train", "valid"))
    results: dict[str, FitResult] = {}
    for stage in model.stages():
        if nothing_missing and stage.skip_when_complete is not None:
            log(f"{stage.name}: skipped, {stage.skip_when_complete}")
            continue
        model.begin_stage(stage)
        stage_masks = presents if stage.complete_data else masks
        cache = stage_cache_path(config, dataset, stage.name) if stage.complete_data else None
        if cache is not None and cache.exists():
            problem = load_cached(model, cache, device)
            if problem is None:
                log(f"{stage.name}: reusing cached weights {cache}")
                continue
            log(f"{stage.name}: not reusing {cache} ({problem}); training the stage again")
        result = fit_stage(model, stage, dataset, stage_masks, config, device)
        results[stage.name] = result
        log(
            f"{stage.name}: best epoch {result.best_epoch}/{result.epochs_run}, "
            f"valid loss {result.best_valid_loss:.4f}"
        )
        if cache is not None:
            save_cached(model, cache)
    return results
