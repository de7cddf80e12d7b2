"""A method's stages trained one after another: batches, settings and the stage cache.

Each `~dicmor.models.base.Stage` says what it trains and on what; this module turns it into
batches (complete data or the protocol's masks, the stage's batch size, the method's batching)
and a call of the one training loop, and reuses a complete-data stage's cached weights.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

from dicmor.config import Config, ConfigError, TrainConfig
from dicmor.data.batches import Batches, Batching
from dicmor.data.dataset import MultimodalDataset
from dicmor.missing.protocols import MissingProtocol, epoch_mask
from dicmor.models.base import MultimodalModel, Stage
from dicmor.training import distributed
from dicmor.training.checkpoints import load_cached, save_cached, stage_cache_path
from dicmor.training.loop import FitResult, fit


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch; ask PyTorch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def stage_seed(seed: int, index: int) -> int:
    """The seed a run's stage ``index`` (from 0) starts from: whether the stage before it was
    trained or its weights read from the cache, the stage draws the same numbers."""
    return seed * 1_000 + index + 1


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; an unavailable CUDA device is a clear error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name} but CUDA is not available on this machine")
    world = distributed.current()
    if name == "cuda" and world is not None:  # one GPU per rank of a distributed run
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
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

    world = distributed.current()
    common = {
        "device": device,
        "with_targets": True,
        "batching": batching,
        "shard": (world.rank, world.size) if world else None,
    }
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
    **loop: Any,
) -> FitResult:
    """Train one stage: complete data or the protocol's masks, the stage's own settings;
    ``loop`` goes to :func:`~dicmor.training.loop.fit` (``resume``, ``on_epoch``, ``log``)."""
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
        **loop,
    )


def _cache_lock(cache: Path | None) -> contextlib.AbstractContextManager:
    """A lock held while a cache entry is looked up, trained and written (none without one)."""
    if cache is None:
        return contextlib.nullcontext()
    cache.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{cache}.lock")


def train_stages(
    model: MultimodalModel,
    dataset: MultimodalDataset,
    masks: dict[str, np.ndarray],
    config: Config,
    device: torch.device,
    log: Callable[[str], None] = print,
    *,
    save: Callable[[dict[str, Any]], None] | None = None,
    saved: dict[str, Any] | None = None,
) -> dict[str, FitResult]:
    """Train every stage of ``model`` in order; returns each trained stage's result.

    A complete-data stage reuses cached weights when there are any, and caches its own. A stage
    that declares ``skip_when_complete`` is skipped, with its reason logged, when nothing is
    missing in the training and validation data; every other stage runs. Each stage starts
    from its own seed (:func:`stage_seed`), so a cached stage gives the same run as a trained one.

    ``save`` gets the whole training state after every epoch and every stage (the stage index,
    the finished stages' results, the weights and, inside a stage, the loop's state); such a
    state given back as ``saved`` resumes training where it was.
    """
    presents = {s: split.present for s, split in dataset.splits.items()}
    nothing_missing = all(np.array_equal(masks[s], presents[s]) for s in ("train", "valid"))
    results: dict[str, FitResult] = {}
    first = 0
    world = distributed.current()
    if saved is not None:
        first = saved["stage"]
        results = {name: FitResult(**result) for name, result in saved["results"].items()}
        model.load_state_dict(saved["model"])

    def state(index: int, weights: dict, fit_state: dict | None) -> dict[str, Any]:
        done = {name: asdict(result) for name, result in results.items()}
        return {"stage": index, "results": done, "model": weights, "fit": fit_state}

    for index, stage in enumerate(model.stages()):
        if index < first:
            continue
        if nothing_missing and stage.skip_when_complete is not None:
            log(f"{stage.name}: skipped, {stage.skip_when_complete}")
            continue
        model.begin_stage(stage)
        seed_everything(stage_seed(config.train.seed, index))
        if world is not None:  # dropout and noise differ from rank to rank
            torch.manual_seed(stage_seed(config.train.seed, index) * 1_009 + world.rank)
        resume = saved["fit"] if saved is not None and index == first else None
        stage_masks = presents if stage.complete_data else masks
        cache = stage_cache_path(config, dataset, stage.name) if stage.complete_data else None
        # One process trains a cache entry; another that needs it meanwhile (a parallel sweep)
        # waits for it and reads the weights.
        with _cache_lock(cache if world is None or world.main else None):
            reuse = resume is None and cache is not None and cache.exists()
            if world is not None:  # rank 0 decides, holding the lock, for every rank
                reuse = distributed.broadcast(reuse)
            if reuse:
                problem = load_cached(model, cache, device)
                if world is not None:
                    problem = distributed.broadcast(problem)
                if problem is None:
                    log(f"{stage.name}: reusing cached weights {cache}")
                    if save is not None:
                        save(state(index + 1, model.state_dict(), None))
                    continue
                log(f"{stage.name}: not reusing {cache} ({problem}); training the stage again")
            if resume is not None:
                log(f"{stage.name}: resuming after epoch {resume['epoch']}")
            on_epoch = None
            if save is not None:

                def on_epoch(fit_state: dict[str, Any], index: int = index) -> None:
                    save(state(index, fit_state["model"], fit_state))

            result = fit_stage(
                model,
                stage,
                dataset,
                stage_masks,
                config,
                device,
                resume=resume,
                on_epoch=on_epoch,
                log=log,
            )
            results[stage.name] = result
            log(
                f"{stage.name}: best epoch {result.best_epoch}/{result.epochs_run}, "
                f"valid loss {result.best_valid_loss:.4f}"
            )
            if cache is not None and (world is None or world.main):
                save_cached(model, cache)
            if save is not None:
                save(state(index + 1, model.state_dict(), None))
    return results
