"""Shared fixtures: tiny datasets built in memory and small model configs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from dicmor.config import Config, load_config
from dicmor.data.batches import Batches
from dicmor.data.dataset import MultimodalDataset, Split
from dicmor.models.base import DataInfo
from dicmor.registry import build_model

# Methods defined outside the package that every registry-parametrised test covers too; set
# before any lookup of the registry (and inherited by the command-line runs of the tests).
PLUGINS = [str(Path(__file__).parent / "methods" / "segments.py")]
os.environ["DICMOR_PLUGINS"] = ",".join(
    [*filter(None, os.environ.get("DICMOR_PLUGINS", "").split(",")), *PLUGINS]
)

SHAPES = {"text": (6, 12), "audio": (6, 5), "vision": (6, 7)}


def tiny_dataset(task: str = "regression", n: int = 24, seed: int = 0) -> MultimodalDataset:
    """Three modalities of length 6 whose features carry the label, plus a genuinely absent
    audio entry in every split."""
    rng = np.random.default_rng(seed)
    splits = {}
    for k, name in enumerate(("train", "valid", "test")):
        if task == "regression":
            labels = rng.uniform(-3, 3, n).astype(np.float32)
        else:
            labels = rng.integers(0, 3, n).astype(np.int64)
        modalities = {}
        for m, (t, d) in SHAPES.items():
            direction = rng.normal(size=d)
            x = rng.normal(size=(n, t, d)) + labels[:, None, None] * direction
            modalities[m] = x.astype(np.float32)
        present = np.ones((n, 3), dtype=bool)
        present[k, 1] = False
        modalities["audio"][k] = 0.0
        splits[name] = Split(
            modalities=modalities,
            labels=labels,
            # MMSA-style ids: videos of 4 segments (methods that group segments use them).
            ids=np.array([f"{name}{i // 4}$_${i % 4 + 1}" for i in range(n)]),
            present=present,
        )
    return MultimodalDataset(
        "tiny", task, 3 if task == "classification" else None, tuple(SHAPES), splits, "tiny"
    )


def shared_factor_dataset() -> MultimodalDataset:
    """The learning tests' data: 400 samples of six classes, three modalities (4 steps × 16
    features) that each hint at the class and share 8 sample-level factors beyond it (each sees
    part of them), so one modality's features say something about another's."""
    from dicmor.data.synthetic import make_classification_dataset

    shapes = {"a": (4, 16), "b": (4, 16), "c": (4, 16)}
    return make_classification_dataset(
        400,
        num_classes=6,
        modalities=shapes,
        seed=0,
        signal=2.0,
        shared_factors=8,
        shared_signal=2.0,
    )


def small_config(method: str, **overrides: object) -> Config:
    """The ``tiny`` preset with small batches and two epochs: a few seconds of CPU. Its kernel
    of 2 steps exercises the temporal convolution on the tests' sequences."""
    changes = {
        "model.method": method,
        "model.kernel_size": 2,
        "train.batch_size": 8,
        "train.max_epochs": 2,
        "train.progress": False,
    }
    changes.update(overrides)
    return load_config("tiny", changes)


def build_model_for(method: str, task: str = "regression", **overrides: object):
    """``(model, data)``: ``method`` at ``small_config`` sizes for ``tiny_dataset(task)``."""
    torch.manual_seed(0)
    data = tiny_dataset(task)
    config = small_config(method, **overrides)
    return build_model(DataInfo.from_dataset(data), config.model), data


def train_batch(data, mask: np.ndarray, present: np.ndarray | None = None) -> dict:
    """The first 8 training samples under availability ``mask``, with reconstruction targets;
    ``present`` overwrites the split's genuinely-present flags first."""
    split = data.splits["train"]
    if present is not None:
        split.present[:] = present
    return next(iter(Batches(split, data.modality_names, mask, 8, with_targets=True)))


PRODUCTS = ("mm", "bmm", "addmm", "baddbmm", "convolution")


@contextmanager
def op_dtypes(names: tuple[str, ...]) -> Iterator[list[torch.dtype]]:
    """The output dtype of every ATen operation named in ``names`` run in the block, forward
    and backward, in order."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[torch.dtype] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.__name__.split(".")[0] in names:
                seen.append(out.dtype)
            return out

    with Record():
        yield seen


def product_dtypes() -> contextlib.AbstractContextManager[list[torch.dtype]]:
    """`op_dtypes` of the products (mm, bmm, addmm, baddbmm, convolution)."""
    return op_dtypes(PRODUCTS)


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Models this small gain nothing from intra-op threads; on a busy machine their
    synchronisation makes each of the many tiny operations wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def regression_data() -> MultimodalDataset:
    return tiny_dataset("regression")


@pytest.fixture
def classification_data() -> MultimodalDataset:
    return tiny_dataset("classification")
