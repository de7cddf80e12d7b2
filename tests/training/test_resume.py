"""Nothing lost: a killed run resumes to the same result, and a cached stage is a pure speed-up.

The kill tests start a run in a child process, wait for a given epoch of a given stage to be
logged, wait a random fraction of an epoch more and kill the child with SIGKILL, then run the
same thing again: the result must be bit-identical to a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import small_config, tiny_dataset

from dicmor.config import Config, ConfigError
from dicmor.data.dataset import MultimodalDataset
from dicmor.experiments.run import RunResult, run_experiment
from dicmor.missing.protocols import MissingProtocol
from dicmor.models.base import DataInfo
from dicmor.registry import build_model, model_names
from dicmor.training.state import STATE_FILE

ROOT = Path(__file__).resolve().parents[2]
EPOCH_PAUSE = 0.25  # seconds the child waits after logging each epoch: time to be killed in


def resumable_config(out: Path, method: str = "dicmor") -> Config:
    config = small_config(
        method,
        **{
            "output_dir": str(out),
            "train.max_epochs": 5,
            "train.patience": 50,
            "train.progress": True,  # one line per epoch: the child's output is not a terminal
            "train.save_recovered": False,
        },
    )
    return config.replace(missing=MissingProtocol("random", 0.3))


def resumable_data() -> MultimodalDataset:
    return tiny_dataset("classification", n=48)


def child(out: str) -> None:
    """The run the kill tests interrupt (started as ``python -c``)."""

    def log(line: str) -> None:
        print(line, flush=True)
        if ": train " in line:
            time.sleep(EPOCH_PAUSE)

    run_experiment(resumable_config(Path(out)), dataset=resumable_data(), name="run", log=log)


def quiet(config: Config, data: MultimodalDataset, **options) -> RunResult:
    options.setdefault("log", lambda _: None)
    return run_experiment(config, dataset=data, **options)


def same_outcome(a: Path, b: Path) -> None:
    first, second = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert first["metrics"] == second["metrics"]
    assert np.array_equal(np.load(a / "test_predictions.npy"), np.load(b / "test_predictions.npy"))
    weights = [torch.load(d / "checkpoint.pt", weights_only=True)["state_dict"] for d in (a, b)]
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
    histories = [json.loads((d / "history.json").read_text()) for d in (a, b)]
    assert histories[0] == histories[1]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    quiet(resumable_config(out), resumable_data(), name="run")
    return out / "run"


def kill_during(out: Path, stage: str, epoch: int, rng: random.Random) -> None:
    """Start :func:`child`, kill it a random moment after ``stage`` logged ``epoch``."""
    command = [
        sys.executable,
        "-c",
        f"from tests.training import test_resume as t; t.child({str(out)!r})",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if line.startswith(f"{stage} {epoch}/"):
                time.sleep(rng.uniform(0, 1.5 * EPOCH_PAUSE))
                process.send_signal(signal.SIGKILL)
                break
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, "".join(seen)


@pytest.mark.parametrize(("stage", "epoch", "seed"), [("complete", 2, 0), ("missing", 3, 1)])
def test_a_run_killed_in_a_stage_resumes_to_the_same_result(
    tmp_path: Path, uninterrupted: Path, stage: str, epoch: int, seed: int
) -> None:
    kill_during(tmp_path, stage, epoch, random.Random(seed))
    run_dir = tmp_path / "run"
    assert not (run_dir / "metrics.json").exists()  # a killed run does not look finished
    assert json.loads((run_dir / "run.json").read_text())["status"] == "training"
    assert (run_dir / STATE_FILE).is_file()

    messages: list[str] = []
    config = resumable_config(tmp_path)
    result = run_experiment(config, dataset=resumable_data(), name="run", log=messages.append)
    assert result.run_dir == run_dir  # resumed in place, not in a new folder
    assert f"resuming {run_dir}" in messages
    assert any(m.startswith(f"{stage}: resuming after epoch") for m in messages), messages
    same_outcome(run_dir, uninterrupted)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert not (run_dir / STATE_FILE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "run"]


def test_a_truncated_state_is_detected_and_the_run_starts_over(
    tmp_path: Path, uninterrupted: Path
) -> None:
    kill_during(tmp_path, "missing", 2, random.Random(2))
    state = tmp_path / "run" / STATE_FILE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    for cached in (tmp_path / "cache").glob("*.pt"):
        cached.unlink()  # the restart trains stage 1 too
    messages: list[str] = []
    run_experiment(
        resumable_config(tmp_path), dataset=resumable_data(), name="run", log=messages.append
    )
    assert any(f"{state} is unreadable" in m and "from the start" in m for m in messages)
    same_outcome(tmp_path / "run", uninterrupted)


def test_an_unnamed_run_resumes_the_unfinished_folder_of_the_same_run(tmp_path: Path) -> None:
    config, data = resumable_config(tmp_path, "zero_fill"), resumable_data()
    with pytest.raises(KeyboardInterrupt):
        quiet(config, data, log=interrupt_at("main 2/"))
    (left,) = [p for p in tmp_path.iterdir() if p.name != "cache"]
    other = quiet(config.replace(**{"train.lr": 0.003}), data)  # another run: its own folder
    assert other.run_dir != left
    resumed = quiet(config, data)
    assert resumed.run_dir == left
    reference = quiet(config, data, name="reference")
    same_outcome(left, reference.run_dir)


def interrupt_at(prefix: str):
    def log(line: str) -> None:
        if line.startswith(prefix):
            raise KeyboardInterrupt

    return log


def test_restart_starts_over_and_other_settings_are_refused(tmp_path: Path) -> None:
    config, data = resumable_config(tmp_path, "zero_fill"), resumable_data()
    with pytest.raises(KeyboardInterrupt):
        quiet(config, data, name="run", log=interrupt_at("main 3/"))
    changed = config.replace(**{"train.lr": 0.003})
    with pytest.raises(
        ConfigError, match=r"holds an unfinished run with other settings.*--restart"
    ):
        quiet(changed, data, name="run")
    messages: list[str] = []
    result = run_experiment(config, dataset=data, name="run", restart=True, log=messages.append)
    assert result.run_dir == tmp_path / "run"
    assert not any("resuming" in m for m in messages)
    assert json.loads((result.run_dir / "run.json").read_text())["status"] == "finished"


def test_a_run_that_fails_before_its_first_epoch_leaves_nothing(tmp_path: Path) -> None:
    config, data = resumable_config(tmp_path, "zero_fill"), resumable_data()
    with pytest.raises(KeyboardInterrupt):
        quiet(config, data, name="run", log=interrupt_at("main 1/"))
    assert not (tmp_path / "run").exists()


def test_a_run_that_fails_later_is_marked_failed_and_resumes(tmp_path: Path) -> None:
    config, data = resumable_config(tmp_path, "zero_fill"), resumable_data()
    with pytest.raises(KeyboardInterrupt):
        quiet(config, data, name="run", log=interrupt_at("main 4/"))
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and record["error"] == "KeyboardInterrupt"
    result = quiet(config, data, name="run")
    assert result.run_dir == tmp_path / "run"
    same_outcome(result.run_dir, quiet(config, data, name="reference").run_dir)


@pytest.mark.parametrize("name", ["../outside", "a/b", "..", ""])
def test_a_run_name_stays_inside_the_output_folder(tmp_path: Path, name: str) -> None:
    out = tmp_path / "runs"
    with pytest.raises(ConfigError, match="one folder name inside the output folder"):
        quiet(resumable_config(out, "zero_fill"), resumable_data(), name=name)
    assert not (tmp_path / "outside").exists() and not (out / "a").exists()


def two_stage_methods() -> list[str]:
    data = tiny_dataset("classification")
    return [
        name
        for name in model_names()
        if any(
            stage.complete_data
            for stage in build_model(DataInfo.from_dataset(data), small_config(name).model).stages()
        )
    ]


@pytest.mark.parametrize("method", two_stage_methods())
def test_a_cached_stage_gives_the_same_run_as_a_trained_one(method: str, tmp_path: Path) -> None:
    config, data = resumable_config(tmp_path, method), resumable_data()
    config = config.replace(**{"train.max_epochs": 2, "train.progress": False})
    missed = quiet(config, data, name="miss")
    hit_messages: list[str] = []
    hit = run_experiment(config, dataset=data, name="hit", log=hit_messages.append)
    assert any("reusing cached weights" in m for m in hit_messages), hit_messages
    assert hit.metrics == missed.metrics
    assert np.array_equal(
        np.load(hit.run_dir / "test_predictions.npy"),
        np.load(missed.run_dir / "test_predictions.npy"),
    )
