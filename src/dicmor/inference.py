"""Prediction on new samples where any modality may be absent, with no label anywhere.

The input file is an ``.npz`` with, for N samples:

=========================  ==============  ==================================================
key                        shape / dtype   meaning
=========================  ==============  ==================================================
``{modality}``             (N, T, D) or    features of one modality the model was trained on;
                           (N, D)          leave the key out when no sample has it
``present/{modality}``     (N,) bool       optional; False marks an absent entry, whose values
                                           are never read (they may be anything, NaN included)
``id``                     (N,) str        optional sample ids; methods that take context
                                           from other samples (``gcnet``: the segments of
                                           one video, ids ``video$_$segment``) read them
``text_bert``              (N, 3, T)       tokens, when the model has a text encoder
=========================  ==============  ==================================================

Every sample needs at least one present modality.
"""

from __future__ import annotations

import csv
import weakref
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dicmor.data.batches import Batches, Batching
from dicmor.data.dataset import DataError, Split
from dicmor.models.base import MultimodalModel
from dicmor.models.extractors import TextEncoder
from dicmor.outputs import write_atomic
from dicmor.traced import TracedForward, traceable


@dataclass
class Prediction:
    """Predictions for N samples.

    Attributes:
        ids: (N,) sample ids.
        scores: (N,) regression scores, or (N, K) class probabilities.
        labels: (N,) predicted classes (classification) or ``None``.
        available: (N, M) bool, what each prediction used.
        features: {modality: (N, d, T')} the shallow features the fusion saw, missing entries
            recovered or filled in as the method does (zeros for zero-fill), when asked for.
    """

    ids: np.ndarray
    scores: np.ndarray
    labels: np.ndarray | None
    available: np.ndarray
    features: dict[str, np.ndarray] | None = None


def predict(
    model: MultimodalModel,
    inputs: dict[str, np.ndarray],
    present: dict[str, np.ndarray] | None = None,
    *,
    ids: np.ndarray | None = None,
    text_bert: np.ndarray | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    return_features: bool = False,
    source: str = "inputs",
    fast: bool = False,
) -> Prediction:
    """Predict from ``inputs`` ({modality: (N, T, D) or (N, D)}; absent modalities may be left
    out) and ``present`` ({modality: (N,) bool}); values of absent entries are never read.

    With ``fast``, batches run as traced graphs (`dicmor.traced.TracedForward`), one per missing
    pattern and batch size, built at the first batch of each (seconds) and kept with the model
    for later calls: for repeated prediction, as a service answering clip after clip. Samples
    are then batched by missing pattern; the predictions are those of the plain forward (checked
    when each graph is built) and come back in the input order. Methods that batch by context
    (GCNet) run the plain forward.
    """
    info = model.info
    names = info.modality_names
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise DataError(f"{source}: unknown modalities {unknown}; the model has {list(names)}")
    if not inputs:
        raise DataError(f"{source}: no modality given; the model has {list(names)}")
    for m, value in inputs.items():
        value = np.asarray(value)
        if value.dtype.kind not in "biuf":
            raise DataError(f"{source}: {m} must hold real numbers, got dtype {value.dtype}")
        if value.ndim not in (2, 3):
            raise DataError(f"{source}: {m} must be (N, T, D) or (N, D), got shape {value.shape}")
    n = len(next(iter(inputs.values())))
    unknown_present = sorted(set(present or {}) - set(names))
    if unknown_present:
        raise DataError(
            f"{source}: present/{unknown_present[0]}: no such modality; the model has {list(names)}"
        )
    if ids is not None and np.shape(ids) != (n,):
        raise DataError(f"{source}: id must have shape ({n},), got {np.shape(ids)}")
    encodes_text = any(isinstance(module, TextEncoder) for module in model.modules())
    if text_bert is not None and not encodes_text:
        raise DataError(f"{source}: text_bert given, but this model has no text encoder")
    if text_bert is not None and np.shape(text_bert)[:1] != (n,):
        raise DataError(f"{source}: text_bert must have {n} rows, got shape {np.shape(text_bert)}")
    if encodes_text and text_bert is None:
        raise DataError(f"{source}: this model encodes text from text_bert tokens; none given")
    arrays: dict[str, np.ndarray] = {}
    mask = np.zeros((n, len(names)), dtype=bool)
    for j, m in enumerate(names):
        shape = (info.seq_lens[m], info.feature_dims[m])
        if m not in inputs:
            arrays[m] = np.zeros((n, *shape), dtype=np.float32)
            continue
        x = np.asarray(inputs[m])
        if x.ndim == 2:
            x = x[:, None, :]  # (N, 1, D)
        if x.shape != (n, *shape):
            raise DataError(
                f"{source}: {m} has shape {x.shape}, expected ({n}, {shape[0]}, {shape[1]})"
            )
        keep = np.ones(n, dtype=bool)
        if present is not None and m in present:
            keep = np.asarray(present[m])
            if keep.shape != (n,) or keep.dtype != bool:
                raise DataError(f"{source}: present/{m} must be bool of shape ({n},)")
        x = np.where(keep[:, None, None], x, 0.0).astype(np.float32)
        bad = int((~np.isfinite(x)).sum())
        if bad:
            raise DataError(f"{source}: {m} has {bad} non-finite values in present entries")
        arrays[m] = x
        mask[:, j] = keep
    empty = int((~mask.any(axis=1)).sum())
    if empty:
        raise DataError(f"{source}: {empty} samples have no present modality")
    extras = {}
    if text_bert is not None:
        extras["text_bert"] = np.asarray(text_bert)
    # The samples as a split, batched as the method batches; its placeholder labels never
    # reach a batch (with_labels=False).
    split = Split(
        modalities=arrays,
        labels=np.zeros(n, dtype=np.float32),
        ids=np.asarray(ids) if ids is not None else np.array([str(i) for i in range(n)]),
        present=mask,
        extras=extras,
    )
    where = torch.device(device)
    if where.type == "cuda" and where.index is None:
        where = torch.device("cuda", torch.cuda.current_device())  # as a tensor's device reads
    # Moved only when it is elsewhere: a move is a new revision of the model, after which its
    # traced graphs are built anew.
    if any(t.device != where for t in (*model.parameters(), *model.buffers())):
        model = model.to(where)
    model = model.eval()
    forward = model
    batching = model.batching()
    if fast and traceable(model):
        forward = _traced(model)
        batching = Batching(sampler=by_pattern)
    batches = Batches(
        split,
        names,
        mask,
        batch_size,
        device=device,
        batching=batching,
        with_labels=False,
    )
    scores, rows, features = [], [], {m: [] for m in names}
    with torch.no_grad():
        for batch in batches:
            output = forward(batch)
            scores.append(output["prediction"].float().cpu())
            rows.append(batch["index"].cpu())
            if return_features:
                if "features" not in output:
                    raise DataError(
                        f"method '{model.name}' gives no features to return; predict without them"
                    )
                for m in names:
                    features[m].append(output["features"][m].float().cpu())
    order = torch.cat(rows).argsort()
    raw = torch.cat(scores)[order]
    labels = None
    if info.task == "classification":
        labels = raw.argmax(dim=1).numpy()
        raw = raw.softmax(dim=1)
    return Prediction(
        ids=split.ids,
        scores=raw.numpy(),
        labels=labels,
        available=mask,
        features={m: torch.cat(v)[order].numpy() for m, v in features.items()}
        if return_features
        else None,
    )


