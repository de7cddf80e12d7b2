"""The one training loop, used by every method and stage (SPEC §5.9).

Adam (or the optimiser a stage names); gradient clipping by value; gradient accumulation;
ReduceLROnPlateau and early stopping on the validation loss; the best state by validation loss
is restored at the end. Only validation data choose anything.
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dicmor.concurrency import micro_batch, new_seed
from dicmor.config import TrainConfig
from dicmor.data.batches import Batches
from dicmor.models.base import MultimodalModel
from dicmor.nn.precision import autocast, check_precision
from dicmor.training import distributed
from dicmor.training.state import rng_state, set_rng_state


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss)."""


@dataclass
class FitResult:
    """What one stage of training did."""

    best_epoch: int
    best_valid_loss: float
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def _size(batches: Batches, batch: dict) -> int:
    """The samples ``batch`` stands for: its rows, or this rank's share of a split batch."""
    return batches.sizes[0] if batches.shard is not None else len(batch["label"])


def _summed(sums: dict[str, float], count: float, device: torch.device) -> tuple[dict, float]:
    """``sums`` and ``count`` summed over the ranks of a distributed run (as they are without)."""
    if distributed.current() is None:
        return dict(sums), count
    keys = sorted(sums)
    *values, count = distributed.all_sum([sums[k] for k in keys] + [count], device)
    return dict(zip(keys, values, strict=True)), count


def _mean_losses(
    model: MultimodalModel, batches: Batches, precision: str = "float32"
) -> dict[str, float]:
    """Sample-weighted mean of each loss term over ``batches``, in eval mode, without gradients
    (over every rank's share in a distributed run), in ``precision`` (`TrainConfig`)."""
    model.eval()
    sums: dict[str, float] = defaultdict(float)
    count = 0
    with torch.no_grad(), autocast(precision, batches.device):
        for batch in batches:
            size = _size(batches, batch)
            losses = model.loss(model(batch), batch)
            for key, value in losses.items():
                sums[key] += float(value.detach()) * size
            count += size
    sums, count = _summed(sums, count, batches.device)
    return {key: value / count for key, value in sums.items()}


class _Objective(torch.nn.Module):
    """The stage's loss as a module's output, for DistributedDataParallel: the term optimised,
    and every term detached, so that the parameters it does not reach count as unused."""

    def __init__(self, model: MultimodalModel, objective: str) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses = self.model.loss(self.model(batch), batch)
        return losses[self.objective], {k: v.detach() for k, v in losses.items()}


