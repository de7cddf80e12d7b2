"""Datasets: the in-memory form, the file formats and the embedded default.

:func:`load_dataset` opens any supported source:

- ``"mfeat"`` or ``"embedded"``: the shipped UCI Multiple Features digits (:mod:`.embedded`);
- ``*.pkl``: an MMSA feature pickle (CMU-MOSI, CMU-MOSEI, CH-SIMS; :mod:`.mmsa`);
- ``*.npz``: the generic format for other datasets (:mod:`.npz`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicmor.data.dataset import SPLITS, DataError, MultimodalDataset, Split
from dicmor.data.embedded import EMBEDDED_DATASETS, load_embedded
from dicmor.data.inspect import describe
from dicmor.data.mmsa import load_mmsa
from dicmor.data.npz import load_npz, save_npz

if TYPE_CHECKING:
    from dicmor.config import DataConfig

__all__ = [
    "SPLITS",
    "DataError",
    "MultimodalDataset",
    "Split",
    "describe",
    "load_data",
    "load_dataset",
    "load_embedded",
    "load_mmsa",
    "load_npz",
    "save_npz",
]


def load_dataset(source: str | Path, **options: Any) -> MultimodalDataset:
    """Load ``source``: an embedded dataset's name, an MMSA ``.pkl`` or a ``.npz`` file.

    ``options`` go to the matching loader (:func:`load_embedded`, :func:`load_mmsa`,
    :func:`load_npz`).
    """
    text = str(source)
    if is_embedded(text):
        return load_embedded(*([] if text == "embedded" else [text]), **options)
    path = Path(source)
    if not path.exists():
        raise DataError(f"{text}: no such file")
    if path.is_dir():
        raise DataError(f"{text}: is a directory; give the .pkl or .npz file")
    loaders = {".pkl": load_mmsa, ".npz": load_npz}
    loader = loaders.get(path.suffix.lower())
    if loader is None:
        raise DataError(
            f"{text}: unknown format '{path.suffix}' (expected an MMSA .pkl, a .npz file, "
            f"or one of {['embedded', *EMBEDDED_DATASETS]})"
        )
    return loader(path, **options)


def is_embedded(source: str) -> bool:
    """Whether ``source`` names a shipped dataset (``embedded`` is the default one)."""
    return source == "embedded" or source in EMBEDDED_DATASETS


def load_data(config: DataConfig) -> MultimodalDataset:
    """The dataset a ``data`` config block names, restricted to its modalities."""
    if is_embedded(config.source):
        options: dict[str, Any] = {"seed": config.split_seed}
        if config.modalities is not None:
            options["views"] = config.modalities
        return load_dataset(config.source, **options)
    options = {}
    if config.source.endswith((".pkl", ".npz")) and config.seq_len is not None:
        options["seq_len"] = config.seq_len
    dataset = load_dataset(config.source, **options)
    if config.modalities is not None:
        dataset = dataset.select(config.modalities)
    return dataset
