"""Where kdenv keeps its outputs. Everything lives under one runs folder (``./runs`` by default)."""

from __future__ import annotations

import os
from pathlib import Path

RUNS_DIR_ENV = "KDENV_RUNS_DIR"


def runs_dir() -> Path:
    """``$KDENV_RUNS_DIR`` if set, else ``runs/`` in the working directory."""
    return Path(os.environ.get(RUNS_DIR_ENV) or "runs")


def cache_dir() -> Path:
    """Caches that any run may reuse (tokenised data, teacher knowledge)."""
    return runs_dir() / "cache"


def teacher_dir(task: str) -> Path:
    """Where the fine-tuned teacher of a task is saved and looked for."""
    return runs_dir() / "teachers" / task