def _engine(model: MultimodalModel, objective: str, device: torch.device) -> Callable:
    """``batch -> (objective, losses)``: the model itself, or wrapped in DDP across ranks."""
    if distributed.current() is None:

        def step(batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            losses = model.loss(model(batch), batch)
            return losses[objective], losses

        step.no_sync = contextlib.nullcontext  # type: ignore[attr-defined]
        return step
    return torch.nn.parallel.DistributedDataParallel(
        _Objective(model, objective),
        device_ids=[device] if device.type == "cuda" else None,
        find_unused_parameters=True,
    )


def _forward(
    engine: Callable,
    batch: dict,
    config: TrainConfig,
    train: Batches,
    desc: str,
    epoch: int,
    step: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One micro-batch's objective (weighted for its rank's share) and named losses."""
    with autocast(config.precision, train.device):
        total, losses = engine(batch)
    if not torch.isfinite(losses["total"]) or not torch.isfinite(total):
        raise TrainingError(
            f"{desc}: non-finite loss at epoch {epoch}, step {step}: "
            + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
        )
    world = distributed.current()
    if world is not None and train.shard is not None:
        # The ranks' gradients are averaged: weighted by each one's share of the batch, that
        # is the gradient of the whole batch's mean loss.
        total = total * (train.sizes[0] * world.size / train.sizes[1])
    return total, losses


def _concurrent(
    chunk: list[tuple[int, dict]],
    engine: Callable,
    params: list[torch.nn.Parameter],
    config: TrainConfig,
    train: Batches,
    desc: str,
    epoch: int,
    update: bool,
) -> list[dict[str, torch.Tensor]]:
    """The micro-batches of ``chunk`` (one accumulation window's, the last one closing it when
    ``update``), each on a thread of its own with an equal share of the CPU threads; their
    gradients are then accumulated and clipped in micro-batch order, exactly as one after the
    other. Returns each one's losses."""
    seeds = [new_seed() for _ in chunk]  # drawn in micro-batch order, as one at a time
    turns = [threading.Event() for _ in chunk]
    results: list[Any] = [None] * len(chunk)

    def work(i: int) -> None:
        step, batch = chunk[i]
        try:
            with micro_batch(seeds[i], turns[i - 1] if i else None, turns[i]):
                total, losses = _forward(engine, batch, config, train, desc, epoch, step)
                if config.accumulation == "mean":
                    total = total / config.grad_accum
                grads = torch.autograd.grad(total, params, allow_unused=True)
            results[i] = (grads, losses)
        except BaseException as error:  # re-raised in the loop's thread, in order
            results[i] = error
            turns[i].set()

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // len(chunk)))
    try:
        workers = [threading.Thread(target=work, args=(i,)) for i in range(len(chunk))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        torch.set_num_threads(threads)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    last = len(chunk) - 1
    for i, (grads, _) in enumerate(results):
        sums, terms = [], []
        for p, grad in zip(params, grads, strict=True):
            if grad is None:
                continue
            if p.grad is None:
                # In the parameter's layout, as autograd's accumulation keeps it (the fused
                # optimisers step by the parameter's strides).
                p.grad = grad if grad.stride() == p.stride() else torch.empty_like(p).copy_(grad)
            else:
                sums.append(p.grad)
                terms.append(grad)
        if sums:
            torch._foreach_add_(sums, terms)
        if config.clip_value is not None and (
            config.accumulation == "sum" or (update and i == last)
        ):
            torch.nn.utils.clip_grad_value_(params, config.clip_value, foreach=True)
    return [losses for _, losses in results]


def _backward(
    total: torch.Tensor, params: list[torch.nn.Parameter], config: TrainConfig, update: bool
) -> None:
    """Backpropagate one micro-batch's loss and clip as ``config.accumulation`` says."""
    if config.accumulation == "sum":
        total.backward()
        # The public code's order: the running sum is clipped after every micro-batch.
        if config.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, config.clip_value, foreach=True)
    else:
        (total / config.grad_accum).backward()
        if update and config.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, config.clip_value, foreach=True)


