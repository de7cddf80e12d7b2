"""Every bad input is one clear line and exit code 2: no traceback, nothing half written.

One case per class of malformed or hostile input, across the commands. Each case builds its
inputs in a workspace that already holds a valid dataset (``good.npz``), a finished run
(``run/``), its sweep summary and a predict input; the command must return 2, print one line on
stderr that starts ``error:`` and names the problem, and leave every file as it was.
"""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dicmor.cli import main

Build = Callable[[Path], list[str]]
CASES: dict[str, tuple[Build, str]] = {}


def case(name: str, expect: str) -> Callable[[Build], Build]:
    """Register ``build(workspace) -> argv`` whose error message must contain ``expect``."""

    def register(build: Build) -> Build:
        CASES[name] = (build, expect)
        return build

    return register


def arrays(n: tuple[int, int, int] = (8, 4, 4), **changes: object) -> dict[str, np.ndarray]:
    """A valid npz dataset (modalities ``seq`` (N, 4, 3) and ``vec`` (N, 5), 2 classes),
    with ``changes`` applied (a value of ``None`` removes the key)."""
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for split, size in zip(("train", "valid", "test"), n, strict=True):
        out[f"{split}/seq"] = rng.standard_normal((size, 4, 3)).astype(np.float32)
        out[f"{split}/vec"] = rng.standard_normal((size, 5)).astype(np.float32)
        out[f"{split}/label"] = np.arange(size) % 2
    for key, value in changes.items():
        if value is None:
            out.pop(key.replace("__", "/"), None)
        else:
            out[key.replace("__", "/")] = value
    return out


SIZES = {"train": 8, "valid": 4, "test": 4}


