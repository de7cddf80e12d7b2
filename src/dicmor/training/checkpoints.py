"""Weights on disk: a run's checkpoint, and the cache of complete-data stages.

A checkpoint holds the weights, the resolved config and the data description, enough to
rebuild the model for ``dicmor evaluate`` and ``dicmor predict``. A complete-data stage does not
depend on the missing protocol, so its weights are cached under a key of everything else it
depends on (settings, data contents, code version) and reused by later runs.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import asdict
from pathlib import Path

import torch

from dicmor.config import Config, from_dict, to_dict
from dicmor.data.dataset import MultimodalDataset
from dicmor.errors import CheckpointError, ConfigError
from dicmor.models.base import DataInfo, MultimodalModel
from dicmor.provenance import code_version, fingerprint, settings_digest
from dicmor.registry import build_model


def stage_cache_path(config: Config, dataset: MultimodalDataset, stage: str) -> Path:
    """Where a complete-data stage's weights are cached: keyed by everything but the protocol,
    and by the code version, so weights trained by other code are not reused."""
    dataset_key = [dataset.source, dataset.name, fingerprint(dataset)]
    digest = settings_digest(config, missing=None, dataset=dataset_key, stage=stage)[:16]
    return Path(config.output_dir) / "cache" / f"{config.model.method}-{stage}-{digest}.pt"


def load_cached(model: MultimodalModel, path: Path, device: torch.device) -> str | None:
    """Load cached stage weights into ``model``; or, leaving ``model`` as it is, say why not."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # any unreadable file: a truncated write, another format
        return f"unreadable: {type(error).__name__}"
    expected = model.state_dict()
    if not isinstance(state, dict) or set(state) != set(expected):
        return "its parameters are not this model's"
    mismatched = [k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if mismatched:
        return f"{mismatched[0]} has another shape"
    model.load_state_dict(state)
    return None


def save_cached(model: MultimodalModel, path: Path) -> None:
    """Cache ``model``'s weights at ``path``, written whole or not at all: an interrupted run
    leaves no truncated cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(model.state_dict(), partial)
    partial.replace(path)


def save_checkpoint(path: Path, model: MultimodalModel, config: Config) -> None:
    """Weights, the resolved config and the data description, for later use."""
    torch.save(
        {
            "config": to_dict(config),
            "info": asdict(model.info),
            "state_dict": model.state_dict(),
            "version": code_version(),
        },
        path,
    )


def load_checkpoint(
    path: Path | str, device: torch.device | str = "cpu"
) -> tuple[MultimodalModel, Config]:
    """Rebuild a model saved by :func:`save_checkpoint`."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint here")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # a truncated file, another format, a refused pickle
        reason = "refused: it holds more than weights" if _refused(error) else "unreadable"
        raise CheckpointError(f"{path}: not a dicmor checkpoint ({reason})") from None
    missing = [
        k
        for k in ("config", "info", "state_dict")
        if not isinstance(payload, dict) or k not in payload
    ]
    if missing:
        raise CheckpointError(f"{path}: not a dicmor checkpoint (no {missing[0]!r})")
    try:
        config = from_dict(Config, payload["config"])
        info_fields = dict(payload["info"])
        info_fields["modality_names"] = tuple(info_fields["modality_names"])
        info = DataInfo(**info_fields)
        model = build_model(info, config.model)
        model.load_state_dict(payload["state_dict"])
    except (ConfigError, TypeError, KeyError, ValueError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: checkpoint does not rebuild its model ({first})") from None
    return model.to(device).eval(), config


def _refused(error: Exception) -> bool:
    """Whether ``torch.load`` refused the file's pickle (rather than failing to read it)."""
    return isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in str(error)
