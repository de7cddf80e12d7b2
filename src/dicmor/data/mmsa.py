"""Loader for MMSA feature pickles (CMU-MOSI, CMU-MOSEI, CH-SIMS: ``aligned_50.pkl``,
``unaligned_50.pkl``).

An MMSA file is a pickled dict with the splits ``train``, ``valid`` and ``test``; each split is a
dict of arrays with ``N`` rows:

=========================  ==================  ==============================================
key                        shape               use here
=========================  ==================  ==============================================
``text``                   (N, T, 768)         modality ``text`` (pre-extracted BERT features)
``text_bert``              (N, 3, T)           optional; kept as ``extras["text_bert"]``
``audio``                  (N, T, Da)          modality ``audio`` (COVAREP; holds ``-inf``)
``vision``                 (N, T, Dv)          modality ``vision`` (FACET)
``regression_labels``      (N,)                the label (float32, regression task)
``id``                     (N,)                sample ids (``video$_$segment``)
``audio_lengths``          (N,)                unaligned files: valid prefix of ``audio``
``vision_lengths``         (N,)                unaligned files: valid prefix of ``vision``
=========================  ==================  ==============================================

Other keys (``classification_labels``, ``raw_text``, ``annotations``, ...) are ignored. No entry
of these files is genuinely missing, so every sample has every modality present.

Non-finite feature values (COVAREP writes ``-inf``) are replaced by 0, as the field does; the
count per split and modality is recorded in ``dataset.notes``.

**Unaligned files.** DiCMoR decodes one modality's latent with another modality's flow, so all
modalities must share one sequence length. A file is unaligned when its modalities differ in
``T`` or it holds ``audio_lengths``/``vision_lengths``. When the modalities differ in ``T``, or
when ``seq_len`` is given, every modality is resampled to one common length (``seq_len``, by
default the text length): each sample's valid prefix (``audio_lengths``/``vision_lengths``; for
text the attention-mask length of ``text_bert``, else its full length) is linearly interpolated
at evenly spaced points that keep its first and last step, so the clip's start and end line up
across modalities; a sample with length 0 becomes zeros and a length above ``T`` counts as
``T``. Aligned files resampled with ``seq_len`` use the full stored length for every modality,
which keeps the word alignment.
``text_bert`` keeps its stored token length: a model that encodes it must map its output to the
common length itself.

**Safety.** Unpickling can run any code the file's author chose. Files are read with a restricted
unpickler that builds only containers, scalars and numpy arrays; any other global is refused
before it is resolved, so nothing of it runs.
"""

from __future__ import annotations

import codecs
import importlib
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from dicmor.data.dataset import SPLITS, DataError, MultimodalDataset, Split

MODALITIES: tuple[str, ...] = ("text", "audio", "vision")
LENGTH_KEYS: dict[str, str] = {"audio": "audio_lengths", "vision": "vision_lengths"}
_LABEL_KEY = "regression_labels"
_RESAMPLE_CHUNK = 512


def _numpy_module(name: str) -> Any:
    """``numpy._core.<name>`` (numpy >= 2) or ``numpy.core.<name>`` (numpy 1.x)."""
    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{name}")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    multiarray = _numpy_module("multiarray")
    numeric = _numpy_module("numeric")
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Pickle protocol 2 stores bytes as _codecs.encode(str, "latin1").
        ("_codecs", "encode"): codecs.encode,
    }
    # Protocols below 3 name the builtins module "__builtin__".
    for module in ("builtins", "__builtin__"):
        for obj in (set, frozenset, bytearray, complex):
            allowed[(module, obj.__name__)] = obj
    # numpy 1.x pickles name numpy.core, numpy 2 pickles numpy._core; protocol 5 uses _frombuffer.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


_ALLOWED = _allowed_globals()


class _FeatureUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``_ALLOWED`` and numpy's dtype classes."""

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is None and module == "numpy.dtypes":
            candidate = getattr(np, "dtypes", None) and getattr(np.dtypes, name, None)
            if isinstance(candidate, type) and issubclass(candidate, np.dtype):
                allowed = candidate
        if allowed is None:
            raise DataError(
                f"{self._source}: refused to unpickle '{module}.{name}' "
                "(only containers and numpy arrays are allowed)"
            )
        return allowed


