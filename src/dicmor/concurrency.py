"""What one training micro-batch's forward may draw and change, so that two can run at once.

With ``train.concurrent_batches`` above 1 the training loop runs every micro-batch inside a
`micro_batch` scope. The scope gives the
micro-batch random generators of its own, seeded from one draw of the global generator made in
micro-batch order (`generator`), so its draws do not depend on what runs beside it; and it
orders the sections of a forward that change the model's state (`in_turn`): a micro-batch
enters such a section only after the micro-batch before it has left its own, or finished. Two
micro-batches of one accumulation window (the same weights) can then run on two threads and
compute exactly what they compute one after the other (``train.concurrent_batches``).

Outside a scope (evaluation, inference, direct calls) `generator` gives ``None`` (the global
generator) and `in_turn` runs at once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

__all__ = ["STREAMS", "generator", "in_turn", "micro_batch", "new_seed"]

STREAMS = ("dropout", "dequantize")
"""The random streams a micro-batch draws; each has its own generator in a scope."""

_local = threading.local()


class _Scope:
    def __init__(
        self, seed: int, previous: threading.Event | None, done: threading.Event | None
    ) -> None:
        self.seed = seed
        self.previous = previous
        self.done = threading.Event() if done is None else done
        self.generators: dict[tuple[str, str], torch.Generator] = {}


def new_seed() -> int:
    """One draw of the global generator: the seed of the next micro-batch's scope, below
    2**31 (a CPU generator keeps 32 bits of its seed, and each stream takes its own)."""
    return int(torch.randint(0, 2**31, (), dtype=torch.int64))


@contextlib.contextmanager
def micro_batch(
    seed: int, previous: threading.Event | None = None, done: threading.Event | None = None
) -> Iterator[threading.Event]:
    """Run a micro-batch's forward and backward in a scope of generators seeded from ``seed``;
    its `in_turn` section waits for ``previous`` (the event of the micro-batch before it, or
    ``None``). Yields this micro-batch's event (``done``, or a new one), set when its section
    is over or when the scope closes, whichever comes first: a forward has at most one
    section."""
    scope = _Scope(seed, previous, done)
    outer = getattr(_local, "scope", None)
    _local.scope = scope
    try:
        yield scope.done
    finally:
        _local.scope = outer
        scope.done.set()


def generator(stream: str, device: torch.device) -> torch.Generator | None:
    """The current micro-batch's generator of ``stream`` (one of `STREAMS`) on ``device``, or
    ``None`` (the global generator) outside a scope."""
    scope = getattr(_local, "scope", None)
    if scope is None:
        return None
    key = (stream, str(device))
    found = scope.generators.get(key)
    if found is None:
        seed = scope.seed * len(STREAMS) + STREAMS.index(stream)
        found = torch.Generator(device).manual_seed(seed)
        scope.generators[key] = found
    return found


@contextlib.contextmanager
def in_turn() -> Iterator[None]:
    """A section that changes model state: entered after the previous micro-batch's section
    (or its end); once it is left, the next micro-batch may enter its own."""
    scope = getattr(_local, "scope", None)
    if scope is None:
        yield
        return
    if scope.previous is not None:
        scope.previous.wait()
    try:
        yield
    finally:
        scope.done.set()
