"""Micro-batches run at once (``train.concurrent_batches``) compute what they compute in turn."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest
import torch
from tests.conftest import build_model_for, small_config, tiny_dataset, train_batch

from dicmor import concurrency
from dicmor.config import ConfigError, TrainConfig
from dicmor.missing.protocols import MissingProtocol, make_masks
from dicmor.models.base import DataInfo
from dicmor.registry import build_model
from dicmor.training.loop import TrainingError
from dicmor.training.stages import resolve_device, train_stages


def _trained(
    method: str, concurrent: int, folder: str, alone: bool = False, **overrides: object
) -> dict[str, torch.Tensor]:
    """The weights after every stage of ``method`` on the tiny data under a random protocol,
    micro-batches of 4 accumulated by 3 (odd windows, an epoch's last window short), outputs
    (and stage caches) under ``folder``; ``alone``: the model never lets two run at once."""
    data = tiny_dataset("regression", n=28)
    changes = {
        "train.batch_size": 4,
        "train.grad_accum": 3,
        "train.concurrent_batches": concurrent,
        "model.mult.attn_dropout": 0.2,
        "model.mult.relu_dropout": 0.1,
        "model.mult.out_dropout": 0.2,
        "model.input_dropout": {"text": 0.2},
        "output_dir": folder,
        **overrides,
    }
    config = small_config(method, **changes)
    config = dataclasses.replace(config, missing=MissingProtocol("random", 0.4))
    presents = {s: split.present for s, split in data.splits.items()}
    masks = make_masks(config.missing, presents, data.modality_names, config.train.seed)
    torch.manual_seed(config.train.seed)
    model = build_model(DataInfo.from_dataset(data), config.model)
    if alone:
        model.concurrency_ready = lambda: False
    train_stages(model, data, masks, config, resolve_device("cpu"), log=lambda _: None)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("method", "overrides"),
    [
        ("dicmor", {}),
        ("dicmor", {"train.accumulation": "mean", "model.dicmor.dequantize": 0.05}),
        ("zero_fill", {}),
    ],
)
def test_micro_batches_at_once_train_exactly_as_one_after_the_other(
    method: str, overrides: dict, tmp_path: Path
) -> None:
    # Exactly with the threads each micro-batch gets (threads // concurrent_batches): more
    # threads may split a product or a sum otherwise, which changes its rounding.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one, two = (
            _trained(method, 2, str(tmp_path / str(alone)), alone, **overrides)
            for alone in (True, False)
        )
    finally:
        torch.set_num_threads(threads)
    assert one.keys() == two.keys()
    for key in one:
        assert torch.equal(one[key], two[key]), key
    if method == "dicmor":
        assert bool(one["feature_bound"].gt(0).all())  # the ordered update took place
    # One at a time with the global generator (concurrent_batches 1) is another random stream.
    plain = _trained(method, 1, str(tmp_path / "plain"), **overrides)
    assert not all(torch.equal(plain[key], one[key]) for key in one)


def test_the_draws_of_a_micro_batch_are_its_own() -> None:
    # The same seed gives the same draws whatever runs beside it; streams differ; outside a
    # scope the global generator is used.
    cpu = torch.device("cpu")
    assert concurrency.generator("dropout", cpu) is None
    drawn = []
    for _ in range(2):
        with concurrency.micro_batch(7):
            first = torch.rand(5, generator=concurrency.generator("dropout", cpu))
            torch.rand(100)  # the global generator does not move it
            second = torch.rand(5, generator=concurrency.generator("dropout", cpu))
            other = torch.rand(5, generator=concurrency.generator("dequantize", cpu))
        drawn.append((first, second, other))
    (a, b, c), (a2, b2, c2) = drawn
    assert torch.equal(a, a2) and torch.equal(b, b2) and torch.equal(c, c2)
    assert not torch.equal(a, b) and not torch.equal(a, c)
    with concurrency.micro_batch(8):
        assert not torch.equal(a, torch.rand(5, generator=concurrency.generator("dropout", cpu)))


def test_a_micro_batch_enters_its_ordered_section_after_the_one_before() -> None:
    order = []
    turns = [threading.Event(), threading.Event()]

    def work(i: int, delay: float) -> None:
        with concurrency.micro_batch(i, turns[i - 1] if i else None, turns[i]):
            time.sleep(delay)
            with concurrency.in_turn():
                order.append(i)

    # The second starts its section first unless it waits for the first.
    threads = [threading.Thread(target=work, args=(i, 0.2 * (1 - i))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert order == [0, 1]
    # A micro-batch that never enters a section releases the next one when it ends.
    turns = [threading.Event(), threading.Event()]
    with concurrency.micro_batch(0, None, turns[0]):
        pass
    assert turns[0].is_set()


def test_methods_that_do_not_support_it_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="method 'mmin' does not support"):
        _trained("mmin", 2, str(tmp_path))
    with pytest.raises(ConfigError, match=r"train\.concurrent_batches must be >= 1"):
        TrainConfig(concurrent_batches=0)


def test_dicmor_recovers_within_the_bound_as_it_stood_after_its_own_update() -> None:
    # Two micro-batches at once: the first recovers within the bound its own features raised,
    # though the second (larger features) raises the buffer while the first still runs.
    model, data = build_model_for("dicmor")
    model.train()
    mask = data.splits["train"].present.copy()
    mask[:, 1] = False  # audio recovered
    small = train_batch(data, mask)
    large = {**small, "inputs": {m: 10 * x for m, x in small["inputs"].items()}}
    used: dict[int, torch.Tensor] = {}
    recover = model._recover
    turns = [threading.Event(), threading.Event()]

    def work(i: int, batch: dict) -> None:
        with concurrency.micro_batch(i, turns[i - 1] if i else None, turns[i]):
            model(batch)

    def slow_recover(features, available, latents, bound):
        first = threading.current_thread().name == "first"
        if first:
            time.sleep(0.3)  # the second updates the buffer meanwhile
        used[0 if first else 1] = bound.clone()
        return recover(features, available, latents, bound)

    model._recover = slow_recover
    with torch.no_grad():
        own = [
            torch.stack([x.abs().amax() for x in model.extractors(b).values()])
            for b in (small, large)
        ]
    model.feature_bound.zero_()
    threads = [
        threading.Thread(target=work, args=(0, small), name="first"),
        threading.Thread(target=work, args=(1, large), name="second"),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    # Audio is unavailable in both: its bound stays 0; text and vision rise.
    keep = torch.tensor([0, 2])
    assert torch.allclose(used[0][keep], own[0][keep])
    assert torch.allclose(used[1][keep], torch.maximum(own[0], own[1])[keep])
    assert torch.equal(model.feature_bound, used[1])
