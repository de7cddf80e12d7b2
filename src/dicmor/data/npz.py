"""A generic ``.npz`` format for bringing your own multimodal dataset.

One ``.npz`` file (``numpy.savez``/``savez_compressed``; no pickled objects) holds the three
splits ``train``, ``valid`` and ``test``. Keys, with ``N`` the number of samples of the split:

================================  ==============  ===============================================
key                               shape / dtype   meaning
================================  ==============  ===============================================
``{split}/{modality}``            (N, T, D) or    features of one modality; a vector modality
                                  (N, D), numeric (N, D) is stored as T = 1
``{split}/label``                 (N,)            integer: classification; float: regression
``{split}/present/{modality}``    (N,) bool       optional; False marks a genuinely missing entry
``{split}/id``                    (N,) str        optional; default ``"{split}-{index}"``
``{split}/extras/{key}``          (N, ...)        optional per-sample arrays kept in ``extras``
``num_classes``                   scalar int      optional; default: largest label + 1;
                                                  at most the number of samples or 1000
``name``                          scalar str      optional; default: the file name
================================  ==============  ===============================================

Rules: every split has the same modalities, each with the same ``(T, D)`` in every split, and at
least two of them; ``T`` and ``D`` are at least 1; features are real (not complex) and, when finite,
within float32's range. Methods that recover one modality from another need one ``T`` for all
modalities: give ``seq_len`` (``--set data.seq_len=L``) to resample each to ``L`` steps. The names
``label``, ``id``, ``present`` and ``extras`` are reserved. All splits hold labels of the same kind;
class labels lie in ``[0, num_classes)``; float labels are finite. Every sample has at least one
present modality. Features of absent entries are set to 0 on load; non-finite features of present
entries are replaced by 0 and counted in ``dataset.notes``. Any other key is an error, so a misspelt
key cannot be silently ignored.

Example::

    np.savez("mine.npz", **{"train/rgb": x_rgb, "train/depth": x_depth, "train/label": y, ...})
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from dicmor.data.dataset import SPLITS, DataError, MultimodalDataset, Split
from dicmor.data.mmsa import resample_sequences

_RESERVED = ("label", "id", "present", "extras")
_TOP_LEVEL = ("num_classes", "name")


def _read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of the file, read eagerly so that a damaged member fails here."""
    where = str(path)
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"{where}: holds one .npy array, not an npz archive of named arrays")
        with archive:
            return {key: archive[key] for key in archive.files}
    except FileNotFoundError as error:
        raise DataError(f"{where}: no such file") from error
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise DataError(
                f"{where}: holds pickled objects; store ids and names as str arrays"
            ) from error
        raise DataError(f"{where}: truncated or corrupt npz file ({error})") from error
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{where}: truncated or corrupt npz file ({error})") from error


def _group_keys(arrays: dict[str, np.ndarray], where: str) -> dict[str, dict[str, dict]]:
    """Sort keys into ``{split: {"features"|"present"|"extras"|"fields": {name: array}}}``."""
    groups: dict[str, dict[str, dict]] = {
        s: {"features": {}, "present": {}, "extras": {}, "fields": {}} for s in SPLITS
    }
    for key, array in arrays.items():
        parts = key.split("/")
        if len(parts) == 1 and key in _TOP_LEVEL:
            continue
        if parts[0] not in SPLITS:
            raise DataError(
                f"{where}: unknown key '{key}' (expected 'SPLIT/...' with SPLIT in "
                f"{list(SPLITS)}, or one of {list(_TOP_LEVEL)})"
            )
        group = groups[parts[0]]
        if len(parts) == 2 and parts[1] in ("label", "id"):
            group["fields"][parts[1]] = array
        elif len(parts) == 2 and parts[1] not in _RESERVED:
            group["features"][parts[1]] = array
        elif len(parts) == 3 and parts[1] in ("present", "extras"):
            group[parts[1]][parts[2]] = array
        else:
            raise DataError(f"{where}: unknown key '{key}'")
    return groups


def _labels(group: dict[str, dict], where: str, split: str) -> np.ndarray:
    labels = group["fields"].get("label")
    if labels is None:
        raise DataError(f"{where}: missing key '{split}/label'")
    if labels.ndim != 1:
        raise DataError(f"{where}: {split}/label must have shape (N,), got {labels.shape}")
    if labels.shape[0] == 0:
        raise DataError(f"{where}: split '{split}' is empty")
    if np.issubdtype(labels.dtype, np.integer):
        if labels.min() < 0:
            raise DataError(
                f"{where}: {split}/label has negative class labels (min {labels.min()})"
            )
        return labels.astype(np.int64)
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)):
            raise DataError(f"{where}: {split}/label contains NaN or infinite values")
        return labels.astype(np.float32)
    raise DataError(f"{where}: {split}/label must be integer or float, got {labels.dtype}")


