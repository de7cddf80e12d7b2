"""What a result depends on: the code version, the data's contents, the settings."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import dicmor
from dicmor.config import Config, to_dict
from dicmor.data.dataset import MultimodalDataset


def code_version() -> str:
    """The package version and, when run from a git checkout, its commit."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{dicmor.__version__}+{commit}" if commit else dicmor.__version__


def fingerprint(dataset: MultimodalDataset, splits: Sequence[str] = ("train", "valid")) -> str:
    """A digest of the contents of ``splits`` (by default what a complete-data stage learns
    from: the train and valid splits)."""
    digest = hashlib.sha256(repr(dataset.modality_names).encode())
    for name in splits:
        split = dataset.splits[name]
        arrays = [*split.modalities.values(), split.labels, split.present, *split.extras.values()]
        for array in arrays:
            digest.update(repr((array.shape, array.dtype.str)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def settings_digest(config: Config, **extra: Any) -> str:
    """A digest of what a result depends on: ``config`` (less its output folder, progress
    display and kept outputs), the code version and ``extra`` (entries given as ``None`` are
    left out)."""
    key = to_dict(config)
    key.pop("output_dir")
    key["train"].pop("progress")
    key["train"].pop("save_recovered")
    key["code"] = code_version()
    for name, value in extra.items():
        if value is None:
            key.pop(name, None)
        else:
            key[name] = value
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
