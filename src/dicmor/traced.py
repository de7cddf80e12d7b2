"""A model's inference forward as traced graphs, built once per kind of batch and reused.

At DiCMoR's sizes a batch-1 forward is thousands of small operations, and their Python dispatch
costs more than their arithmetic. `TracedForward` records the eval forward of a batch with
`torch.jit.trace` and freezes it (weights folded in as constants), so that later batches of the
same kind run the recorded operations without Python in between.

A traced graph fixes every decision the forward takes in Python: which modalities are missing
from which samples (the recovery's branches), the shapes, the device. So one graph is built per
*signature* — the availability matrix, the input shapes and dtypes, the device — and a batch
whose signature was seen reuses it. Batches of one missing pattern and one size share a
signature: `predict` with ``fast=True`` groups samples by pattern for that.

Every graph is checked when it is built: its outputs must equal the plain forward's within
``atol + rtol·|plain|``, on the batch that built it and on a batch of the same signature with
other values (a graph that took a value for a constant fails there). A method whose forward
cannot be traced, or whose graph fails the check, runs the plain forward for that signature (a
warning says why). Methods that batch samples by context (a custom `Batching`, as GCNet's
videos) always run the plain forward.

A graph holds the weights it was built with. The graphs are dropped when the model changes: a
parameter or buffer modified in place (its version counter: ``load_state_dict``, optimiser
steps), the model moved or cast, or put in training mode in between (`MultimodalModel.revision`;
a fused optimiser step, which bumps no version, happens in training mode). A parameter replaced
by assignment is not seen: build a new `TracedForward` after such surgery.

A CPU graph of one sample (the deployment case) runs in PyTorch's static runtime where one
builds (`torch.jit`'s inference interpreter for frozen graphs: kernels writing into buffers
planned once, fewer allocations per call), checked as the graph is; the frozen graph runs where
it does not build, for larger batches (`STATIC_MAX_BATCH`), and for a call made while another
thread runs it (one static runtime serves one call at a time).

``torch.jit.trace`` is deprecated in favour of ``torch.compile`` and ``torch.export``; neither
records this forward without graph breaks (its branches read the availability mask), and at
these sizes ``torch.compile`` takes minutes to build what tracing builds in seconds.
"""

from __future__ import annotations

import logging
import threading
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dicmor.models.base import MultimodalModel

__all__ = ["TracedForward", "traceable"]

log = logging.getLogger(__name__)

RTOL = 1e-4
ATOL = 1e-5
"""How close a graph's outputs must be to the plain forward's: the recorded operations are the
same, so they agree to rounding (bit for bit on CPU in practice)."""


def traceable(model: MultimodalModel) -> bool:
    """Whether `TracedForward` may record ``model``: not when it batches samples by context,
    whose batches rarely repeat a signature."""
    batching = model.batching()
    return batching.sampler is None and batching.collate is None


class _Inputs(nn.Module):
    """The model's forward as a function of tensors: (available, *inputs[, text_bert]) →
    (prediction, *features)."""

    def __init__(self, model: MultimodalModel, with_text_bert: bool) -> None:
        super().__init__()
        self.model = model
        self.names = model.info.modality_names
        self.with_text_bert = with_text_bert

    def forward(self, available: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
        inputs = dict(zip(self.names, tensors[: len(self.names)], strict=True))
        batch: dict[str, Any] = {"inputs": inputs, "available": available}
        if self.with_text_bert:
            batch["text_bert"] = tensors[-1]
        output = self.model(batch)
        features = output.get("features")
        if features is None:
            return (output["prediction"],)
        return (output["prediction"], *(features[m] for m in self.names))


def _close(traced: Sequence[Tensor], plain: Sequence[Tensor]) -> str | None:
    """Why ``traced`` differs from ``plain`` (None when it does not)."""
    if len(traced) != len(plain):
        return f"{len(traced)} outputs where the forward gives {len(plain)}"
    for i, (a, b) in enumerate(zip(traced, plain, strict=True)):
        if a.shape != b.shape:
            return f"output {i} has shape {tuple(a.shape)}, the forward's {tuple(b.shape)}"
        if not torch.allclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True):
            worst = (a - b).abs().nan_to_num(float("inf")).max().item()
            return f"output {i} differs from the forward's by up to {worst:.3g}"
    return None