def _split(
    group: dict[str, dict], where: str, split: str, modalities: list[str], notes: list[str]
) -> Split:
    """Validate one split's arrays and build its :class:`Split`."""
    labels = _labels(group, where, split)
    n = labels.shape[0]
    if sorted(group["features"]) != sorted(modalities):
        raise DataError(
            f"{where}: {split} has modalities {sorted(group['features'])}, "
            f"but train has {sorted(modalities)}"
        )
    unknown = sorted(set(group["present"]) - set(modalities))
    if unknown:
        raise DataError(f"{where}: {split}/present names unknown modalities {unknown}")
    features: dict[str, np.ndarray] = {}
    present = np.ones((n, len(modalities)), dtype=bool)
    for column, m in enumerate(modalities):
        array = group["features"][m]
        if array.ndim not in (2, 3):
            raise DataError(
                f"{where}: {split}/{m} must have shape (N, T, D) or (N, D), got {array.shape}"
            )
        if array.shape[0] != n:
            raise DataError(
                f"{where}: {split}/{m} has {array.shape[0]} samples, but {split}/label has {n}"
            )
        if array.dtype.kind not in "biuf":
            raise DataError(f"{where}: {split}/{m} must be numeric and real, got {array.dtype}")
        if 0 in array.shape[1:]:
            raise DataError(
                f"{where}: {split}/{m} has shape {array.shape}: its length and feature dimension "
                "must be at least 1"
            )
        if array.dtype.kind == "f" and array.dtype.itemsize > 4:
            finite = array[np.isfinite(array)]
            if finite.size and np.abs(finite).max() > np.finfo(np.float32).max:
                raise DataError(
                    f"{where}: {split}/{m} holds values up to {np.abs(finite).max():.3g}, beyond "
                    "float32's range; rescale the features"
                )
        x = array.astype(np.float32)
        if x.ndim == 2:
            x = x[:, None, :]  # (N, 1, D)
        if m in group["present"]:
            mask = group["present"][m]
            if mask.shape != (n,) or mask.dtype != bool:
                raise DataError(
                    f"{where}: {split}/present/{m} must be bool of shape ({n},), "
                    f"got {mask.dtype} {mask.shape}"
                )
            present[:, column] = mask
            x[~mask] = 0
        finite = np.isfinite(x)
        bad = int(x.size - np.count_nonzero(finite))
        if bad:
            x[~finite] = 0
            notes.append(f"{split}/{m}: {bad} non-finite values replaced by 0")
        features[m] = x
    ids = group["fields"].get("id")
    if ids is None:
        ids = np.array([f"{split}-{i}" for i in range(n)])
    elif ids.shape != (n,):
        raise DataError(f"{where}: {split}/id has shape {ids.shape}, expected ({n},)")
    ids = ids.astype(str)
    empty = np.flatnonzero(~present.any(axis=1))
    if empty.size:
        raise DataError(
            f"{where}: {split} sample {empty[0]} (id '{ids[empty[0]]}') has no present modality "
            f"({empty.size} such samples)"
        )
    for key, array in group["extras"].items():
        if array.ndim == 0 or array.shape[0] != n:
            raise DataError(f"{where}: {split}/extras/{key} must have {n} rows, got {array.shape}")
    return Split(features, labels, ids, present, dict(group["extras"]))


def _check_lengths(
    splits: dict[str, Split], where: str, seq_len: int | None, notes: list[str]
) -> None:
    """Every modality has one ``(T, D)`` across splits; with ``seq_len``, each is resampled in
    place to that length."""
    shapes = {m: x.shape[1:] for m, x in splits["train"].modalities.items()}
    for s, split in splits.items():
        for m, x in split.modalities.items():
            if x.shape[1:] != shapes[m]:
                raise DataError(
                    f"{where}: {s}/{m} has (T, D) = {x.shape[1:]}, but train/{m} has {shapes[m]}"
                )
    if seq_len is not None:
        for split in splits.values():
            for m, x in split.modalities.items():
                lengths = np.full(len(x), x.shape[1], dtype=np.int64)
                split.modalities[m] = resample_sequences(x, lengths, seq_len)
        notes.append(f"all modalities resampled to T={seq_len} (linear interpolation)")


