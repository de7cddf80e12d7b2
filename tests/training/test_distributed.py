"""``torchrun --nproc-per-node 2 -m dicmor train`` (gloo, CPU) is the one-process run.

Without dropout, each update of the two ranks is that of one process on the same global batch,
up to the order of float additions. Stated tolerance after two epochs (batch 15, so every
epoch ends on a batch split unevenly): test metrics within 1e-4, every epoch's train and valid
losses within a relative 1e-4, every weight tensor within a relative 1e-2 in norm (measured
on 2 CPU cores: at most 0.3 %, in the attention projections, where Adam's normalised step
turns the float-order differences of near-zero gradients into steps of up to the learning rate).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

NO_DROPOUT = [
    f"model.mult.{name}=0"
    for name in ("attn_dropout", "relu_dropout", "res_dropout", "embed_dropout", "out_dropout")
]
SETTINGS = [
    "model.method=zero_fill_pretrained",
    "train.batch_size=15",
    "train.max_epochs=2",
    "train.num_threads=1",
    "train.progress=false",
    "missing.kind=random",
    "missing.rate=0.3",
    *NO_DROPOUT,
]


def _train(command: list[str], out: Path) -> subprocess.CompletedProcess:
    args = ["train", "tiny", "--output-dir", str(out), "--name", "run"]
    for setting in SETTINGS:
        args += ["--set", setting]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, "-m", "dicmor", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_two_gloo_ranks_match_one_process_and_write_one_run_folder(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None, "torchrun is installed with torch"
    _train([sys.executable], tmp_path / "single")
    done = _train([torchrun, "--standalone", "--nproc-per-node", "2"], tmp_path / "ddp")
    # Only rank 0 writes: one run folder (and the stage cache), one report.
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["cache", "run"]
    assert done.stdout.count("run written to") == 1
    single = json.loads((tmp_path / "single" / "run" / "metrics.json").read_text())["metrics"]
    ddp = json.loads((tmp_path / "ddp" / "run" / "metrics.json").read_text())["metrics"]
    assert single.keys() == ddp.keys()
    for name, value in single.items():
        assert ddp[name] == pytest.approx(value, abs=1e-4), name
    weights = [
        torch.load(tmp_path / f / "run" / "checkpoint.pt", weights_only=False)["state_dict"]
        for f in ("single", "ddp")
    ]
    for name, tensor in weights[0].items():
        gap = float((weights[1][name] - tensor).norm() / tensor.norm().clamp_min(1e-12))
        assert gap < 1e-2, (name, gap)
    histories = [
        json.loads((tmp_path / f / "run" / "history.json").read_text()) for f in ("single", "ddp")
    ]
    assert histories[0].keys() == histories[1].keys()
    for stage, record in histories[0].items():
        for mine, theirs in zip(record["epochs"], histories[1][stage]["epochs"], strict=True):
            assert theirs == pytest.approx(mine, rel=1e-4, abs=1e-5), stage


def test_a_sweep_under_torchrun_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    from dicmor.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["sweep", "--output-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "without torchrun" in error[0], error
    assert not any(tmp_path.iterdir())
