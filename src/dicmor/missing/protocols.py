"""Missing-modality protocols: seeded, pure-numpy availability masks.

A mask ``available: (N, M)`` bool marks, for each of N samples, which of the M modalities a
model may read. Masks are data: they are generated once per (split, protocol, seed), saved with
the results and handed unchanged to every method, so that methods are compared on the same
missing entries. An entry the dataset itself lacks (``present == False``) is always unavailable.

Three protocols are offered (DiCMoR, Wang, Cui & Li, ICCV 2023, and the papers it compares with):

- ``random``: the paper's missing rate MR = missing (sample, modality) entries / (N·M), every
  sample keeping at least one modality, hence MR <= (M-1)/M.
- ``fixed``: the same available subset (e.g. {text, audio}) for every sample.
- ``legacy-batch``: the per-batch schedule of the public DiCMoR/IMDer code, kept so that results
  can be compared with published numbers.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from dicmor.errors import InputError

ProtocolKind = Literal["none", "random", "fixed", "legacy-batch"]
PROTOCOL_KINDS: tuple[str, ...] = get_args(ProtocolKind)

# Legacy schedule tables in integer tenths, indexed by round(10·MR) - 1 for MR = 0.1 … 0.7:
# the first TWO fraction of batches keep one modality, the next ONE fraction drop one.
_LEGACY_TWO_TENTHS: tuple[int, ...] = (1, 2, 3, 5, 7, 9, 10)
_LEGACY_ONE_TENTHS: tuple[int, ...] = (1, 2, 3, 2, 1, 0, 0)
_LEGACY_RATES: tuple[float, ...] = tuple(k / 10 for k in range(8))
_RATE_TOLERANCE = 1e-9

# What numpy raises for a file that is not a readable .npz archive.
_UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)

# Keys of a saved mask file that are not split names.
_METADATA_KEYS: tuple[str, ...] = ("modality_names", "protocol", "seed")


# The largest batch a legacy-batch schedule may be laid out over: the schedule allocates one
# row per sample of a batch, and no loader batch is larger.
MAX_BATCH_SIZE = 2**20


class MissingProtocolError(InputError):
    """A missing protocol or its inputs are invalid; the message says which field and why."""


class MaskFileError(InputError):
    """Masks cannot be saved as given, or a mask file is malformed; names the file and key."""


@dataclass(frozen=True)
class MissingProtocol:
    """Which modalities are withheld from the model, per split.

    Build one directly, or from its command-line form with :meth:`from_string`.
    """

    kind: ProtocolKind = "none"
    """``none`` (only genuinely absent entries are missing), ``random``, ``fixed`` or
    ``legacy-batch``."""

    rate: float = 0.0
    """Missing rate MR in [0, 1) for ``random``; one of 0.0, 0.1, …, 0.7 for ``legacy-batch``;
    must stay 0.0 for the other kinds."""

    keep: tuple[str, ...] = ()
    """``fixed`` only: names of the modalities available to every sample."""

    batch_size: int = 32
    """``legacy-batch`` only: the loader batch size the schedule is laid out over."""

    def __post_init__(self) -> None:
        if self.kind not in PROTOCOL_KINDS:
            raise MissingProtocolError(
                f"missing protocol kind must be one of {list(PROTOCOL_KINDS)}, got {self.kind!r}"
            )
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)):
            raise MissingProtocolError(f"missing protocol rate must be a number, got {self.rate!r}")
        # YAML and JSON give lists and ints; normalise so equal protocols compare equal.
        object.__setattr__(self, "rate", float(self.rate))
        if isinstance(self.keep, str) or not all(isinstance(name, str) for name in self.keep):
            raise MissingProtocolError(
                f"missing protocol keep must be a sequence of modality names, got {self.keep!r}"
            )
        object.__setattr__(self, "keep", tuple(self.keep))
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise MissingProtocolError(
                f"missing protocol batch_size must be an integer, got {self.batch_size!r}"
            )
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise MissingProtocolError(
                f"missing protocol batch_size must lie in [1, {MAX_BATCH_SIZE}], got "
                f"{self.batch_size}"
            )
        if not 0.0 <= self.rate < 1.0:
            raise MissingProtocolError(f"missing protocol rate must lie in [0, 1), got {self.rate}")
        if self.kind in ("none", "fixed") and self.rate != 0.0:
            raise MissingProtocolError(
                f"missing protocol rate is not used by kind {self.kind!r}; leave it at 0.0, "
                f"got {self.rate}"
            )
        if self.kind == "fixed":
            if not self.keep:
                raise MissingProtocolError(
                    "missing protocol kind 'fixed' needs keep: the available modality names"
                )
            duplicates = sorted({name for name in self.keep if self.keep.count(name) > 1})
            if duplicates:
                raise MissingProtocolError(
                    f"missing protocol keep lists {duplicates} more than once"
                )
        elif self.keep:
            raise MissingProtocolError(
                f"missing protocol keep is only used by kind 'fixed', got kind {self.kind!r} "
                f"with keep={list(self.keep)}"
            )
        if self.kind == "legacy-batch":
            # Snap to the exact tenth so that e.g. 0.1 + 0.2 labels and compares as 0.3.
            object.__setattr__(self, "rate", _LEGACY_RATES[_legacy_index(self.rate)])

    def describe(self) -> str:
        """Short label for tables and logs, e.g. ``random MR=0.30`` or ``fixed {text,audio}``."""
        if self.kind == "none":
            return "none"
        if self.kind == "fixed":
            return "fixed {" + ",".join(self.keep) + "}"
        return f"{self.kind} MR={self.rate:.2f}"

    def __str__(self) -> str:
        return self.describe()

    def to_string(self) -> str:
        """The form :meth:`from_string` parses back to an equal protocol."""
        if self.kind == "none":
            return "none"
        if self.kind == "random":
            return f"random:{self.rate!r}"
        if self.kind == "fixed":
            return "fixed:" + "+".join(self.keep)
        return f"legacy-batch:{self.rate!r}:{self.batch_size}"

    @classmethod
    def from_string(cls, text: str, batch_size: int = 32) -> MissingProtocol:
        """Parse ``none``, ``random:0.3``, ``fixed:text+audio`` or ``legacy-batch:0.5``.

        ``legacy-batch`` takes an optional third field overriding ``batch_size``
        (``legacy-batch:0.5:16``).
        """
        kind, _, argument = text.strip().partition(":")
        fields = argument.split(":") if argument else []
        if kind == "none":
            if fields:
                raise MissingProtocolError(f"missing protocol 'none' takes no argument: {text!r}")
            return cls()
        if kind == "random":
            if len(fields) != 1:
                raise MissingProtocolError(
                    f"missing protocol {text!r}: expected random:RATE, e.g. random:0.3"
                )
            return cls(kind="random", rate=_parse_rate(fields[0], text))
        if kind == "fixed":
            names = tuple(fields[0].split("+")) if len(fields) == 1 else ()
            if not names or any(not name for name in names):
                raise MissingProtocolError(
                    f"missing protocol {text!r}: expected fixed:NAME+NAME…, e.g. fixed:text+audio"
                )
            return cls(kind="fixed", keep=names)
        if kind == "legacy-batch":
            if len(fields) not in (1, 2):
                raise MissingProtocolError(
                    f"missing protocol {text!r}: expected legacy-batch:RATE[:BATCH_SIZE], "
                    "e.g. legacy-batch:0.5"
                )
            if len(fields) == 2:
                try:
                    batch_size = int(fields[1])
                except ValueError:
                    raise MissingProtocolError(
                        f"missing protocol {text!r}: batch size {fields[1]!r} is not an integer"
                    ) from None
            return cls(
                kind="legacy-batch", rate=_parse_rate(fields[0], text), batch_size=batch_size
            )
        raise MissingProtocolError(
            f"missing protocol {text!r}: unknown kind {kind!r}, expected one of "
            f"{list(PROTOCOL_KINDS)}"
        )


def _parse_rate(field: str, text: str) -> float:
    try:
        return float(field)
    except ValueError:
        raise MissingProtocolError(
            f"missing protocol {text!r}: rate {field!r} is not a number"
        ) from None


def _legacy_index(rate: float) -> int:
    """Position of ``rate`` in {0.0, 0.1, …, 0.7}; raises for any other rate."""
    for index, allowed in enumerate(_LEGACY_RATES):
        if abs(rate - allowed) <= _RATE_TOLERANCE:
            return index
    raise MissingProtocolError(
        f"legacy-batch missing rate must be one of {list(_LEGACY_RATES)}, got {rate}"
    )


def _check_present(present: np.ndarray, num_modalities: int | None = None) -> None:
    if not isinstance(present, np.ndarray) or present.dtype != bool or present.ndim != 2:
        raise MissingProtocolError(
            "presence mask must be a 2-D bool array (N, M), got "
            f"{getattr(present, 'dtype', type(present).__name__)} "
            f"{getattr(present, 'shape', '')}"
        )
    if num_modalities is not None and present.shape[1] != num_modalities:
        raise MissingProtocolError(
            f"presence mask has {present.shape[1]} columns but {num_modalities} modality names "
            "were given"
        )
    if present.shape[1] == 0:
        raise MissingProtocolError("presence mask has no modality columns")
    empty = int(np.count_nonzero(~present.any(axis=1)))
    if empty:
        raise MissingProtocolError(
            f"{empty} samples have no modality present in the dataset; drop them before "
            "applying a missing protocol"
        )


def missing_rate(mask: np.ndarray) -> float:
    """Fraction of (sample, modality) entries that are unavailable.

    Args:
        mask: ``(N, M)`` bool, ``True`` = available.
    """
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.size == 0:
        raise MissingProtocolError(
            f"missing_rate needs a non-empty bool mask, got {mask.dtype} {mask.shape}"
        )
    return float(np.count_nonzero(~mask)) / mask.size


def random_mask(present: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Drop entries at random so that exactly ``round(rate·N·M)`` entries are missing.

    Genuinely absent entries count as missing; further drops are drawn among present entries.
    Every sample first reserves one of its present modalities, chosen uniformly, which is never
    dropped; the remaining drops are a uniform sample without replacement of the other present
    entries. If the dataset already lacks at least ``round(rate·N·M)`` entries nothing is dropped
    and the realised rate (see :func:`missing_rate`) exceeds ``rate``.

    Args:
        present: ``(N, M)`` bool, ``False`` = absent from the dataset.
        rate: target missing rate MR in [0, (M-1)/M].
        rng: source of randomness.

    Returns:
        available: ``(N, M)`` bool, a subset of ``present``.
    """
    _check_present(present)
    n, m = present.shape
    if not 0.0 <= rate < 1.0:
        raise MissingProtocolError(f"missing rate must lie in [0, 1), got {rate}")
    max_rate = (m - 1) / m
    if rate > max_rate + _RATE_TOLERANCE:
        raise MissingProtocolError(
            f"missing rate {rate:.2f} is infeasible with {m} modalities: at most {max_rate:.3f} "
            "can be missing while every sample keeps one modality"
        )
    # The tolerance above may let round() overshoot by one entry; N·(M-1) is the true ceiling.
    target = min(round(rate * n * m), n * (m - 1))
    extra = target - int(np.count_nonzero(~present))
    available = present.copy()
    if extra <= 0:
        return available
    # Random keys with absent entries at -inf: the argmax is a uniform choice among present ones.
    keys = rng.random((n, m))
    keys[~present] = -np.inf
    reserved = np.zeros_like(present)
    reserved[np.arange(n), keys.argmax(axis=1)] = True
    candidates = np.flatnonzero(present & ~reserved)
    # target <= N·(M-1) guarantees len(candidates) = |present| - N >= extra.
    dropped = rng.choice(candidates, size=extra, replace=False)
    available.reshape(-1)[dropped] = False
    return available