def _num_classes(arrays: dict[str, np.ndarray], splits: dict[str, Split], where: str) -> int:
    largest = max(int(split.labels.max()) for split in splits.values())
    bound = max(1000, sum(len(split.labels) for split in splits.values()))
    if largest >= bound:
        raise DataError(
            f"{where}: a class label is {largest}, more classes than samples; class labels "
            "must be 0, 1, …, num_classes - 1"
        )
    if "num_classes" not in arrays:
        return largest + 1
    stored = arrays["num_classes"]
    if stored.shape != () or not np.issubdtype(stored.dtype, np.integer):
        raise DataError(
            f"{where}: num_classes must be a scalar integer, got {stored.dtype} {stored.shape}"
        )
    if int(stored) <= largest:
        raise DataError(f"{where}: num_classes is {int(stored)}, but a label is {largest}")
    if int(stored) > bound:
        raise DataError(f"{where}: num_classes is {int(stored)}, more classes than samples")
    return int(stored)


def load_npz(
    path: str | Path, *, name: str | None = None, seq_len: int | None = None
) -> MultimodalDataset:
    """Load a dataset stored in the format of the module docstring.

    Args:
        path: the ``.npz`` file.
        name: dataset name; defaults to the file's ``name`` key, else the file name without suffix.
        seq_len: resample every modality (its full stored sequence, linearly) to this length.

    Returns:
        A :class:`MultimodalDataset`; modalities are float32 ``(N, T, D)`` in the order of the
        train split's keys.
    """
    where = str(path)
    arrays = _read_arrays(path)
    groups = _group_keys(arrays, where)
    for s in SPLITS:
        if not any(groups[s].values()):
            raise DataError(f"{where}: missing split '{s}' (no '{s}/...' keys)")
    modalities = list(groups["train"]["features"])
    notes: list[str] = []
    if seq_len is not None and seq_len < 1:
        raise DataError(f"{where}: seq_len must be a positive integer, got {seq_len}")
    splits = {s: _split(groups[s], where, s, modalities, notes) for s in SPLITS}
    _check_lengths(splits, where, seq_len, notes)
    kinds = {s: split.labels.dtype == np.int64 for s, split in splits.items()}
    if len(set(kinds.values())) > 1:
        kind = {s: "integer" if k else "float" for s, k in kinds.items()}
        raise DataError(f"{where}: all splits need labels of one kind, got {kind}")
    classification = kinds["train"]
    if not classification and "num_classes" in arrays:
        raise DataError(f"{where}: num_classes is given, but the labels are float (regression)")
    if name is None:
        name = str(arrays["name"]) if "name" in arrays else Path(path).stem
    return MultimodalDataset(
        name=name,
        task="classification" if classification else "regression",
        num_classes=_num_classes(arrays, splits, where) if classification else None,
        modality_names=tuple(modalities),
        splits=splits,
        source=where,
        notes=notes,
    )


def save_npz(dataset: MultimodalDataset, path: str | Path, *, compress: bool = True) -> Path:
    """Write ``dataset`` in the format of the module docstring; return the path written.

    Presence masks, ids, extras, the name and (for classification) ``num_classes`` are stored,
    so :func:`load_npz` gives back the same arrays. ``compress=False`` writes faster.
    """
    clashing = [m for m in dataset.modality_names if m in _RESERVED or "/" in m]
    if clashing:
        raise DataError(
            f"{path}: modality names {clashing} cannot be stored (reserved or containing '/')"
        )
    arrays: dict[str, np.ndarray] = {"name": np.array(dataset.name)}
    if dataset.num_classes is not None:
        arrays["num_classes"] = np.array(dataset.num_classes, dtype=np.int64)
    for s in SPLITS:
        split = dataset.splits[s]
        for column, m in enumerate(dataset.modality_names):
            arrays[f"{s}/{m}"] = split.modalities[m]
            arrays[f"{s}/present/{m}"] = split.present[:, column]
        arrays[f"{s}/label"] = split.labels
        arrays[f"{s}/id"] = split.ids.astype(str)
        for key, array in split.extras.items():
            arrays[f"{s}/extras/{key}"] = array
    path = Path(path)
    (np.savez_compressed if compress else np.savez)(path, **arrays)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")