def read_feature_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` admitting only containers, scalars and numpy arrays.

    Raises :class:`DataError` naming the file when it holds any other object or is truncated or
    corrupt.
    """
    where = str(path)
    try:
        with open(path, "rb") as handle:
            return _FeatureUnpickler(handle, where).load()
    except DataError:
        raise
    except OSError as error:
        raise DataError(f"{where}: cannot read file ({error.strerror or error})") from error
    # A damaged pickle can fail inside any constructor it reaches, with any exception type.
    except Exception as error:
        raise DataError(
            f"{where}: truncated or corrupt pickle ({type(error).__name__}: {error})"
        ) from error


def resample_sequences(x: np.ndarray, lengths: np.ndarray, length: int) -> np.ndarray:
    """Linearly resample each sample's valid prefix to ``length`` steps.

    Args:
        x: ``(N, T, D)`` features; steps at or after a sample's length are ignored.
        lengths: ``(N,)`` valid prefix lengths in ``[0, T]``.
        length: the output length.

    Returns:
        ``(N, length, D)`` float32; output step ``j`` reads the prefix at position
        ``j * (L - 1) / (length - 1)``, so the first and last valid steps are kept; samples with
        ``L = 0`` are zeros.
    """
    n, t, d = x.shape
    out = np.zeros((n, length, d), dtype=np.float32)
    steps = np.arange(length, dtype=np.float64) / max(length - 1, 1)  # (length,)
    for start in range(0, n, _RESAMPLE_CHUNK):
        stop = min(start + _RESAMPLE_CHUNK, n)
        last = np.clip(lengths[start:stop], 1, t).astype(np.float64) - 1  # (n_c,)
        position = steps[None, :] * last[:, None]  # (n_c, length)
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, last[:, None].astype(np.int64))
        weight = (position - low)[..., None].astype(np.float32)  # (n_c, length, 1)
        chunk = x[start:stop]
        below = np.take_along_axis(chunk, low[..., None], axis=1)  # (n_c, length, D)
        above = np.take_along_axis(chunk, high[..., None], axis=1)  # (n_c, length, D)
        out[start:stop] = below * (1 - weight) + above * weight
    out[lengths == 0] = 0
    return out


def _features(
    raw: dict[str, Any], key: str, where: str, split: str, notes: list[str]
) -> np.ndarray:
    """``raw[key]`` as finite float32 ``(N, T, D)``; non-finite values become 0 (noted)."""
    try:
        array = np.asarray(raw[key], dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise DataError(f"{where}: {split}/{key} is not a numeric array ({error})") from error
    if array.ndim != 3:
        raise DataError(f"{where}: {split}/{key} must have shape (N, T, D), got {array.shape}")
    finite = np.isfinite(array)
    bad = int(array.size - np.count_nonzero(finite))
    if bad:
        array = np.where(finite, array, np.float32(0))
        notes.append(f"{split}/{key}: {bad} non-finite values replaced by 0")
    return np.ascontiguousarray(array)


def _lengths(raw: dict[str, Any], key: str, where: str, split: str, n: int) -> np.ndarray:
    """The ``(N,)`` valid lengths stored under ``key``."""
    lengths = np.asarray(raw[key])
    if lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.number):
        raise DataError(f"{where}: {split}/{key} must be {n} numbers, got {lengths.shape}")
    if not np.all(np.isfinite(lengths)) or lengths.min() < 0:
        raise DataError(f"{where}: {split}/{key} must hold non-negative lengths")
    return lengths.astype(np.int64)


def _read_split(
    raw: Any, where: str, split: str, label_range: tuple[float, float], notes: list[str]
) -> dict[str, Any]:
    """Validate one split's dict; return its labels, ids, features, lengths and ``text_bert``."""
    if not isinstance(raw, dict):
        raise DataError(
            f"{where}: split '{split}' must be a dict of arrays, got {type(raw).__name__}"
        )
    for key in (*MODALITIES, _LABEL_KEY):
        if key not in raw:
            raise DataError(f"{where}: split '{split}' has no key '{key}'")
    try:
        labels = np.asarray(raw[_LABEL_KEY], dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise DataError(f"{where}: {split}/{_LABEL_KEY} is not numeric ({error})") from error
    if labels.ndim != 1:
        raise DataError(f"{where}: {split}/{_LABEL_KEY} must have shape (N,), got {labels.shape}")
    n = labels.shape[0]
    if n == 0:
        raise DataError(f"{where}: split '{split}' is empty")
    if not np.all(np.isfinite(labels)):
        raise DataError(f"{where}: {split}/{_LABEL_KEY} contains NaN or infinite values")
    low, high = label_range
    if labels.min() < low or labels.max() > high:
        raise DataError(
            f"{where}: {split}/{_LABEL_KEY} has values outside [{low}, {high}] "
            f"(min {labels.min():g}, max {labels.max():g})"
        )
    features = {m: _features(raw, m, where, split, notes) for m in MODALITIES}
    for m, array in features.items():
        if array.shape[0] != n:
            raise DataError(
                f"{where}: {split}/{m} has {array.shape[0]} samples, "
                f"but {split}/{_LABEL_KEY} has {n}"
            )
    text_bert = None
    if "text_bert" in raw:
        text_bert = np.asarray(raw["text_bert"], dtype=np.float32)
        t_text = features["text"].shape[1]
        if text_bert.shape != (n, 3, t_text):
            raise DataError(
                f"{where}: {split}/text_bert must have shape ({n}, 3, {t_text}), "
                f"got {text_bert.shape}"
            )
    if "id" in raw:
        ids = np.asarray(raw["id"]).astype(str)
        if ids.shape != (n,):
            raise DataError(f"{where}: {split}/id has shape {ids.shape}, expected ({n},)")
    else:
        ids = np.array([f"{split}-{i}" for i in range(n)])
    lengths = {
        m: _lengths(raw, key, where, split, n) for m, key in LENGTH_KEYS.items() if key in raw
    }
    return {
        "labels": labels,
        "ids": ids,
        "features": features,
        "lengths": lengths,
        "text_bert": text_bert,
    }


def load_mmsa(
    path: str | Path,
    *,
    name: str | None = None,
    seq_len: int | None = None,
    label_range: tuple[float, float] = (-3.0, 3.0),
) -> MultimodalDataset:
    """Load an MMSA feature pickle as a regression dataset with modalities text, audio, vision.

    Args:
        path: the ``.pkl`` file.
        name: dataset name; defaults to the file name without suffix.
        seq_len: resample every modality to this length (see the module docstring); ``None``
            keeps aligned files as stored and resamples unaligned ones to the text length.
        label_range: the closed interval every regression label must lie in.

    Returns:
        A :class:`MultimodalDataset` whose modalities are float32 ``(N, T, D)`` with one ``T``.
    """
    where = str(path)
    if seq_len is not None and seq_len < 1:
        raise DataError(f"{where}: seq_len must be a positive integer, got {seq_len}")
    if label_range[0] >= label_range[1]:
        raise DataError(f"{where}: label_range must be (low, high) with low < high")
    content = read_feature_pickle(path)
    if not isinstance(content, dict):
        raise DataError(f"{where}: expected a dict of splits, got {type(content).__name__}")
    missing = [s for s in SPLITS if s not in content]
    if missing:
        raise DataError(f"{where}: missing splits {missing} (found {sorted(map(str, content))})")
    notes: list[str] = []
    parts = {s: _read_split(content[s], where, s, label_range, notes) for s in SPLITS}
    for m in MODALITIES:
        reference = parts["train"]["features"][m].shape[1:]
        for s in SPLITS[1:]:
            shape = parts[s]["features"][m].shape[1:]
            if shape != reference:
                raise DataError(
                    f"{where}: {s}/{m} has (T, D) = {shape}, but train/{m} has {reference}"
                )
    for s in SPLITS[1:]:
        if set(parts[s]["lengths"]) != set(parts["train"]["lengths"]):
            raise DataError(f"{where}: {s} and train differ in which *_lengths keys they hold")
    seq_lens = {m: parts["train"]["features"][m].shape[1] for m in MODALITIES}
    unaligned = len(set(seq_lens.values())) > 1 or bool(parts["train"]["lengths"])
    target = seq_len if seq_len is not None else seq_lens["text"]
    if seq_len is not None or len(set(seq_lens.values())) > 1:
        for s in SPLITS:
            _resample_split(parts[s], target, unaligned)
        kind = "valid prefixes" if unaligned else "full sequences"
        notes.append(f"all modalities resampled to T={target} ({kind}, linear interpolation)")
    splits = {}
    for s in SPLITS:
        part = parts[s]
        n = part["labels"].shape[0]
        extras = {} if part["text_bert"] is None else {"text_bert": part["text_bert"]}
        splits[s] = Split(
            modalities={m: part["features"][m] for m in MODALITIES},
            labels=part["labels"],
            ids=part["ids"],
            present=np.ones((n, len(MODALITIES)), dtype=bool),
            extras=extras,
        )
    return MultimodalDataset(
        name=name if name is not None else Path(path).stem,
        task="regression",
        num_classes=None,
        modality_names=MODALITIES,
        splits=splits,
        source=where,
        notes=notes,
    )


def _resample_split(part: dict[str, Any], target: int, unaligned: bool) -> None:
    """Resample ``part["features"]`` in place to ``target`` steps (see the module docstring)."""
    n = part["labels"].shape[0]
    for m, x in part["features"].items():
        lengths = np.full(n, x.shape[1], dtype=np.int64)
        if unaligned and m in part["lengths"]:
            lengths = part["lengths"][m]
        elif unaligned and m == "text" and part["text_bert"] is not None:
            lengths = np.count_nonzero(part["text_bert"][:, 1] > 0, axis=1)
        part["features"][m] = resample_sequences(x, lengths, target)
