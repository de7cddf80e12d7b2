"""Mixed precision: training in bfloat16 under `torch.autocast`, and the parts kept in float32.

``train.precision: bfloat16`` runs each training step's forward and losses (and the validation
passes) under autocast: products and convolutions take bfloat16 operands, whose products this
kind of CPU (AVX512-BF16) and GPUs run two to three times faster than float32 ones; the weights,
gradients and optimiser state stay float32. What a bfloat16 mantissa (8 bits, relative rounding
4e-3) would spoil runs in float32 inside `full_precision`: a normalizing flow's composition of
32 steps, its log-determinants and likelihoods, and every loss's reduction.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}
"""``train.precision`` values → the autocast dtype (``None``: no autocast)."""


BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags (Linux ``/proc/cpuinfo``) of instructions that run bfloat16 products natively."""


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags as Linux reports them (empty where it does not)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def check_precision(precision: str, device: torch.device) -> None:
    """Warn when ``precision`` is bfloat16 on a CPU known to lack bfloat16 products, where
    PyTorch emulates them and training gets slower, not faster."""
    if precision != "bfloat16" or device.type != "cpu":
        return
    flags = cpu_flags()
    if flags and not any(flag in flags for flag in BFLOAT16_CPU_FLAGS):
        warnings.warn(
            "train.precision is bfloat16 but this CPU has no bfloat16 products "
            f"({' / '.join(BFLOAT16_CPU_FLAGS)}): they are emulated, and training will be "
            "slower than in float32",
            stacklevel=2,
        )


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a training step runs in for ``precision`` on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def full_precision(reference: torch.Tensor) -> Iterator[None]:
    """Autocast off on ``reference``'s device for the block (nothing changes where it is off);
    widen the block's inputs with `widened`."""
    device = reference.device.type
    if not torch.is_autocast_enabled(device):
        yield
        return
    with torch.autocast(device, enabled=False):
        yield


def widened(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 if it is in a half-width float type, else unchanged (float64
    stays float64)."""
    if tensor.dtype in (torch.bfloat16, torch.float16):
        return tensor.float()
    return tensor


def autocast_operands(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """A custom autograd function's floating operands in the autocast dtype where autocast is
    on for the first one's device (else unchanged): what its forward saves then has the dtype of
    the gradients its backward receives, as autocast's own products arrange."""
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)