STATIC_MAX_BATCH = 1
"""Largest batch whose graph runs in the static runtime. Measured on a 2-core AMD EPYC (torch
2.13, 2 threads, `benchmarks/speed.py` shapes, alternating in one process): one sample 3–10 %
faster than the frozen graph (MOSI with one modality kept, 11.6 against 12.7 ms), four and eight
samples alike, 32 samples 2–5 % slower."""


class _Graph:
    """A frozen graph, run by its static runtime when it has one and no other call holds it."""

    def __init__(self, graph: torch.jit.ScriptModule) -> None:
        self.frozen = graph
        self.static: Any = None
        self._lock = threading.Lock()

    def __call__(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        if self.static is not None and self._lock.acquire(blocking=False):
            try:
                return self.static(*tensors)
            finally:
                self._lock.release()
        return self.frozen(*tensors)


def _static_runtime(graph: torch.jit.ScriptModule) -> Any:
    """PyTorch's static runtime for a frozen CPU graph (it leaves ``graph`` as it is); None
    where this PyTorch has none or it does not take the graph."""
    build = getattr(torch._C, "_jit_to_static_module", None)
    if build is None:
        return None
    try:
        return build(graph._c)
    except Exception as error:  # any failure means the frozen graph runs
        log.debug("no static runtime for this graph: %s", error)
        return None


def _fix_sizes(traced: torch.jit.ScriptModule) -> None:
    """Replace every size a traced graph reads from a tensor by its value at tracing, and fold
    what then depends on constants only.

    A trace records the shapes of its intermediate tensors, and a signature fixes them all, so
    the size reads (and the shape arithmetic on them) need not run at every call: a third of a
    DiCMoR graph's nodes. Best effort: a graph it cannot rewrite is left as it is (the graph is
    checked against the plain forward either way)."""
    graph = traced.graph
    try:
        torch._C._jit_pass_inline(graph)
        for node in list(graph.nodes()):
            if node.kind() != "aten::size":
                continue
            sizes = node.inputsAt(0).type().sizes()
            if sizes is None:
                continue
            if node.inputsSize() == 2:
                dim = node.inputsAt(1).toIValue()
                if dim is None:
                    continue
                value: int | list[int] = sizes[dim]
            else:
                value = list(sizes)
            with graph.insert_point_guard(node):
                constant = graph.insertConstant(value)
            node.output().replaceAllUsesWith(constant)
            node.destroy()
        torch._C._jit_pass_constant_propagation(graph)
        torch._C._jit_pass_dce(graph)
    except RuntimeError as error:  # left unrewritten; still a valid graph
        log.debug("traced graph left with its size reads: %s", error)


class TracedForward:
    """``model``'s eval forward, one frozen traced graph per batch signature.

    Call it as the model: ``traced(batch)`` returns ``{"prediction": …, "features": {…}}``
    (features when the method gives them), from a batch's ``inputs``, ``available`` and
    ``text_bert`` alone, under ``torch.no_grad()`` and in eval mode.

    Args:
        model: a registered method.
        max_graphs: graphs kept at most; the oldest is dropped beyond (a signature seen again
            is traced again).
        static: run CPU graphs of up to `STATIC_MAX_BATCH` samples in the static runtime where
            it builds (False: always the frozen graph).

    Attributes:
        builds: graphs built so far (a signature traced, checked and kept, or found untraceable).
        fallbacks: {signature: reason} of the signatures that run the plain forward.
    """

    def __init__(self, model: MultimodalModel, max_graphs: int = 64, static: bool = True) -> None:
        if max_graphs < 1:
            raise ValueError(f"TracedForward.max_graphs: must be >= 1, got {max_graphs}")
        # Held weakly: a model's graphs may be kept in a map keyed by the model (as `predict`
        # keeps them), which must not keep the model alive. The graphs hold no reference to it.
        self._model = weakref.ref(model)
        self.max_graphs = max_graphs
        self.static = static
        self.enabled = traceable(model)
        self._graphs: dict[tuple, _Graph | None] = {}
        self._state: tuple | None = None
        self._tensors: tuple[int, list[Tensor]] | None = None
        self.builds = 0
        self.fallbacks: dict[tuple, str] = {}

    @property
    def model(self) -> MultimodalModel:
        """The model the graphs were built from."""
        model = self._model()
        if model is None:
            raise RuntimeError("TracedForward: its model no longer exists")
        return model

    def _model_state(self) -> tuple:
        """What the graphs' constants were taken from: the model's revision (training mode, a
        move, a cast) and every parameter's and buffer's storage and version."""
        model = self.model
        if self._tensors is None or self._tensors[0] != model.revision:
            self._tensors = (model.revision, [*model.parameters(), *model.buffers()])
        revision, tensors = self._tensors
        return revision, tuple((t.data_ptr(), t._version) for t in tensors)

    @staticmethod
    def _signature(tensors: Sequence[Tensor]) -> tuple:
        available = tensors[0]
        return (
            available.device,
            tuple(tuple(row) for row in available.tolist()),
            tuple((tuple(t.shape), t.dtype) for t in tensors[1:]),
        )

    def _build(self, key: tuple, tensors: tuple[Tensor, ...], wrapper: _Inputs) -> None:
        names = self.model.info.modality_names
        # A second batch of the same signature, other values where available: a graph that
        # took a value for a constant (a Python decision on data, not on availability) fails
        # on it.
        generator = torch.Generator(tensors[0].device).manual_seed(0)
        varied = list(tensors)
        for i in range(1, 1 + len(names)):
            x = tensors[i]
            factor = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            varied[i] = x * (0.5 + factor)  # zero where absent, as the batch
        # The plain forward first: what the model keeps between eval calls (a flow's inference
        # maps) is then built, and the trace takes it as constants instead of recording how it
        # is built.
        plain = [wrapper(*tensors), wrapper(*varied)]
        try:
            with warnings.catch_warnings():
                # Tracing warns at every Python decision the forward takes on a tensor; those
                # decisions are what the signature fixes.
                warnings.simplefilter("ignore")
                graph = torch.jit.trace(wrapper, tensors, check_trace=False)
                _fix_sizes(graph)
                graph = torch.jit.freeze(graph)
                # The first runs of a frozen graph optimise it; they happen here, not in a
                # caller's timed call.
                traced = [graph(*tensors), graph(*varied)]
        except Exception as error:  # any failure to trace means the plain forward
            reason = f"not traceable ({type(error).__name__}: {str(error).splitlines()[0]})"
        else:
            reason = _close(traced[0], plain[0]) or _close(traced[1], plain[1])
        runner = None
        if reason is None:
            runner = _Graph(graph)
            available = tensors[0]
            if (
                self.static
                and available.device.type == "cpu"
                and available.shape[0] <= STATIC_MAX_BATCH
            ):
                runner.static = self._checked_static(graph, tensors, varied, plain)
        else:
            self.fallbacks[key] = reason
            log.warning("%s: plain forward for this kind of batch: %s", self.model.name, reason)
        while len(self._graphs) >= self.max_graphs:
            self._graphs.pop(next(iter(self._graphs)))
        self._graphs[key] = runner
        self.builds += 1

    @staticmethod
    def _checked_static(
        graph: torch.jit.ScriptModule,
        tensors: Sequence[Tensor],
        varied: Sequence[Tensor],
        plain: Sequence[Sequence[Tensor]],
    ) -> Any:
        """``graph``'s static runtime if it gives the plain forward's outputs on both batches
        (None otherwise: the frozen graph runs)."""
        static = _static_runtime(graph)
        if static is None:
            return None
        try:
            outputs = [static(*tensors), static(*varied)]
        except Exception as error:
            log.debug("static runtime failed on its first batches: %s", error)
            return None
        reason = _close(outputs[0], plain[0]) or _close(outputs[1], plain[1])
        if reason is not None:
            log.debug("static runtime not used: %s", reason)
            return None
        return static

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict[str, Any]:
        """The eval forward of ``batch``: ``{"prediction", "features"}``."""
        model = self.model
        if model.training:
            raise RuntimeError("TracedForward: the model is in training mode; call .eval() first")
        if not self.enabled:
            return model(batch)
        names = model.info.modality_names
        with_text_bert = "text_bert" in batch
        tensors = (
            batch["available"],
            *(batch["inputs"][m] for m in names),
            *((batch["text_bert"],) if with_text_bert else ()),
        )
        state = self._model_state()
        if state != self._state:
            self._graphs.clear()
            self._state = state
        key = (with_text_bert, *self._signature(tensors))
        wrapper = _Inputs(model, with_text_bert)
        wrapper.training = False  # as the model (eval() would walk every module)
        if key not in self._graphs:
            self._build(key, tensors, wrapper)
        graph = self._graphs[key]
        outputs = wrapper(*tensors) if graph is None else graph(*tensors)
        result: dict[str, Any] = {"prediction": outputs[0]}
        if len(outputs) > 1:
            result["features"] = dict(zip(names, outputs[1:], strict=True))
        return result
