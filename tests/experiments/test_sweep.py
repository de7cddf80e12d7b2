"""A sweep trains every method × protocol × seed on shared masks and aggregates."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import small_config

from dicmor.config import ConfigError
from dicmor.experiments.sweep import run_sweep
from dicmor.missing.protocols import MissingProtocol, MissingProtocolError, load_masks


def test_sweep_shares_masks_between_methods_and_aggregates(tmp_path: Path) -> None:
    base = small_config(
        "zero_fill",
        **{
            "train.max_epochs": 1,
            "model.kernel_size": 1,
            "output_dir": str(tmp_path),
            "data.modalities": ["fourier", "morphological"],
        },
    )
    protocols = [MissingProtocol(kind="random", rate=0.3)]
    runs, rows, table = run_sweep(
        base, ["zero_fill", "mean_fill"], protocols, [1, 2], log=lambda _: None
    )
    assert len(runs) == 4 and len(rows) == 2 and [r["n"] for r in rows] == [2, 2]
    by_seed: dict[int, list] = {}
    for run in runs:
        assert Path(run["run_dir"]).is_absolute()
        masks, _ = load_masks(Path(run["run_dir"]) / "masks.npz")
        by_seed.setdefault(run["seed"], []).append(masks["test"])
    assert np.array_equal(*by_seed[1])
    assert not np.array_equal(by_seed[1][0], by_seed[2][0])
    accs = [run["metrics"]["acc"] for run in runs if run["method"] == "zero_fill"]
    assert rows[0]["metrics"]["acc"] == np.mean(accs)
    assert "random MR=0.30" in table and "±" in table
    assert json.loads((tmp_path / "summary.json").read_text())["rows"][0]["n"] == 2


@pytest.mark.parametrize(
    ("methods", "protocols", "seeds", "message"),
    [
        (["zero_fill", "zero_fill"], ["random:0.3"], [1], "methods given more than once"),
        (["zero_fill"], ["random:0.3", "random:0.3"], [1], "protocols given more than once"),
        (["zero_fill"], ["random:0.3"], [1, 1], "seeds given more than once"),
        (["zero_fill", "no_such"], ["random:0.3"], [1], "unknown method 'no_such'"),
        (["zero_fill"], ["random:0.3", "random:0.6"], [1], "missing rate"),
    ],
)
def test_a_sweep_that_cannot_finish_fails_before_training_anything(
    tmp_path: Path, methods, protocols, seeds, message: str
) -> None:
    base = sweep_config(tmp_path)  # two modalities: random missing reaches at most 1/2
    parsed = [MissingProtocol.from_string(p) for p in protocols]
    with pytest.raises((ConfigError, MissingProtocolError), match=message):
        run_sweep(base, methods, parsed, seeds, log=lambda _: None)
    assert not any(tmp_path.iterdir())


def test_the_summary_is_written_after_every_run(tmp_path: Path) -> None:
    summaries = []

    def log(line: str) -> None:
        if line.startswith("== run 2/2"):
            summaries.append(json.loads((tmp_path / "summary.json").read_text()))

    run_sweep(
        sweep_config(tmp_path), ["zero_fill"], [MissingProtocol("random", 0.3)], [1, 2], log=log
    )
    assert summaries and summaries[0]["rows"][0]["n"] == 1


def sweep_config(tmp_path: Path, **overrides: object):
    return small_config(
        "zero_fill",
        **{
            "train.max_epochs": 1,
            "model.kernel_size": 1,
            "output_dir": str(tmp_path),
            "data.modalities": ["fourier", "morphological"],
            **overrides,
        },
    )


def test_a_sweep_started_again_reuses_what_it_finished(tmp_path: Path) -> None:
    protocols = [MissingProtocol(kind="random", rate=0.3)]
    first, _, _ = run_sweep(sweep_config(tmp_path), ["zero_fill"], protocols, [1])
    messages: list[str] = []
    runs, rows, _ = run_sweep(
        sweep_config(tmp_path), ["zero_fill"], protocols, [1, 2], log=messages.append
    )
    assert runs[0] == first[0]  # seed 1 reused as it was
    assert runs[1]["seed"] == 2 and runs[1]["run_dir"] != first[0]["run_dir"]
    assert sum("finished in" in m for m in messages) == 1
    assert rows[0]["n"] == 2
    run_dirs = {p for p in tmp_path.iterdir() if (p / "metrics.json").is_file()}
    assert len(run_dirs) == 2

    # Other settings, a deleted run folder, or resume=False: trained again.
    changed, _, _ = run_sweep(
        sweep_config(tmp_path, **{"train.lr": 1e-3}), ["zero_fill"], protocols, [1]
    )
    assert changed[0]["run_dir"] not in {r["run_dir"] for r in runs}
    again, _, _ = run_sweep(sweep_config(tmp_path), ["zero_fill"], protocols, [1], resume=False)
    assert again[0]["run_dir"] != first[0]["run_dir"]
    assert again[0]["metrics"] == first[0]["metrics"]  # deterministic, so the same numbers
    for path in Path(again[0]["run_dir"]).iterdir():
        path.unlink()
    Path(again[0]["run_dir"]).rmdir()
    messages.clear()
    run_sweep(sweep_config(tmp_path), ["zero_fill"], protocols, [1], log=messages.append)
    assert not any("finished in" in m for m in messages)


def test_an_interrupted_sweep_resumes_to_the_same_summary(tmp_path: Path) -> None:
    protocols = [MissingProtocol(kind="random", rate=0.3)]
    config = sweep_config(tmp_path / "a", **{"train.max_epochs": 3, "train.patience": 50})
    config = config.replace(**{"train.progress": True})  # per-epoch lines: not a terminal
    run_sweep(config, ["zero_fill", "mean_fill"], protocols, [1], log=lambda _: None)

    def interrupt(line: str) -> None:
        if line.startswith("main 2/") and any(m.startswith("== run 2/2") for m in seen):
            raise KeyboardInterrupt

    seen: list[str] = []
    interrupted = config.replace(output_dir=str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(
            interrupted,
            ["zero_fill", "mean_fill"],
            protocols,
            [1],
            log=lambda line: (seen.append(line), interrupt(line)),
        )
    messages: list[str] = []
    run_sweep(interrupted, ["zero_fill", "mean_fill"], protocols, [1], log=messages.append)
    assert any("finished in" in m for m in messages)
    assert "main: resuming after epoch 1" in messages
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in "ab"]
    assert summaries[0] == summaries[1]


def test_a_sweep_reports_elapsed_time_and_an_estimate_of_what_is_left(tmp_path: Path) -> None:
    messages: list[str] = []
    run_sweep(
        sweep_config(tmp_path),
        ["zero_fill"],
        [MissingProtocol("random", 0.3)],
        [1, 2, 3],
        log=messages.append,
    )
    starts = [m for m in messages if m.startswith("== run") and "elapsed" in m]
    assert len(starts) == 3 and starts[0].endswith("(elapsed 0:00)")
    assert all(re.search(r"\(elapsed \d+:\d\d, ETA \d+:\d\d\)$", m) for m in starts[1:]), starts
    done = [m for m in messages if m.startswith("== run") and " done, " in m]
    assert [m.split(" done, ")[1].split(" trained")[0] for m in done] == ["1/3", "2/3", "3/3"]


def test_two_sweeps_writing_one_folder_keep_every_run(tmp_path: Path) -> None:
    def sweep(method: str) -> subprocess.Popen:
        command = [
            sys.executable, "-m", "dicmor", "sweep", "--data", "mfeat",
            "--set", "data.modalities=[fourier,morphological]", "--set", "model.dim=8",
            "--set", "model.kernel_size=1", "--set", "train.max_epochs=1",
            "--set", "train.progress=false",
            "--methods", method, "--rates", "0.3", "--seeds", "1", "2", "3",
            "--output-dir", str(tmp_path),
        ]  # fmt: skip
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    processes = [sweep("zero_fill"), sweep("mean_fill")]
    for process in processes:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output.decode()
    runs = json.loads((tmp_path / "sweep.json").read_text())
    assert sorted((r["method"], r["seed"]) for r in runs) == [
        (m, s) for m in ("mean_fill", "zero_fill") for s in (1, 2, 3)
    ]
    assert all((Path(r["run_dir"]) / "metrics.json").is_file() for r in runs)
    rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    assert sorted((row["method"], row["n"]) for row in rows) == [("mean_fill", 3), ("zero_fill", 3)]


_PARALLEL_OPTIONS = {
    "train.max_epochs": 1,
    "train.num_threads": 1,
    "model.kernel_size": 1,
    "data.modalities": ["fourier", "morphological"],
}
_PARALLEL_PROTOCOLS = [
    MissingProtocol(kind="random", rate=0.3),
    MissingProtocol(kind="random", rate=0.5),
]
_PARALLEL_METHODS = ["zero_fill_pretrained", "cross_regression"]


def _parallel_sweep(folder: Path, **executor) -> tuple[list[dict], dict]:
    base = small_config("zero_fill", output_dir=str(folder), **_PARALLEL_OPTIONS)
    runs, _, _ = run_sweep(
        base, _PARALLEL_METHODS, _PARALLEL_PROTOCOLS, [5], log=lambda _: None, **executor
    )
    return runs, json.loads((folder / "summary.json").read_text())


@pytest.fixture(scope="module")
def serial_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], dict]:
    return _parallel_sweep(tmp_path_factory.mktemp("serial"))


def _assert_cache_trained_once(runs: list[dict]) -> None:
    # The two runs of one method and seed share one stage-1 cache entry: one of the parallel
    # workers trains it, the other waits and reads it.
    for method in _PARALLEL_METHODS:
        trained = [
            "complete" in json.loads((Path(r["run_dir"]) / "history.json").read_text())
            for r in runs
            if r["method"] == method
        ]
        assert sorted(trained) == [False, True], (method, trained)


def test_parallel_workers_give_the_serial_sweep_and_train_each_cache_entry_once(
    tmp_path: Path, serial_sweep: tuple[list[dict], dict]
) -> None:
    runs, summary = _parallel_sweep(tmp_path, workers=2)
    assert [r["metrics"] for r in runs] == [r["metrics"] for r in serial_sweep[0]]
    assert summary == serial_sweep[1]
    _assert_cache_trained_once(runs)


def test_a_local_ray_instance_with_two_workers_gives_the_serial_sweep(
    tmp_path: Path, serial_sweep: tuple[list[dict], dict]
) -> None:
    runs, summary = _parallel_sweep(tmp_path, workers=2, executor="ray")
    assert [r["metrics"] for r in runs] == [r["metrics"] for r in serial_sweep[0]]
    assert summary == serial_sweep[1]
    assert json.loads((tmp_path / "sweep.json").read_text()) == runs
    _assert_cache_trained_once(runs)


def test_ray_options_need_the_ray_executor_and_sane_resources(tmp_path: Path) -> None:
    base = small_config("zero_fill", output_dir=str(tmp_path), **_PARALLEL_OPTIONS)
    protocols = _PARALLEL_PROTOCOLS[:1]
    with pytest.raises(ConfigError, match="need --executor ray"):
        run_sweep(base, ["zero_fill"], protocols, [5], log=lambda _: None, address="auto")
    with pytest.raises(ConfigError, match="--cpus-per-run must be > 0"):
        run_sweep(
            base,
            ["zero_fill"],
            protocols,
            [5],
            log=lambda _: None,
            executor="ray",
            cpus_per_run=-1,
        )


def test_without_ray_the_ray_executor_says_how_to_install_it(tmp_path: Path) -> None:
    script = (
        "import sys; sys.modules['ray'] = None\n"
        "from dicmor.cli import main\n"
        "sys.exit(main(['sweep', '--executor', 'ray', '--set', 'train.max_epochs=1', "
        f"'--output-dir', {str(tmp_path)!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "dicmor[ray]"' in lines[0], done.stderr