def in_every_split(modality: str, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Zeros of ``(N, *shape)`` for ``modality`` in every split, as ``arrays`` changes."""
    return {f"{s}__{modality}": np.zeros((n, *shape), np.float32) for s, n in SIZES.items()}


def write(path: Path, content: dict[str, np.ndarray]) -> Path:
    np.savez(path, **content)
    return path


TRAIN = ["--set", "train.max_epochs=1", "--set", "model.dim=4", "--set", "model.kernel_size=1"]
TRAIN += ["--set", "train.progress=false"]


def train(ws: Path, *extra: str, data: str | None = None) -> list[str]:
    """``dicmor train`` of zero_fill on ``data`` (default the workspace's valid dataset)."""
    where = ["--data", data or str(ws / "good.npz"), "--output-dir", str(ws / "out")]
    return ["train", *where, *TRAIN, "--method", "zero_fill", *extra]


# --- checkpoints -------------------------------------------------------------------------------


class Hostile:
    def __reduce__(self):
        return (os.system, ("touch HACKED",))


def bad_checkpoint(ws: Path, kind: str) -> Path:
    folder = ws / f"ckpt-{kind}"
    folder.mkdir()
    path = folder / "checkpoint.pt"
    if kind == "hostile":
        path.write_bytes(pickle.dumps(Hostile()))
    elif kind == "truncated":
        data = (ws / "run" / "checkpoint.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    return folder


for kind in ("hostile", "truncated", "foreign"):
    case(f"evaluate-{kind}-checkpoint", "checkpoint")(
        lambda ws, kind=kind: ["evaluate", str(bad_checkpoint(ws, kind))]
    )
    case(f"predict-{kind}-checkpoint", "checkpoint")(
        lambda ws, kind=kind: [
            "predict",
            str(bad_checkpoint(ws, kind)),
            str(ws / "inputs.npz"),
            "--out",
            str(ws / "p.csv"),
        ]
    )


# --- data files --------------------------------------------------------------------------------


def data_case(name: str, expect: str, content: Callable[[], dict[str, np.ndarray]]) -> None:
    case(f"train-{name}", expect)(lambda ws: train(ws, data=str(write(ws / "d.npz", content()))))
    case(f"inspect-{name}", expect)(
        lambda ws: ["data", "inspect", str(write(ws / "d.npz", content()))]
    )


case("train-recovery-with-sequence-lengths-differ", "length")(
    lambda ws: train(ws, "--method", "cross_regression")
)
case("train-seq-len-0", "seq_len")(lambda ws: train(ws, "--set", "data.seq_len=0"))
data_case(
    "shape-differs-across-splits",
    "(T, D)",
    lambda: arrays(valid__seq=np.zeros((4, 5, 3), np.float32)),
)
data_case(
    "feature-dimension-0",
    "dimension",
    lambda: arrays(**in_every_split("seq", (4, 0))),
)
data_case(
    "complex-features",
    "complex",
    lambda: arrays(train__seq=np.ones((8, 4, 3), np.complex64)),
)
data_case(
    "float32-overflow",
    "float32",
    lambda: arrays(train__vec=np.full((8, 5), 1e300)),
)
data_case(
    "huge-class-label",
    "class",
    lambda: arrays(train__label=np.array([0, 1, 0, 1, 0, 1, 0, 10**9])),
)


@case("train-npy-named-npz", "npz")
def _npy(ws: Path) -> list[str]:
    path = ws / "array.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.zeros(3))
    return train(ws, data=str(path))


# --- configuration -----------------------------------------------------------------------------


for key, value, expect in [
    ("train.lr", ".nan", "train.lr"),
    ("train.lr", ".inf", "train.lr"),
    ("train.weight_decay", "-0.1", "train.weight_decay"),
    ("train.num_threads", "0", "train.num_threads"),
    ("train.lr_patience", "-1", "train.lr_patience"),
    ("train.clip_value", ".nan", "train.clip_value"),
    ("train.lr", "[1,", "train.lr"),
]:
    case(f"set-{key}={value}", expect)(lambda ws, k=key, v=value: train(ws, "--set", f"{k}={v}"))


def train_with_config(ws: Path, config: str) -> list[str]:
    args = train(ws)
    return [args[0], config, *args[1:]]


def config_file(ws: Path, text: str) -> str:
    path = ws / "bad.yaml"
    path.write_text(text)
    return str(path)


case("train-config-broken-yaml", "bad.yaml")(
    lambda ws: train_with_config(ws, config_file(ws, "train: {lr: [1,\n"))
)
case("train-config-not-a-mapping", "bad.yaml")(
    lambda ws: train_with_config(ws, config_file(ws, "- 1\n- 2\n"))
)
case("train-config-unknown-key", "lrr")(
    lambda ws: train_with_config(ws, config_file(ws, "train:\n  lrr: 0.1\n"))
)
case("set-unknown-key", "train.nope")(lambda ws: train(ws, "--set", "train.nope=1"))
case("set-wrong-type", "train.batch_size")(lambda ws: train(ws, "--set", "train.batch_size=abc"))
case("train-unknown-method", "nosuch")(lambda ws: train(ws, "--method", "nosuch"))
case("sweep-unknown-method-before-training", "nosuch")(
    lambda ws: [
        "sweep",
        *["--data", str(ws / "good.npz"), "--output-dir", str(ws / "s"), *TRAIN],
        *["--methods", "zero_fill", "nosuch", "--rates", "0.3"],
    ]
)


@case("train-hostile-pickle-data", "pkl")
def _hostile_pkl(ws: Path) -> list[str]:
    path = ws / "hostile.pkl"
    path.write_bytes(pickle.dumps(Hostile()))
    return train(ws, data=str(path))


# --- output paths ------------------------------------------------------------------------------


@case("train-output-dir-under-a-file", "not a folder")
def _output_under_file(ws: Path) -> list[str]:
    args = train(ws)
    args[args.index("--output-dir") + 1] = str(ws / "good.npz" / "runs")
    return args


case("train-name-escapes", "one folder name")(lambda ws: train(ws, "--name", "../escaped"))
case("table-out-under-a-file", "good.npz")(
    lambda ws: ["table", str(ws / "sweep"), "--out", str(ws / "good.npz" / "t.txt")]
)
case("plot-out-under-a-file", "good.npz")(
    lambda ws: ["plot", str(ws / "sweep"), "--out", str(ws / "good.npz" / "p.png")]
)
case("plot-unknown-extension", ".xyz")(
    lambda ws: ["plot", str(ws / "sweep"), "--out", str(ws / "plot.xyz")]
)
case("predict-out-under-a-file", "good.npz")(
    lambda ws: [
        "predict",
        str(ws / "run"),
        str(ws / "inputs.npz"),
        "--out",
        str(ws / "good.npz" / "p.csv"),
    ]
)


def corrupt_summary(ws: Path) -> Path:
    folder = ws / "corrupt"
    folder.mkdir()
    (folder / "summary.json").write_text('{"task": "classification", "rows": [')
    return folder


case("table-corrupt-summary", "summary.json")(lambda ws: ["table", str(corrupt_summary(ws))])
case("plot-corrupt-summary", "summary.json")(
    lambda ws: ["plot", str(corrupt_summary(ws)), "--out", str(ws / "p.png")]
)
case("report-corrupt-summary", "summary.json")(
    lambda ws: ["report", str(corrupt_summary(ws)), "--out", str(ws / "r.html")]
)


# --- missing protocols and masks ---------------------------------------------------------------

case("train-missing-empty", "--missing")(lambda ws: train(ws, "--missing", ""))
case("sweep-negative-rate", "rate")(
    lambda ws: [
        "sweep",
        *["--data", str(ws / "good.npz"), "--output-dir", str(ws / "s"), *TRAIN],
        *["--methods", "zero_fill", "--rates", "0.3", "-0.1"],
    ]
)
case("train-legacy-batch-huge", "batch")(
    lambda ws: train(ws, "--missing", "legacy-batch:0.5:1000000000000")
)


def other_masks(ws: Path, names: list[str], train_value: bool | None = None) -> Path:
    masks = dict(np.load(ws / "run" / "masks.npz"))
    masks["modality_names"] = np.array(names)
    if train_value is not None:
        masks["train"] = np.full_like(masks["train"], train_value)
    path = ws / "other_masks.npz"
    np.savez(path, **masks)
    return path


case("train-masks-other-modalities", "modalit")(
    lambda ws: train(ws, "--masks", str(other_masks(ws, ["a", "b"])))
)
case("train-masks-all-false", "train")(
    lambda ws: train(ws, "--masks", str(other_masks(ws, ["seq", "vec"], train_value=False)))
)


@case("train-masks-truncated", "other_masks.npz")
def _truncated_masks(ws: Path) -> list[str]:
    path = other_masks(ws, ["seq", "vec"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return train(ws, "--masks", str(path))


case("plot-unknown-metric", "nope")(
    lambda ws: ["plot", str(ws / "sweep"), "--out", str(ws / "p.png"), "--metric", "nope"]
)


# --- predict inputs ----------------------------------------------------------------------------


def predict_with(ws: Path, content: dict[str, np.ndarray]) -> list[str]:
    path = write(ws / "bad_inputs.npz", content)
    return ["predict", str(ws / "run"), str(path), "--out", str(ws / "p.csv")]


def good_inputs(**changes: object) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    out = {
        "seq": rng.standard_normal((3, 4, 3)).astype(np.float32),
        "vec": rng.standard_normal((3, 5)).astype(np.float32),
    }
    for key, value in changes.items():
        out[key.replace("__", "/")] = value
    return out


case("predict-string-features", "seq")(
    lambda ws: predict_with(ws, good_inputs(seq=np.array(["a", "b", "c"])))
)
case("predict-0d-features", "seq")(lambda ws: predict_with(ws, good_inputs(seq=np.array(1.0))))
case("predict-id-wrong-length", "id")(
    lambda ws: predict_with(ws, good_inputs(id=np.array(["a", "b"])))
)
case("predict-unknown-present", "present/other")(
    lambda ws: predict_with(ws, good_inputs(present__other=np.ones(3, bool)))
)
case("predict-unknown-extras", "extras/x")(
    lambda ws: predict_with(ws, good_inputs(extras__x=np.ones(3)))
)
case("predict-text-bert-without-encoder", "text_bert")(
    lambda ws: predict_with(ws, good_inputs(text_bert=np.ones((3, 3, 4))))
)


case("predict-nan-in-present-entries", "non-finite")(
    lambda ws: predict_with(ws, good_inputs(vec=np.full((3, 5), np.nan, np.float32)))
)
case("predict-complex-features", "real numbers")(
    lambda ws: predict_with(ws, good_inputs(vec=np.ones((3, 5), np.complex64)))
)


@case("predict-truncated-inputs", "inputs")
def _truncated(ws: Path) -> list[str]:
    path = write(ws / "t.npz", good_inputs())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return ["predict", str(ws / "run"), str(path), "--out", str(ws / "p.csv")]


# --- the matrix --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with a valid dataset, a finished run, a sweep summary and predict inputs."""
    ws = tmp_path_factory.mktemp("template")
    write(ws / "good.npz", arrays())
    assert main([*train(ws), "--name", "run"]) == 0
    shutil.move(ws / "out" / "run", ws / "run")
    shutil.rmtree(ws / "out")
    args = ["sweep", "--data", str(ws / "good.npz"), "--output-dir", str(ws / "sweep"), *TRAIN]
    assert main([*args, "--methods", "zero_fill", "--rates", "0.3", "--seeds", "1"]) == 0
    write(ws / "inputs.npz", good_inputs())
    return ws


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_bad_input_is_one_clear_line_and_leaves_nothing(
    name: str, template: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(template, ws)
    monkeypatch.chdir(ws)
    build, expect = CASES[name]
    argv = build(ws)
    before = snapshot(ws)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "weights_only=False" not in err
    assert expect in err, err
    assert snapshot(ws) == before, "files were written or changed"
    assert not (ws / "HACKED").exists()
