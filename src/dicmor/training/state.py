"""A run's training state on disk, so that a killed run resumes where it stopped.

After every epoch (and at the end of every stage) a run writes ``state.pt``: the stage it is in,
what the finished stages did, the model's weights and, inside a stage, everything the training
loop carries from one epoch to the next (optimiser and scheduler state, the early-stopping
counters, the best weights so far, the history) and every random generator. The file is written
whole or not at all (a temporary file, flushed to disk, renamed over the old one), and read with
``weights_only=True``: it holds tensors, numbers, strings, lists and dicts only.

Resuming from a state gives the same numbers as never stopping: data order and simulated masks
are functions of the seed and the epoch, and the generators that dropout draws from are restored.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"
FORMAT = 1


def rng_state() -> dict[str, Any]:
    """Every generator training draws from: PyTorch's (CPU and each CUDA device), NumPy's global
    one and Python's, as tensors, numbers and lists."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    keys = saved["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (saved["kind"], keys, saved["position"], saved["has_gauss"], saved["gauss"])
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_atomic(path: Path, payload: object) -> None:
    """``torch.save`` to ``path``, whole or not at all, and on disk when this returns."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(partial, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def save_state(run_dir: Path, key: str, state: dict[str, Any]) -> None:
    """Write a run's state (see the module docstring) under the run's identity ``key``."""
    write_atomic(run_dir / STATE_FILE, {"format": FORMAT, "key": key, **state})


def load_state(run_dir: Path, key: str) -> tuple[dict[str, Any] | None, str | None]:
    """The state a run saved, or ``None`` and why it cannot be used (``None``, ``None`` when
    there is none). A truncated or foreign file, or a state of another run, is not used."""
    path = run_dir / STATE_FILE
    if not path.is_file():
        return None, None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated write, another format, a hostile pickle
        return None, f"{path} is unreadable ({type(error).__name__}); training from the start"
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        return None, f"{path} is not a training state of this format; training from the start"
    if state.get("key") != key:
        return None, f"{path} is the state of another run; training from the start"
    return state, None
