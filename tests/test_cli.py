"""The ``dicmor`` command line, called in process."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dicmor.cli import build_parser, main
from dicmor.config import to_dict
from dicmor.data import load_npz, save_npz
from dicmor.data.synthetic import make_classification_dataset, write_mmsa_pickle
from dicmor.evaluation.evaluate import evaluate
from dicmor.missing.protocols import load_masks
from dicmor.training.checkpoints import load_checkpoint
from tests.conftest import small_config

SHRUNK = [
    "model.kernel_size=2",
    "model.dim=8",
    "model.mult.num_heads=2",
    "model.mult.num_layers=1",
    "model.dicmor.flow_steps=2",
    "model.dicmor.flow_hidden=8",
    "model.recovery.refine_blocks=1",
    "model.recovery.refine_reduction=4",
    "train.batch_size=16",
    "train.max_epochs=1",
    "train.progress=false",
]


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list:
    """Every command and subcommand, as the argument lists that reach it."""
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.extend(command_paths(sub, (*prefix, name)))
    return paths


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def table_rows(out: str) -> list[str]:
    """The body of the first table printed: the lines after its rule, up to a blank line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line and set(line) == {"-", " "}) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated dataset as .npz and a tiny config YAML that trains on it."""
    root = tmp_path_factory.mktemp("cli")
    shapes = {"a": (4, 5), "b": (4, 3), "c": (4, 4)}
    data = make_classification_dataset(80, num_classes=3, modalities=shapes, seed=0)
    source = save_npz(data, root / "data.npz")
    config = to_dict(small_config("zero_fill", **{"train.batch_size": 16}))
    config["data"]["source"] = str(source)
    config["output_dir"] = str(root / "runs")
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.fixture(scope="module")
def trained(workspace: Path) -> Path:
    """Two runs: ``main`` (zero-fill, random MR 0.3) and ``other`` (DiCMoR, random MR 0.5)."""
    config = str(workspace / "tiny.yaml")
    assert main(["train", config, "--missing", "random:0.3", "--name", "main"]) == 0
    assert (
        main(
            [
                "train",
                config,
                "--method",
                "dicmor",
                "--missing",
                "random:0.5",
                "--name",
                "other",
            ]
        )
        == 0
    )
    return workspace / "runs"


@pytest.mark.parametrize("path", command_paths(build_parser()), ids=" ".join)
def test_every_command_has_help(path: tuple[str, ...], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main([*path, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dicmor")
    assert " ".join(("dicmor", *path)) in out.splitlines()[0]


def test_help_reaches_the_nested_commands() -> None:
    paths = command_paths(build_parser())
    assert {("train",), ("evaluate",), ("demo",), ("data", "inspect"), ("models",)} <= set(paths)


def test_models_lists_the_registered_methods(capsys: pytest.CaptureFixture) -> None:
    assert main(["models"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"zero_fill", "dicmor"} <= set(names)


def test_data_inspect_describes_the_embedded_dataset(capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "inspect", "mfeat"]) == 0
    out = capsys.readouterr().out
    assert "fourier (T=1, D=76)" in out
    assert "zernike" in out and "morphological" in out
    assert "train 1300, valid 300, test 400" in out


def test_data_inspect_reads_an_mmsa_pickle(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_mmsa_pickle(
        tmp_path / "aligned_50.pkl",
        n_train=6,
        n_valid=4,
        n_test=5,
        seq_len=8,
        dims={"text": 16, "audio": 5, "vision": 7},
    )
    assert main(["data", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "text (T=8, D=16), audio (T=8, D=5), vision (T=8, D=7)" in out
    assert "train 6, valid 4, test 5" in out
    assert "non-finite values replaced by 0" in out


@pytest.mark.parametrize("name", ["missing.pkl", "notes.txt"])
def test_data_inspect_of_a_bad_path_is_a_one_line_error(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / name
    if path.suffix == ".txt":
        path.write_text("not data")
    assert main(["data", "inspect", str(path)]) == 2
    assert str(path) in one_line_error(capsys)


def test_train_prints_metrics_and_writes_the_run(
    trained: Path, capsys: pytest.CaptureFixture
) -> None:
    run = trained / "main"
    for name in ("config.yaml", "masks.npz", "metrics.json", "history.json", "checkpoint.pt"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["method"] == "zero_fill"
    assert summary["protocol"] == "random MR=0.30"
    assert main(["train", str(trained.parent / "tiny.yaml"), "--name", "again"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("method"))
    assert header.split()[:3] == ["method", "protocol", "Acc"]
    row = table_rows(out)[0]
    assert row.split()[:2] == ["zero_fill", "none"]
    assert f"run written to {trained / 'again'}" in out


def test_evaluate_under_another_protocol_appends_a_record(
    trained: Path, capsys: pytest.CaptureFixture
) -> None:
    log = trained / "main" / "evaluations.jsonl"
    before = log.read_text().splitlines() if log.exists() else []
    assert main(["evaluate", str(trained / "main"), "--missing", "random:0.3"]) == 0
    out = capsys.readouterr().out
    assert "random MR=0.30" in out and "Acc" in out
    records = log.read_text().splitlines()
    assert len(records) == len(before) + 1
    record = json.loads(records[-1])
    assert record["protocol"] == "random MR=0.30"
    assert record["split"] == "test"
    assert 0.0 <= record["metrics"]["acc"] <= 1.0


def test_evaluate_on_another_runs_masks(trained: Path, capsys: pytest.CaptureFixture) -> None:
    masks_path = trained / "other" / "masks.npz"
    assert main(["evaluate", str(trained / "main"), "--masks", str(masks_path)]) == 0
    assert "masks masks.npz" in capsys.readouterr().out
    record = json.loads((trained / "main" / "evaluations.jsonl").read_text().splitlines()[-1])
    model, config = load_checkpoint(trained / "main")
    data = load_npz(config.data.source)
    masks, _ = load_masks(masks_path)
    metrics, _ = evaluate(
        model,
        data.splits["test"],
        data.modality_names,
        masks["test"],
        batch_size=config.train.batch_size,
    )
    assert record["metrics"] == pytest.approx(metrics)
    own, _ = load_masks(trained / "main" / "masks.npz")
    assert not np.array_equal(own["test"], masks["test"])


def test_an_unknown_config_key_is_named(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    config = str(workspace / "tiny.yaml")
    assert main(["train", config, "--set", "train.bogus=1"]) == 2
    assert "train.bogus" in one_line_error(capsys)
    content = yaml.safe_load((workspace / "tiny.yaml").read_text())
    content["model"]["colour"] = "red"
    bad = workspace / "bad.yaml"
    bad.write_text(yaml.safe_dump(content))
    assert main(["train", str(bad)]) == 2
    err = one_line_error(capsys)
    assert "model.colour" in err and str(bad) in err


def test_demo_compares_methods_over_rates(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    settings = [arg for item in SHRUNK for arg in ("--set", item)]
    argv = ["demo", "--rates", "0.0", "0.3", "--methods", "zero_fill", "dicmor", *settings]
    argv += ["--data", str(workspace / "data.npz"), "--output-dir", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    methods = [cell for row in rows for cell in row.split() if cell in ("zero_fill", "dicmor")]
    assert sorted(methods) == ["dicmor", "dicmor", "zero_fill", "zero_fill"]
    assert sum("0.3" in row for row in rows) == 2
    assert len(list(tmp_path.iterdir())) >= 4
    # It ends with the sweep's report.
    report = tmp_path / "report.html"
    assert report.is_file() and out.rstrip().endswith(f"report written to {report}")
    text = report.read_text()
    assert "Distribution gaps" in text and "t-SNE" in text and "data:image/png;base64" in text


def test_sweep_runs_every_protocol_given(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    settings = [arg for item in SHRUNK for arg in ("--set", item)]
    argv = ["sweep", str(workspace / "tiny.yaml"), "--methods", "zero_fill", *settings]
    argv += ["--missing", "random:0.3", "fixed:a+c", "legacy-batch:0.5", "--seeds", "1", "2"]
    argv += ["--output-dir", str(tmp_path)]
    assert main(argv) == 0
    rows = table_rows(capsys.readouterr().out)
    assert [row.split()[0] for row in rows] == ["random", "fixed", "legacy-batch"]
    assert all(" zero_fill  2 " in row for row in rows), rows  # two seeds each
    # Started again, the sweep reuses its finished runs; --rerun trains them again.
    assert main(argv) == 0
    assert capsys.readouterr().out.count("finished in") == 6
    assert main([*argv, "--rerun"]) == 0
    assert "finished in" not in capsys.readouterr().out


def test_a_model_that_does_not_fit_the_data_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # The embedded digits have one time step: a temporal kernel of 3 cannot run on them.
    argv = ["train", "tiny", "--set", "model.kernel_size=3", "--output-dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model.kernel_size 3 exceeds the length 1")
    assert "\n" not in err


def test_an_unknown_method_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["train", "tiny", "--method", "nope", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model.method: unknown method 'nope'") and "\n" not in err


def test_a_flow_too_narrow_to_split_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    settings = [
        "--method",
        "dicmor",
        "--set",
        "model.dim=1",
        "--set",
        "model.mult.num_heads=1",
    ]
    assert main(["train", "tiny", *settings, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model.dim must be >= 2 for dicmor") and "\n" not in err


def test_an_unavailable_device_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", "tiny", "--device", "cuda", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: train.device is cuda but CUDA is not available on this machine"


def test_evaluate_on_every_subset_of_modalities(
    trained: Path, capsys: pytest.CaptureFixture
) -> None:
    log = trained / "main" / "evaluations.jsonl"
    before = log.read_text().splitlines() if log.exists() else []
    assert main(["evaluate", str(trained / "main"), "--subsets"]) == 0
    rows = table_rows(capsys.readouterr().out)
    subsets = ["{a}", "{b}", "{c}", "{a,b}", "{a,c}", "{b,c}", "{a,b,c}"]
    assert [row.split()[2] for row in rows] == subsets
    records = [json.loads(line) for line in log.read_text().splitlines()[len(before) :]]
    assert [r["protocol"] for r in records] == [f"fixed {s}" for s in subsets]
    # Each row is the fixed protocol's own evaluation.
    assert main(["evaluate", str(trained / "main"), "--missing", "fixed:a+c"]) == 0
    single = json.loads(log.read_text().splitlines()[-1])
    assert single["metrics"] == records[4]["metrics"]


def test_evaluate_takes_one_way_of_choosing_masks(
    trained: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["evaluate", str(trained / "main"), "--subsets", "--missing", "random:0.3"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "error: evaluate: give at most one of --missing, --masks and --subsets"
    )


def test_evaluate_gaps_reports_and_saves_the_distribution_gaps(
    trained: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["evaluate", str(trained / "other"), "--gaps"]) == 0
    out = capsys.readouterr().out
    assert "class_mmd (zeros)" in out and "frechet (zeros)" in out
    saved = json.loads((trained / "other" / "gaps.json").read_text())
    assert saved["split"] == "test"
    (gaps,) = saved["gaps"].values()
    assert sorted(gaps) == ["a", "b", "c"]
    for row in gaps.values():
        assert row["n"] > 0
        assert row["mse"] >= 0 and row["mmd_zero"] > 0 and row["frechet_zero"] > 0


def test_evaluate_gaps_of_a_method_that_recovers_nothing_is_an_error(
    trained: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["evaluate", str(trained / "main"), "--gaps"]) == 2
    assert "recovers no features" in capsys.readouterr().err