def fixed_mask(
    present: np.ndarray, modality_names: Sequence[str], keep: Sequence[str]
) -> np.ndarray:
    """Make exactly the ``keep`` modalities available to every sample (where present).

    Args:
        present: ``(N, M)`` bool, columns in the order of ``modality_names``.
        modality_names: the M modality names.
        keep: names of the modalities to keep.

    Returns:
        available: ``(N, M)`` bool.
    """
    _check_present(present, len(modality_names))
    if not keep:
        raise MissingProtocolError("fixed protocol needs at least one modality to keep")
    unknown = [name for name in keep if name not in modality_names]
    if unknown:
        raise MissingProtocolError(
            f"fixed protocol keeps unknown modalities {unknown}; available: {list(modality_names)}"
        )
    columns = np.isin(np.asarray(modality_names), np.asarray(keep))  # (M,)
    available = present & columns[None, :]
    lost = int(np.count_nonzero(~available.any(axis=1)))
    if lost:
        raise MissingProtocolError(
            f"fixed protocol {{{','.join(keep)}}}: {lost} samples have none of these modalities "
            "present in the dataset"
        )
    return available


def legacy_batch_mask(
    present: np.ndarray, rate: float, batch_size: int, rng: np.random.Generator
) -> np.ndarray:
    """The per-batch schedule of the public DiCMoR/IMDer code, for samples in loader order.

    With B = ceil(N / batch_size) batches and MR = 0.1 … 0.7, batch b keeps one modality if
    b < two[MR]·B, keeps M-1 (drops one) if b < (two[MR] + one[MR])·B, and is complete
    otherwise; the kept (or dropped) modality is drawn uniformly, once for the whole batch.
    MR = 0.0 gives complete batches. Genuinely absent entries stay absent; a sample left with no
    modality by that intersection keeps its first present modality instead, so that every sample
    still has an input.

    Args:
        present: ``(N, M)`` bool, ``False`` = absent from the dataset.
        rate: one of 0.0, 0.1, …, 0.7.
        batch_size: the loader batch size.
        rng: source of randomness.

    Returns:
        available: ``(N, M)`` bool, a subset of ``present``.
    """
    _check_present(present)
    if batch_size < 1:
        raise MissingProtocolError(f"legacy-batch batch_size must be >= 1, got {batch_size}")
    index = _legacy_index(rate)
    n, m = present.shape
    num_batches = math.ceil(n / batch_size)
    schedule = np.ones((num_batches, m), dtype=bool)  # (B, M)
    # The public code reads table index -1 (MR = 0.7's entry) when MR = 0.0 and so removes two
    # modalities from every batch; MR = 0.0 here means no scheduled drops.
    if index > 0:
        two = _LEGACY_TWO_TENTHS[index - 1]
        one = _LEGACY_ONE_TENTHS[index - 1]
        drawn = rng.integers(m, size=num_batches)  # (B,)
        batch = np.arange(num_batches)
        # Thresholds compared in integer tenths, so that e.g. 0.3 of 10 batches is exactly 3.
        keeps_one = 10 * batch < two * num_batches
        drops_one = ~keeps_one & (10 * batch < (two + one) * num_batches)
        schedule[keeps_one] = False
        schedule[keeps_one, drawn[keeps_one]] = True
        schedule[drops_one, drawn[drops_one]] = False
    available = np.repeat(schedule, batch_size, axis=0)[:n] & present  # (N, M)
    orphans = np.flatnonzero(~available.any(axis=1))
    available[orphans, present[orphans].argmax(axis=1)] = True
    return available


