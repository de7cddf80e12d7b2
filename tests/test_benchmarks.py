"""The measuring helpers of the benchmarks (`op_time.py`, `recovery_passes.py`, `speed.py`)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import op_time


class _TwoProducts(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Parameter(torch.randn(3, 4, 5))
        self.second = torch.nn.Parameter(torch.randn(5, 2))

    def forward(self, batch: dict) -> torch.Tensor:
        hidden = torch.bmm(batch["x"], self.first).relu()  # (3, 6, 5)
        return hidden @ self.second


def test_products_are_recorded_in_order_with_the_operands_the_forward_read() -> None:
    model = _TwoProducts()
    batch = {"x": torch.randn(3, 6, 4)}
    sequence = op_time._products_in_order(model, batch)
    assert [call[1].__name__.split(".")[0] for call in sequence] == ["bmm", "mm"]
    (_, _, first_args, _), (_, _, second_args, _) = sequence
    assert first_args[0] is batch["x"]
    assert first_args[1].data_ptr() == model.first.data_ptr()
    # The batch by a matrix reaches ATen as one product of the flattened batch.
    assert tuple(second_args[0].shape) == (18, 5)
    assert second_args[1].data_ptr() == model.second.data_ptr()
    assert sequence[0][0] != sequence[1][0]  # shape keys tell the products apart


def test_a_replay_runs_every_recorded_product() -> None:
    calls = []

    def product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return a @ b

    a, b = torch.randn(2, 3), torch.randn(3, 2)
    seconds = op_time._replayed([("k", product, (a, b), {}), ("k", product, (a, b), {})], 4)
    assert seconds > 0
    assert len(calls) == 2 * (4 + 5)  # 5 warm-up passes, then 4 timed ones


def test_the_padding_comparison_alternates_the_cut_and_restores_it() -> None:
    import recovery_passes

    import dicmor.models.recovery as recovery

    cut = recovery.PADDED_PASS_MAX_EXTRA
    seen = []
    seconds = recovery_passes._alternating(lambda: seen.append(recovery.PADDED_PASS_MAX_EXTRA), 3)
    none = recovery_passes.NO_PADDED_PASS
    assert seen == [cut, none, none, cut, cut, none]
    assert sorted(seconds) == sorted([cut, none]) and all(len(v) == 3 for v in seconds.values())
    assert cut == recovery.PADDED_PASS_MAX_EXTRA


def test_the_speed_benchmark_trains_in_the_precision_it_is_given() -> None:
    import speed

    from tests.conftest import product_dtypes

    for precision, expected in (("float32", {torch.float32}), ("bfloat16", {torch.bfloat16})):
        _, train_step = speed.training_setup("mosi", 3, torch.device("cpu"), precision)
        with product_dtypes() as dtypes:
            train_step()
        # DiCMoR's flows stay float32 under bfloat16 autocast; the rest is bfloat16.
        assert expected <= set(dtypes) <= {torch.float32, torch.bfloat16}, precision
        if precision == "float32":
            assert set(dtypes) == expected


def test_only_this_checkouts_cases_get_the_precision(monkeypatch) -> None:
    import argparse
    import subprocess

    import speed

    commands = []

    def run(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, stdout='{"train_step_ms": 1.0}\n')

    monkeypatch.setattr(speed.subprocess, "run", run)
    args = argparse.Namespace(threads=2, repeats=1, device="cpu", batch=None)
    speed._case("mosi:1", args, Path("before/src"))
    speed._case("mosi:1", args, Path("after/src"), "bfloat16")
    assert "--precision" not in commands[0]
    assert commands[1][commands[1].index("--precision") + 1] == "bfloat16"
    assert all("--batch" not in command for command in commands)
    # A batch size given goes to both codes' cases.
    args.batch = 8
    speed._case("mosi:1", args, Path("before/src"))
    speed._case("mosi:1", args, Path("after/src"), "bfloat16")
    assert all(command[command.index("--batch") + 1] == "8" for command in commands[2:])


def test_the_training_batch_is_the_size_asked_for() -> None:
    import batch_scaling
    import speed

    for batch, expected in ((3, 3), (None, speed.BATCH["mosi"])):
        model, train_step = speed.training_setup("mosi", 1, torch.device("cpu"), batch=batch)
        sizes = []
        model.extractors.register_forward_pre_hook(
            lambda _, args, seen=sizes: seen.append(args[0]["available"].shape[0])
        )
        train_step()
        assert sizes == [expected]
    assert batch_scaling.per_clips(2.0, 8, 4) == 1.0  # 2 s for 8 clips: 1 s per 4


def test_the_precision_comparison_alternates_which_goes_first() -> None:
    import precision

    order = []
    steps = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    seconds = precision.alternating(steps, 3)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert all(len(v) == 3 for v in seconds.values())


def test_a_window_of_micro_batches_runs_at_once_with_one_optimiser_step(monkeypatch) -> None:
    import speed
    from torch.optim.optimizer import register_optimizer_step_post_hook

    import dicmor.training.loop as loop
    from dicmor import concurrency

    scopes = []
    enter = concurrency.micro_batch

    def counting(*args, **kwargs):
        scopes.append(1)
        return enter(*args, **kwargs)

    steps = []
    handle = register_optimizer_step_post_hook(lambda *_: steps.append(1))
    monkeypatch.setattr(loop, "micro_batch", counting)
    try:
        _, train_step = speed.training_setup("mosi", "r", torch.device("cpu"), window=3)
        train_step()
    finally:
        handle.remove()
    # 8 random batches make 3 windows of 3 (9 micro-batches), each in a scope of its own.
    assert train_step.steps == 9
    assert len(steps) == 3
    assert len(scopes) == 9
    assert speed._concurrent_windows(None, [], "float32", 1, torch.device("cpu")) is None