_TRACED: weakref.WeakKeyDictionary[MultimodalModel, TracedForward] = weakref.WeakKeyDictionary()


def _traced(model: MultimodalModel) -> TracedForward:
    """The model's traced forward, kept with it across calls (and dropped with it)."""
    traced = _TRACED.get(model)
    if traced is None:
        traced = _TRACED[model] = TracedForward(model)
    return traced


def by_pattern(split: Split, order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """A sampler whose batches each hold one missing pattern: ``order`` stably grouped by the
    samples' availability (``split.present``), each group cut into runs of ``batch_size``."""
    codes = split.present[order].astype(np.int64) @ (1 << np.arange(split.present.shape[1]))
    sort = np.argsort(codes, kind="stable")
    grouped, bounds = order[sort], np.flatnonzero(np.diff(codes[sort])) + 1
    return [
        run[start : start + batch_size]
        for run in np.split(grouped, bounds)
        for start in range(0, len(run), batch_size)
    ]


def read_inputs(path: str | Path) -> dict:
    """Read a prediction input file (see the module docstring) into ``predict``'s arguments."""
    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            data = {key: archive[key] for key in archive.files}
    except FileNotFoundError as error:
        raise DataError(f"{where}: no such file") from error
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{where}: not a readable npz file of inputs ({error})") from None
    present = {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith("present/")}
    reserved = {"id", "text_bert"}
    inputs = {k: v for k, v in data.items() if "/" not in k and k not in reserved}
    stray = sorted(k for k in data if "/" in k and not k.startswith("present/"))
    if stray:
        raise DataError(f"{where}: unknown key {stray[0]!r} (keys: modalities, present/…, id)")
    return {
        "inputs": inputs,
        "present": present,
        "ids": data.get("id"),
        "text_bert": data.get("text_bert"),
        "source": where,
    }


def write_predictions(
    result: Prediction, path: str | Path, modality_names: tuple[str, ...]
) -> None:
    """A CSV: id, the score (regression) or the class and its probabilities (classification),
    then one 0/1 column per modality telling what the prediction used."""
    if result.labels is None:
        header = ["id", "score"]
        values = [[f"{s:.6f}"] for s in result.scores]
    else:
        header = ["id", "label", *(f"p{c}" for c in range(result.scores.shape[1]))]
        values = [
            [str(y), *(f"{v:.6f}" for v in p)]
            for y, p in zip(result.labels, result.scores, strict=True)
        ]
    header += [f"has_{m}" for m in modality_names]

    def write(partial: Path) -> None:
        with open(partial, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for i, row, used in zip(result.ids, values, result.available, strict=True):
                writer.writerow([i, *row, *(int(v) for v in used)])

    write_atomic(path, write)
