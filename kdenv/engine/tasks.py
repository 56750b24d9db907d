"""Task specs: the GLUE tasks (read from glue.yaml by the code that reads a task file) and task files
(kdenv.engine.task_files); one place that says how each task is read, labelled and scored."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LocalLayout:
    """How a task's TSVs in the standard GLUE download-script layout are read.

    Columns are named by their header name, or by position (an ``int``) for files without a header.
    """

    folder: str
    has_header: bool
    text_a: str | int
    text_b: str | int | None
    label: str | int
    dev_files: tuple[str, ...] = ("dev.tsv",)


@dataclass(frozen=True)
class TaskSpec:
    """Everything kdenv needs to know about one GLUE task."""

    name: str
    hub_config: str
    hub_text_fields: tuple[str, ...]
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    local: LocalLayout
    # Names of the dev splits on the hub, in the order of ``local.dev_files``.
    hub_dev_splits: tuple[str, ...] = ("validation",)
    # A task from files (kdenv.engine.task_files.TaskFiles): where its data lives; None for GLUE.
    files: Any = None
    file_task: Any = None  # the checked kdenv.engine.task_files.FileTask it was made from

    @property
    def ref(self) -> str:
        """What names this task in a config (``DataConfig.task``) so that any process finds it again:
        a GLUE task's name, or a task file's path."""
        return str(self.files.path) if self.files is not None else self.name

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        """Width of the model's output layer: one for regression."""
        return 1 if self.is_regression else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return len(self.hub_text_fields) == 2

    @property
    def primary_metric(self) -> str:
        """The metric used to pick checkpoints and to compute rewards."""
        return self.metrics[0]

    def label_id(self, raw: str) -> float | int:
        """Turns a label as written in a local TSV into the hub's label id (or a float score)."""
        raw = raw.strip()
        if self.is_regression:
            score = float(raw)
            if not math.isfinite(score):
                raise ValueError(f"score {raw!r} is not a finite number")
            return score
        if raw in self.label_names:
            return self.label_names.index(raw)
        as_int = int(raw)  # tasks whose files hold ids (0/1) rather than names
        if not 0 <= as_int < len(self.label_names):
            raise ValueError(f"label id {as_int} out of range for {self.name}")
        return as_int


GLUE_SPECS = Path(__file__).with_name("glue.yaml")  # the nine GLUE tasks, as task specs
GLUE_KEYS = {"name", "type", "text", "label", "labels", "metrics", "glue"}
GLUE_LAYOUT_KEYS = {"folder", "header", "text_columns", "label_column", "dev", "hub_dev_splits"}


def glue_spec(raw: dict[str, Any], where: str) -> TaskSpec:
    """One GLUE task's spec: its task mapping checked by the code that checks a task file
    (kdenv.engine.task_files.describe_task), then where GLUE keeps its data."""
    from kdenv.engine.task_files import TaskFileError, describe_task

    about = describe_task(raw, where, GLUE_KEYS, GLUE_KEYS - {"labels"})
    if about.labels is None:
        raise TaskFileError(f"{where}: a GLUE task lists its label names in the hub's order")
    layout = raw["glue"]
    unknown = set(layout) - GLUE_LAYOUT_KEYS if isinstance(layout, dict) else {"(not a mapping)"}
    if unknown or "folder" not in layout:
        raise TaskFileError(f"{where}: glue takes {sorted(GLUE_LAYOUT_KEYS)} (folder required), not {sorted(unknown)}")
    columns = tuple(layout.get("text_columns", about.text))
    dev_files = tuple(layout.get("dev", ["dev.tsv"]))
    hub_dev_splits = tuple(layout.get("hub_dev_splits", ["validation"]))
    if len(columns) != len(about.text) or len(hub_dev_splits) != len(dev_files):
        raise TaskFileError(f"{where}: text_columns must match text, and hub_dev_splits the dev files")
    return TaskSpec(name=about.name, hub_config=about.name, hub_text_fields=about.text, label_names=about.labels,
                    metrics=about.metrics,
                    local=LocalLayout(layout["folder"], has_header=bool(layout.get("header", True)),
                                      text_a=columns[0], text_b=columns[1] if len(columns) == 2 else None,
                                      label=layout.get("label_column", about.label), dev_files=dev_files),
                    hub_dev_splits=hub_dev_splits)


def load_glue_specs(path: Path = GLUE_SPECS) -> dict[str, TaskSpec]:
    from kdenv.engine.task_files import load_yaml

    entries = load_yaml(path)
    specs = [glue_spec(raw, f"{path} (task {i + 1})") for i, raw in enumerate(entries or [])]
    return {spec.name: spec for spec in specs}


TASKS: dict[str, TaskSpec] = load_glue_specs()

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli"}


_FILE_TASKS: dict[str, tuple[tuple, TaskSpec]] = {}  # resolved path -> (files' stamp, spec)
_FILE_NAMES: dict[str, TaskSpec] = {}


def get_task(name: str) -> TaskSpec:
    """Looks a task up by name, case-insensitively (``RTE``, ``sst-2`` and ``sst2`` all work), or
    reads a task file (``path/to/task.yaml``: kdenv.engine.task_files), once per version of it."""
    from kdenv.engine.task_files import files_stamp, is_task_file, read_task_file

    if is_task_file(name):
        path = Path(name).expanduser()
        key = str(path.resolve())
        cached = _FILE_TASKS.get(key)  # read again when the task file or either data file changed
        if cached is None or cached[0] != files_stamp(cached[1].files):
            described = read_task_file(path, reserved=set(TASKS) | set(_ALIASES))
            files = described.files
            spec = TaskSpec(name=described.name, hub_config="", hub_text_fields=files.text,
                            label_names=described.label_names, metrics=described.metrics,
                            local=LocalLayout(folder=str(files.path.parent), has_header=True, text_a=files.text[0],
                                              text_b=files.text[1] if len(files.text) == 2 else None,
                                              label=files.label),
                            files=files, file_task=described)
            known = _FILE_NAMES.get(spec.name)
            if known is not None and known.files.path != spec.files.path:
                raise ValueError(f"two task files are named {spec.name!r} ({known.files.path} and {spec.files.path}): "
                                 "their teachers and caches would share a folder; give each its own name")
            _FILE_TASKS[key] = (files_stamp(files), spec)
            _FILE_NAMES[spec.name] = spec
        return _FILE_TASKS[key][1]
    key = name.strip().lower()
    if key in _FILE_NAMES:  # a task file read in this process, named by its name (teacher folders, caches)
        return _FILE_NAMES[key]
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise ValueError(
            f"unknown GLUE task {name!r}; choose one of: {', '.join(sorted(TASKS))}, or pass a task file "
            "(path/to/task.yaml, docs/own_task.md)"
        )
    return TASKS[key]
