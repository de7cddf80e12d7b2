"""Orchestration above training, evaluation and reporting: one run end to end, and sweeps."""

from dicmor.experiments.run import RunResult, run_experiment
from dicmor.experiments.sweep import run_sweep

__all__ = ["RunResult", "run_experiment", "run_sweep"]