def _split_rng(seed: int, split: str) -> np.random.Generator:
    # crc32 rather than hash(): Python salts str hashes per process, which would change masks.
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode())]))


def _epoch_rng(seed: int, split: str, epoch: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([seed, zlib.crc32(split.encode()), 1 + epoch])
    )


def epoch_mask(
    protocol: MissingProtocol,
    present: np.ndarray,
    modality_names: Sequence[str],
    seed: int,
    epoch: int,
    order: np.ndarray | None = None,
    split: str = "train",
) -> np.ndarray:
    """The availability mask of one training epoch when masks are redrawn every epoch.

    Drawn from a generator of its own, derived from (seed, split, epoch), so every method given
    the same seed sees the same sequence of masks, each at the protocol's exact rate. A
    ``legacy-batch`` schedule is laid over the batches of the epoch's sample ``order`` ((N,)
    split rows in loader order; default: split order), as the public code does per batch.

    Returns:
        available: ``(N, M)`` bool in split order, a subset of ``present``.
    """
    _check_present(present, len(modality_names))
    rng = _epoch_rng(int(seed), split, epoch)
    if protocol.kind == "none":
        return present.copy()
    if protocol.kind == "random":
        return random_mask(present, protocol.rate, rng)
    if protocol.kind == "fixed":
        return fixed_mask(present, modality_names, protocol.keep)
    order = np.arange(len(present)) if order is None else np.asarray(order)
    if not np.array_equal(np.sort(order), np.arange(len(present))):
        raise MissingProtocolError(f"epoch order must be a permutation of {len(present)} rows")
    available = np.empty_like(present)
    available[order] = legacy_batch_mask(present[order], protocol.rate, protocol.batch_size, rng)
    return available


