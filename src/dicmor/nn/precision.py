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
from collections.abc import Iterator

import torch

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}
"""``train.precision`` values → the autocast dtype (``None``: no autocast)."""


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
