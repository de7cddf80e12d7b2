"""Fixtures for the data tests: MMSA-layout pickles and npz files written to a temporary folder."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dicmor.data.synthetic import make_mmsa_dict


@pytest.fixture
def mmsa_content() -> dict[str, dict[str, Any]]:
    """A small aligned MMSA dict with CMU-MOSI's feature sizes (768, 5, 20)."""
    return make_mmsa_dict(12, 5, 6, seq_len=20, seed=0)


@pytest.fixture
def write_pickle(tmp_path: Path) -> Callable[..., Path]:
    """Write any object as a pickle in ``tmp_path``; return its path."""

    def write(content: Any, name: str = "features.pkl", protocol: int = 4) -> Path:
        path = tmp_path / name
        path.write_bytes(pickle.dumps(content, protocol=protocol))
        return path

    return write


@pytest.fixture
def write_npz(tmp_path: Path) -> Callable[..., Path]:
    """Write ``{key: array}`` as an npz in ``tmp_path``; return its path."""

    def write(arrays: dict[str, np.ndarray], name: str = "data.npz") -> Path:
        path = tmp_path / name
        np.savez(path, **arrays)
        return path

    return write


@pytest.fixture
def npz_arrays() -> dict[str, np.ndarray]:
    """A valid npz dataset: a sequence modality ``seq`` (N, 4, 3), a vector modality ``vec``
    (N, 5), integer labels in [0, 3), 6/3/3 samples."""
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for split, n in (("train", 6), ("valid", 3), ("test", 3)):
        arrays[f"{split}/seq"] = rng.standard_normal((n, 4, 3)).astype(np.float32)
        arrays[f"{split}/vec"] = rng.standard_normal((n, 5))
        arrays[f"{split}/label"] = np.arange(n) % 3
    return arrays