def make_masks(
    protocol: MissingProtocol,
    presents: Mapping[str, np.ndarray],
    modality_names: Sequence[str],
    seed: int,
) -> dict[str, np.ndarray]:
    """One availability mask per split, each from its own generator derived from (seed, split).

    Args:
        protocol: the missing protocol.
        presents: split name -> ``(N, M)`` bool presence mask.
        modality_names: the M modality names, in column order.
        seed: non-negative integer seed.

    Returns:
        split name -> ``(N, M)`` bool availability mask.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MissingProtocolError(f"mask seed must be a non-negative integer, got {seed!r}")
    masks: dict[str, np.ndarray] = {}
    for split, present in presents.items():
        try:
            _check_present(present, len(modality_names))
            rng = _split_rng(int(seed), split)
            if protocol.kind == "none":
                masks[split] = present.copy()
            elif protocol.kind == "random":
                masks[split] = random_mask(present, protocol.rate, rng)
            elif protocol.kind == "fixed":
                masks[split] = fixed_mask(present, modality_names, protocol.keep)
            else:
                masks[split] = legacy_batch_mask(present, protocol.rate, protocol.batch_size, rng)
        except MissingProtocolError as error:
            raise MissingProtocolError(f"split {split!r}: {error}") from None
    return masks


def save_masks(
    path: str | os.PathLike[str],
    masks: Mapping[str, np.ndarray],
    modality_names: Sequence[str],
    protocol: MissingProtocol,
    seed: int,
) -> None:
    """Write masks to an ``.npz`` file: one bool array per split plus the metadata keys
    ``modality_names``, ``protocol`` (:meth:`MissingProtocol.to_string`) and ``seed``."""
    arrays: dict[str, np.ndarray] = {}
    for split, mask in masks.items():
        if split in _METADATA_KEYS:
            raise MaskFileError(
                f"{path}: split name {split!r} clashes with a metadata key {list(_METADATA_KEYS)}"
            )
        if not isinstance(mask, np.ndarray) or mask.dtype != bool or mask.ndim != 2:
            raise MaskFileError(f"{path}: mask {split!r} must be a 2-D bool array")
        if mask.shape[1] != len(modality_names):
            raise MaskFileError(
                f"{path}: mask {split!r} has {mask.shape[1]} columns, expected "
                f"{len(modality_names)} for modalities {list(modality_names)}"
            )
        arrays[split] = mask
    arrays["modality_names"] = np.asarray(list(modality_names), dtype=str)
    arrays["protocol"] = np.asarray(protocol.to_string())
    arrays["seed"] = np.asarray(seed, dtype=np.int64)
    # An open handle stops numpy from appending ".npz" to a path that lacks it.
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def load_masks(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Read a file written by :func:`save_masks`.

    Returns:
        (split name -> ``(N, M)`` bool mask, the M modality names).
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise MaskFileError(f"{path}: mask file not found") from None
    except _UNREADABLE as error:
        raise MaskFileError(f"{path}: not a mask .npz file ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise MaskFileError(f"{path}: not a mask .npz file (holds a single array)")
    with archive:
        for key in _METADATA_KEYS:
            if key not in archive.files:
                raise MaskFileError(f"{path}: missing key {key!r}")
        try:
            names_array = archive["modality_names"]
            split_arrays = {k: archive[k] for k in archive.files if k not in _METADATA_KEYS}
        except _UNREADABLE as error:
            raise MaskFileError(f"{path}: unreadable array ({error})") from None
    if names_array.ndim != 1 or names_array.dtype.kind != "U" or names_array.size == 0:
        raise MaskFileError(f"{path}: key 'modality_names' must be a 1-D array of strings")
    modality_names = tuple(str(name) for name in names_array)
    if not split_arrays:
        raise MaskFileError(f"{path}: holds no split masks")
    masks: dict[str, np.ndarray] = {}
    for split, mask in split_arrays.items():
        if mask.dtype != bool or mask.ndim != 2 or mask.shape[1] != len(modality_names):
            raise MaskFileError(
                f"{path}: key {split!r} must be a bool array (N, {len(modality_names)}), "
                f"got {mask.dtype} {mask.shape}"
            )
        masks[split] = mask
    return masks, modality_names
