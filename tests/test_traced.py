"""Traced inference graphs: reused per signature, rebuilt when the model changes, and the plain
forward wherever a graph would not give the plain forward's outputs."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from dicmor.data.batches import Batches
from dicmor.data.dataset import Split
from dicmor.inference import _traced, by_pattern, predict
from dicmor.models.base import DataInfo, MultimodalModel
from dicmor.traced import ATOL, RTOL, STATIC_MAX_BATCH, TracedForward
from tests.conftest import build_model_for, small_config, tiny_dataset


def batches(data, mask: np.ndarray, size: int) -> list[dict]:
    split = data.splits["test"]
    return list(Batches(split, data.modality_names, mask, size, with_labels=False))


@pytest.fixture
def zero_fill():
    model, data = build_model_for("zero_fill")
    return model.eval(), data


def test_one_graph_per_signature_reused_and_equal_to_the_forward(zero_fill) -> None:
    model, data = zero_fill
    traced = TracedForward(model)
    split = data.splits["test"]
    mask = split.present.copy()
    mask[:, 1] = False
    first, second = batches(data, mask, 2)[:2]
    with torch.no_grad():
        for batch in (first, second, first):
            out, plain = traced(batch), model(batch)
            torch.testing.assert_close(out["prediction"], plain["prediction"], rtol=RTOL, atol=ATOL)
            for m in data.modality_names:
                torch.testing.assert_close(out["features"][m], plain["features"][m])
    assert traced.builds == 1 and not traced.fallbacks
    other = mask.copy()
    other[:, 2] = False
    traced(batches(data, other, 2)[0])  # another pattern: another graph
    traced(batches(data, mask, 3)[0])  # another size: another graph
    assert traced.builds == 3


def test_graphs_are_rebuilt_when_the_weights_or_the_mode_change(zero_fill) -> None:
    model, data = zero_fill
    traced = TracedForward(model)
    batch = batches(data, data.splits["test"].present, 4)[0]
    before = traced(batch)["prediction"]
    with torch.no_grad():
        model.fusion.head.bias.add_(1.0)  # in place: the version counter moves
    after = traced(batch)["prediction"]
    assert traced.builds == 2
    torch.testing.assert_close(after, model(batch)["prediction"])
    assert not torch.allclose(after, before)
    # A fused optimiser step bumps no version; the switch to training mode before it counts.
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, fused=True)
    model.train()
    model.loss(model(batch | {"label": torch.ones(4)}), batch | {"label": torch.ones(4)})[
        "total"
    ].backward()
    optimizer.step()
    model.eval()
    torch.testing.assert_close(traced(batch)["prediction"], model(batch)["prediction"])
    assert traced.builds == 3
    state = {k: v + 0.5 for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    torch.testing.assert_close(traced(batch)["prediction"], model(batch)["prediction"])
    assert traced.builds == 4
    model.train()
    with pytest.raises(RuntimeError, match="training mode"):
        traced(batch)


def test_at_most_max_graphs_are_kept(zero_fill) -> None:
    model, data = zero_fill
    traced = TracedForward(model, max_graphs=2)
    present = data.splits["test"].present
    for size in (1, 2, 3, 1):
        traced(batches(data, present, size)[0])
    assert traced.builds == 4 and len(traced._graphs) == 2
    with pytest.raises(ValueError, match="max_graphs"):
        TracedForward(model, max_graphs=0)


def _dicmor_text_alone(size: int = 1):
    model, data = build_model_for("dicmor")
    mask = data.splits["test"].present.copy()
    mask[:, 1:] = False
    return model.eval(), batches(data, mask, size)


def test_cpu_graphs_run_in_the_static_runtime_with_the_forwards_outputs() -> None:
    model, (first, second, *_) = _dicmor_text_alone()
    traced = TracedForward(model)
    with torch.no_grad():
        out = traced(first)
        kept = out["prediction"].clone()
        for batch in (first, second):
            result, plain = traced(batch), model(batch)
            for got, want in (
                (result["prediction"], plain["prediction"]),
                *((result["features"][m], plain["features"][m]) for m in model.info.modality_names),
            ):
                torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    (runner,) = traced._graphs.values()
    assert runner.static is not None
    # Later calls write into buffers of their own, never into what an earlier call returned.
    assert torch.equal(out["prediction"], kept)
    # A call made while the runtime is busy (another thread) runs the frozen graph.
    with runner._lock, torch.no_grad():
        torch.testing.assert_close(traced(first)["prediction"], kept, rtol=RTOL, atol=ATOL)
    without = TracedForward(model, static=False)
    with torch.no_grad():
        torch.testing.assert_close(without(first)["prediction"], kept, rtol=RTOL, atol=ATOL)
    (frozen_only,) = without._graphs.values()
    assert frozen_only.static is None
    # Larger batches run the frozen graph (`STATIC_MAX_BATCH`).
    model, (pair, *_) = _dicmor_text_alone(STATIC_MAX_BATCH + 1)
    traced = TracedForward(model)
    with torch.no_grad():
        torch.testing.assert_close(
            traced(pair)["prediction"], model(pair)["prediction"], rtol=RTOL, atol=ATOL
        )
    (runner,) = traced._graphs.values()
    assert runner.static is None


def test_a_static_runtime_that_fails_or_differs_leaves_the_frozen_graph(
    monkeypatch, caplog
) -> None:
    model, (batch, *_) = _dicmor_text_alone()
    with torch.no_grad():
        plain = model(batch)["prediction"]

    def refuse(module):
        raise RuntimeError("unsupported graph")

    class Off:  # a runtime whose outputs are not the forward's
        def __init__(self, module) -> None:
            self.module = module

        def __call__(self, *tensors):
            return tuple(t + 1 for t in self.module.forward(*tensors))

    for runtime, why in ((refuse, "unsupported graph"), (Off, "not used: output 0 differs")):
        monkeypatch.setattr(torch._C, "_jit_to_static_module", runtime)
        traced = TracedForward(model)
        with caplog.at_level("DEBUG", logger="dicmor.traced"), torch.no_grad():
            torch.testing.assert_close(traced(batch)["prediction"], plain, rtol=RTOL, atol=ATOL)
        (runner,) = traced._graphs.values()
        assert runner is not None and runner.static is None and not traced.fallbacks
        assert why in caplog.text


class ValueBranch(MultimodalModel):
    """A forward that takes a Python decision on a value: its trace would keep the number of
    the batch it was built on."""

    name = "value_branch"

    def __init__(self, info: DataInfo) -> None:
        super().__init__(info, small_config("zero_fill").model)
        self.linear = nn.Linear(info.feature_dims["text"], 1)

    def forward(self, batch: dict) -> dict:
        out = self.linear(batch["inputs"]["text"].mean(dim=1)).squeeze(-1)  # (B,)
        return {"prediction": out * float(out.abs().sum())}


def test_a_graph_that_keeps_a_value_as_a_constant_falls_back(caplog) -> None:
    data = tiny_dataset()
    model = ValueBranch(DataInfo.from_dataset(data)).eval()
    traced = TracedForward(model)
    first = batches(data, data.splits["test"].present, 4)[0]
    second = first | {"inputs": {m: 2 * x + 1 for m, x in first["inputs"].items()}}
    with caplog.at_level("WARNING", logger="dicmor.traced"), torch.no_grad():
        for batch in (first, second):
            torch.testing.assert_close(traced(batch)["prediction"], model(batch)["prediction"])
    (reason,) = traced.fallbacks.values()
    assert "differs from the forward's" in reason
    assert traced.builds == 1 and "plain forward" in caplog.text


def test_a_forward_that_cannot_be_traced_runs_as_it_is(zero_fill, monkeypatch) -> None:
    model, data = zero_fill

    def refuse(*args, **kwargs):
        raise RuntimeError("cannot trace this\nsecond line")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    traced = TracedForward(model)
    batch = batches(data, data.splits["test"].present, 4)[0]
    torch.testing.assert_close(traced(batch)["prediction"], model(batch)["prediction"])
    assert list(traced.fallbacks.values()) == ["not traceable (RuntimeError: cannot trace this)"]


def test_by_pattern_batches_each_hold_one_pattern_and_every_sample_once() -> None:
    rng = np.random.default_rng(0)
    present = rng.random((30, 3)) < 0.6
    present[:, 0] |= ~present.any(axis=1)
    split = Split(
        modalities={"a": np.zeros((30, 1, 1), np.float32)},
        labels=np.zeros(30, np.float32),
        ids=np.array([str(i) for i in range(30)]),
        present=present,
    )
    order = rng.permutation(30)
    runs = by_pattern(split, order, 4)
    assert np.array_equal(np.sort(np.concatenate(runs)), np.arange(30))
    for run in runs:
        assert 1 <= len(run) <= 4
        assert (present[run] == present[run[0]]).all()
    # Within a pattern the samples keep the order they came in.
    position = {row: i for i, row in enumerate(order)}
    for run in runs:
        assert [position[r] for r in run] == sorted(position[r] for r in run)
    assert len(runs) == sum(
        -(-int((present == p).all(axis=1).sum()) // 4) for p in np.unique(present, axis=0)
    )


def test_the_graphs_kept_for_predict_do_not_keep_the_model_alive() -> None:
    model, data = build_model_for("zero_fill")
    split = data.splits["test"]
    out = predict(model.eval(), dict(split.modalities), batch_size=4, fast=True)
    assert len(out.scores) == len(split) and _traced(model).builds > 0
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


def test_a_graph_reads_no_sizes_and_takes_what_the_model_keeps_as_constants() -> None:
    model, data = build_model_for("dicmor")
    model.eval()
    mask = data.splits["test"].present.copy()
    mask[:, 1:] = False  # text alone: encode, decode two modalities, refine them
    batch = batches(data, mask, 2)[0]
    traced = TracedForward(model)
    with torch.no_grad():
        out, plain = traced(batch), model(batch)
    torch.testing.assert_close(out["prediction"], plain["prediction"], rtol=RTOL, atol=ATOL)
    (runner,) = traced._graphs.values()
    kinds = [node.kind() for node in runner.frozen.graph.nodes()]
    # The shapes are the signature's: no size is read at run time ...
    assert "aten::size" not in kinds
    # ... and what the model keeps between eval calls (the flows' inference maps, MulT's
    # position table) was built before tracing, not recorded into the graph to run per call.
    assert "aten::linalg_solve_triangular" not in kinds
    assert "aten::sin" not in kinds and "aten::arange" not in kinds
    assert kinds.count("aten::cat") <= 4  # the features' refinement im2col and recovery only