def make_optimizer(
    name: str, params: list[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """``adam``, ``adamw`` or ``sgd`` (momentum 0.9) over ``params``."""
    if not params:
        raise TrainingError("the stage has no parameter to train (every module is frozen)")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    # The fused kernel updates all parameters in one pass: DiCMoR has thousands of small
    # parameter tensors, for which the per-tensor update dominates the step on CPU.
    kind = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return kind(params, lr=lr, weight_decay=weight_decay, fused=True)


def fit(
    model: MultimodalModel,
    train: Batches,
    valid: Batches,
    config: TrainConfig,
    *,
    max_epochs: int | None = None,
    desc: str = "train",
    objective: str = "total",
    monitor: str | None = None,
    lr: float | None = None,
    optimizer_name: str = "adam",
    weight_decay: float | None = None,
    resume: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train ``model`` in place and restore its best state by validation loss.

    ``objective`` is the loss term optimised; ``monitor`` the validation term that selects the
    best epoch (default ``config.select_on``); ``lr`` and ``weight_decay`` override
    ``config``'s; ``optimizer_name`` is ``adam``, ``adamw`` or ``sgd``.

    ``on_epoch`` receives, after every epoch, the loop's whole state (weights, optimiser,
    scheduler, early-stopping counters, best weights, history, random generators); given back
    as ``resume``, training goes on from there exactly as if it had not stopped. ``log`` gets
    one line per epoch when no progress bar is shown (output not on a terminal).
    """
    monitor = monitor or config.select_on
    check_precision(config.precision, train.device)
    params = [p for p in model.parameters() if p.requires_grad]
    world = distributed.current()
    if config.concurrent_batches > 1:
        if not model.concurrent_batches:
            raise TrainingError(
                f"train.concurrent_batches: method '{model.name}' does not support running "
                "micro-batches at once; set it to 1"
            )
        if world is not None or train.device.type != "cpu":
            raise TrainingError(
                "train.concurrent_batches > 1 runs on CPU in one process only; set it to 1"
            )
    engine = _engine(model, objective, train.device)
    optimizer = make_optimizer(
        optimizer_name,
        params,
        lr or config.lr,
        config.weight_decay if weight_decay is None else weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.lr_factor, patience=config.lr_patience
    )
    best_loss = math.inf
    best_epoch = -1
    best_state = copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    epochs = max_epochs or config.max_epochs
    stale = 0
    epoch = start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        best_loss, best_epoch, stale = resume["best_loss"], resume["best_epoch"], resume["stale"]
        best_state, history = resume["best_state"], list(resume["history"])
        epoch = start = resume["epoch"]
        train.epoch = valid.epoch = start
        set_rng_state(resume["rng"])
        if resume["finished"]:
            model.load_state_dict(best_state)
            return FitResult(best_epoch, best_loss, epoch, history)
    for epoch in range(start + 1, epochs + 1):
        model.train()
        optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = defaultdict(float)
        seen = 0
        bar = tqdm(
            train,
            desc=f"{desc} {epoch}/{epochs}",
            leave=False,
            disable=None if config.progress and (world is None or world.main) else True,
        )
        pending: list[tuple[int, dict]] = []
        scoped = config.concurrent_batches > 1
        for step, batch in enumerate(bar, start=1):
            update = step % config.grad_accum == 0 or step == len(train)
            pending.append((step, batch))
            # Micro-batches of one accumulation window share the weights: up to
            # `concurrent_batches` of them run at once, once the model allows it.
            width = config.concurrent_batches if model.concurrency_ready() else 1
            if len(pending) < width and not update:
                continue
            chunk, pending = pending, []
            if len(chunk) == 1:
                # Mean accumulation reduces the summed gradients once, at the update; the
                # public code's sum accumulation clips the running sum after every micro-batch.
                local = not update and config.accumulation == "mean"
                sync = engine.no_sync() if local else contextlib.nullcontext()
                # With micro-batches at once, each draws from generators of its own, alone too.
                scope = micro_batch(new_seed()) if scoped else contextlib.nullcontext()
                with sync, scope:
                    total, losses = _forward(engine, batch, config, train, desc, epoch, step)
                    _backward(total, params, config, update)
                results = [losses]
            else:
                results = _concurrent(chunk, engine, params, config, train, desc, epoch, update)
            if update:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for (_, done), losses in zip(chunk, results, strict=True):
                size = _size(train, done)
                for key, value in losses.items():
                    sums[key] += float(value.detach()) * size
                seen += size
            bar.set_postfix(loss=f"{sums['total'] / max(seen, 1):.4f}")
        sums, seen = _summed(sums, seen, train.device)
        valid_losses = _mean_losses(model, valid, config.precision)
        if monitor not in valid_losses:
            raise TrainingError(
                f"{desc}: the validation losses have no term '{monitor}' to select on "
                f"(terms: {sorted(valid_losses)})"
            )
        valid_loss = valid_losses[monitor]
        scheduler.step(valid_loss)
        record = {"epoch": float(epoch), "lr": optimizer.param_groups[0]["lr"]}
        record.update({f"train_{k}": v / seen for k, v in sums.items()})
        record.update({f"valid_{k}": v for k, v in valid_losses.items()})
        history.append(record)
        if valid_loss < best_loss:
            best_loss, best_epoch, stale = valid_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        finished = stale >= config.patience or epoch == epochs
        if log is not None and bar.disable and config.progress:
            log(
                f"{desc} {epoch}/{epochs}: train {objective} {record[f'train_{objective}']:.4f}, "
                f"valid {monitor} {valid_loss:.4f} (best {best_loss:.4f} at {best_epoch}), "
                f"lr {record['lr']:.3g}"
            )
        if on_epoch is not None:
            on_epoch(
                {
                    "epoch": epoch,
                    "finished": finished,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "best_loss": best_loss,
                    "best_epoch": best_epoch,
                    "stale": stale,
                    "best_state": best_state,
                    "history": history,
                    "rng": rng_state(),
                }
            )
        if finished:
            break
    model.load_state_dict(best_state)
    return FitResult(best_epoch, best_loss, epoch, history)


def predict(model: MultimodalModel, batches: Batches) -> np.ndarray:
    """Predictions in split order (whatever order the batches come in): (N,) for regression,
    (N, K) logits for classification."""
    model.eval()
    outputs, rows = [], []
    with torch.no_grad():
        for batch in batches:
            outputs.append(model(batch)["prediction"].float().cpu())
            rows.append(batch["index"].cpu())
    predictions = torch.cat(outputs)
    return predictions[torch.cat(rows).argsort()].numpy()
