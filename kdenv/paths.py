"""Where kdenv reads its shipped data and keeps its outputs: the one place that knows both.

Shipped with the package (so a wheel install has them, found through ``importlib.resources``):
the schedule tables (``kdenv/tables/<name>/``, or ``$KDENV_BENCHMARKS_DIR``), the leaderboard's agent
result files (``kdenv/results/leaderboard/``) and the algorithms' default hyperparameters (``kdenv/decision/hyperparams/<algo>.yaml``). Outputs all live under one
runs folder (``./runs`` by default, or ``$KDENV_RUNS_DIR``).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

RUNS_DIR_ENV = "KDENV_RUNS_DIR"
BENCHMARKS_DIR_ENV = "KDENV_BENCHMARKS_DIR"


def _package_folder(*parts: str) -> Path:
    # kdenv is installed as plain files (a wheel, or an editable checkout), never zipped, so the
    # resource folder is a real directory.
    return Path(str(resources.files("kdenv").joinpath(*parts)))


def runs_dir() -> Path:
    """``$KDENV_RUNS_DIR`` if set, else ``runs/`` in the working directory."""
    return Path(os.environ.get(RUNS_DIR_ENV) or "runs")


def cache_dir() -> Path:
    """Caches that any run may reuse (tokenised data, teacher knowledge)."""
    return runs_dir() / "cache"


def teacher_dir(task: str) -> Path:
    """Where the fine-tuned teacher of a task is saved and looked for."""
    return runs_dir() / "teachers" / task


def shipped_tables_dir() -> Path:
    """The schedule tables that come with the package (``kdenv/tables/``)."""
    return _package_folder("tables")


def tables_dir() -> Path:
    """Where tables are looked up by name and written by default: ``$KDENV_BENCHMARKS_DIR`` if
    set, else the shipped tables."""
    return Path(os.environ.get(BENCHMARKS_DIR_ENV) or shipped_tables_dir())


def leaderboard_results_dir() -> Path:
    """The leaderboard's committed agent result files (``kdenv/results/leaderboard/<table>/<row>.json``),
    shipped with the package: the board's inputs."""
    return _package_folder("results", "leaderboard")


def hyperparams_dir() -> Path:
    """The algorithms' default hyperparameter files (``<algo>.yaml``)."""
    return _package_folder("decision", "hyperparams")
