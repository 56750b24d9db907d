"""A task from files: any text classification or regression task, described by a small YAML file
and read through ``datasets``' local loaders (CSV, TSV, JSON Lines, Parquet).

    name: sentiment              # a short name: teachers and caches are kept under it
    train: sentiment_train.csv   # paths relative to this file
    dev: sentiment_dev.csv
    text: [sentence]             # one text column, or two for a pair task
    label: label
    type: classification         # or regression
    labels: [negative, positive] # optional: the label names in id order (inferred and recorded if absent)
    metrics: [accuracy, f1]      # the first drives rewards and teacher selection

Instead of ``train`` and ``dev`` files, ``hub: <dataset>`` names a ``datasets`` dataset (a hub id where
the hub is reachable, or a local dataset folder), with ``hub_config`` and the ``train_split`` and
``dev_split`` names (default ``train`` and ``validation``). A label column of ``ClassLabel`` type gives
its names in the dataset's order.

``get_task("path/to/task.yaml")`` returns its :class:`~kdenv.engine.tasks.TaskSpec` (made from the
:class:`FileTask` read here), with the task file's and data files' checksum in ``files.sha256`` (part of the data fingerprints every cache, teacher
and table records). Everything a file can get wrong is refused in one line naming the file, the
column or the row, before any model is loaded.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kdenv.errors import KdenvError

FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
CLASSIFICATION_METRICS = ("accuracy", "f1", "matthews_corr")
REGRESSION_METRICS = ("pearson", "spearman")
KEYS = {"name", "train", "dev", "text", "label", "type", "labels", "metrics", "hub", "hub_config", "train_split",
        "dev_split"}
HUB_KEYS = {"hub", "hub_config", "train_split", "dev_split"}


class TaskFileError(KdenvError, ValueError):
    """A task file, or a data file it names, that kdenv cannot use as it is."""


@dataclass(frozen=True)
class TaskFiles:
    """Where a file task's data lives and how it is read."""

    path: Path  # the task file
    train: Path | None  # None: a hub dataset
    dev: Path | None
    text: tuple[str, ...]
    label: str
    sha256: str  # of the task file and both data files (a hub dataset: of its splits' fingerprints)
    hub: tuple[str, str | None, str, str] | None = None  # dataset, config, train split, dev split

    def source(self, split: str) -> str:
        """How messages name a split's data: its file, or the hub dataset's split."""
        if self.hub is not None:
            return f"{self.hub[0]}[{self.hub[2] if split == 'train' else self.hub[3]}]"
        return (self.train if split == "train" else self.dev).name


def is_task_file(name: str) -> bool:
    """Whether a --task value names a task file rather than a GLUE task."""
    return str(name).strip().lower().endswith((".yaml", ".yml"))


def _fail(path: Path, message: str) -> TaskFileError:
    return TaskFileError(f"{path}: {message}")


def _checksum(paths: list[Path], extra: list[str] = ()) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
        digest.update(b"\x00")
    for text in extra:
        digest.update(text.encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class FileTask:
    """What a task file says, checked: ``kdenv.engine.tasks.get_task`` makes its TaskSpec."""

    name: str
    label_names: tuple[str, ...]  # empty for regression
    metrics: tuple[str, ...]
    files: TaskFiles


class _TaskFileLoader(yaml.SafeLoader):
    """YAML as YAML 1.2 reads booleans: only true/false. PyYAML's YAML 1.1 would turn the label names
    ``[no, yes]`` or ``[off, on]`` into booleans, which then match no label in the data."""


_TaskFileLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "tTfF":
    _TaskFileLoader.yaml_implicit_resolvers.setdefault(_first, []).append(
        ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")))


@dataclass(frozen=True)
class TaskDescription:
    """What a task mapping says before any data is read: the part a task file and the packaged GLUE
    specs (kdenv/engine/glue.yaml) share, checked by one function, :func:`describe_task`."""

    name: str
    kind: str  # classification or regression
    text: tuple[str, ...]  # one text field, or two for a pair task
    label: str
    labels: tuple[str, ...] | None  # as given (None: inferred from train); () for regression
    metrics: tuple[str, ...]


def describe_task(raw: Any, where: str, keys: set[str], required: set[str],
                  reserved: set[str] | frozenset[str] = frozenset()) -> TaskDescription:
    """Checks a task mapping's keys, name, type, text, label names and metrics; every problem is one
    line that starts with ``where``. ``reserved``: names it may not take (a task file: the GLUE tasks')."""
    def fail(message: str) -> TaskFileError:
        return TaskFileError(f"{where}: {message}")

    if not isinstance(raw, dict):
        raise fail(f"a task is a mapping of {', '.join(sorted(required))}")
    unknown, missing = sorted(set(raw) - keys), sorted(required - set(raw))
    if unknown or missing:
        raise fail(f"{'unknown keys ' + str(unknown) if unknown else ''}{'; ' if unknown and missing else ''}"
                   f"{'missing keys ' + str(missing) if missing else ''}; the keys are {sorted(keys)}")
    name = str(raw["name"]).strip().lower()
    if not name.replace("_", "").replace("-", "").isalnum() or name in reserved:
        raise fail(f"name {raw['name']!r} must be letters, digits, - or _ and not a GLUE task's name")
    kind = raw["type"]
    if kind not in ("classification", "regression"):
        raise fail(f"type must be classification or regression, not {kind!r}")
    text = raw["text"] if isinstance(raw["text"], list) else [raw["text"]]
    if not 1 <= len(text) <= 2 or not all(isinstance(c, str) and c for c in text):
        raise fail(f"text names one text column, or two for a pair task, not {raw['text']!r}")
    given = raw.get("labels")
    if kind == "regression":
        if given:
            raise fail("a regression task has no label names: drop labels")
        labels: tuple[str, ...] | None = ()
    else:
        labels = tuple(str(v) for v in given) if given else None
        if labels is not None and (len(labels) < 2 or len(set(labels)) != len(labels)):
            raise fail(f"a classification task needs at least two distinct label names, not {list(labels)}")
    allowed = REGRESSION_METRICS if kind == "regression" else CLASSIFICATION_METRICS
    metrics = tuple(raw.get("metrics") or (allowed[0],))
    wrong = [m for m in metrics if m not in allowed]
    if wrong:
        raise fail(f"metrics {wrong} do not apply to {kind}; choose among {list(allowed)}")
    if kind == "classification" and labels is not None and len(labels) > 2 and set(metrics) - {"accuracy"}:
        raise fail(f"f1 and matthews_corr are computed for two classes here; with {len(labels)} use accuracy")
    return TaskDescription(name, kind, tuple(text), str(raw["label"]), labels, metrics)


def load_yaml(path: Path) -> Any:
    """A YAML file read as YAML 1.2 reads booleans (see _TaskFileLoader)."""
    try:
        return yaml.load(path.read_text(), Loader=_TaskFileLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise _fail(path, f"not valid YAML ({error})") from None


def read_task_file(path: str | Path, reserved: set[str] | frozenset[str] = frozenset()) -> FileTask:
    """A task file, its data checked (labels, texts, splits) so that a bad file stops here, in one
    line; ``reserved``: names it may not take (the GLUE tasks')."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TaskFileError(f"task file {path} does not exist; pass the path of a task YAML (see docs/own_task.md)")
    raw = load_yaml(path)
    is_hub = isinstance(raw, dict) and "hub" in raw
    source_keys = {"hub"} if is_hub else {"train", "dev"}
    about = describe_task(raw, str(path), KEYS, {"name", "text", "label", "type"} | source_keys, reserved)
    if is_hub and {"train", "dev"} & set(raw):
        raise _fail(path, "name either hub (a dataset) or train and dev (files), not both")
    if not is_hub and HUB_KEYS & set(raw):
        raise _fail(path, f"{sorted(HUB_KEYS & set(raw))} go with hub: <dataset>")
    wanted = [*about.text, raw["label"]]
    files: dict[str, Path] = {}
    hub = None
    if is_hub:
        hub = (str(raw["hub"]), raw.get("hub_config"), str(raw.get("train_split", "train")),
               str(raw.get("dev_split", "validation")))
        columns, class_names, fingerprints = {}, None, []
        for split, split_name in (("train", hub[2]), ("dev", hub[3])):
            columns[split], names, fingerprint = _read_hub_columns(hub, split_name, wanted, split, path)
            class_names, fingerprints = class_names or names, [*fingerprints, fingerprint]
        checksum = _checksum([path], extra=fingerprints)
    else:
        for split in ("train", "dev"):
            data = (path.parent / str(raw[split])).resolve()
            if data.suffix.lower() not in FORMATS:
                raise _fail(path, f"{split} file {data.name}: use .csv, .tsv, .json/.jsonl (JSON Lines) or .parquet")
            if not data.is_file():
                raise _fail(path, f"{split} file {data} does not exist")
            files[split] = data
        columns = {split: _read_columns(files[split], wanted, split, path) for split in files}
        class_names, checksum = None, _checksum([path, files["train"], files["dev"]])
    where = TaskFiles(path.resolve(), files.get("train"), files.get("dev"), about.text, raw["label"], checksum, hub)
    label_names = about.labels
    if label_names is None or label_names:  # classification: the names checked against train
        train_labels = [str(v) for v in columns["train"][raw["label"]]]
        label_names = label_names or class_names or tuple(sorted(set(train_labels)))
        if len(label_names) < 2:
            raise _fail(path, f"a classification task needs at least two distinct label names, not {list(label_names)}")
        absent = [n for n in label_names if n not in set(train_labels)]
        if absent:
            raise _fail(path, f"label(s) {absent} never occur in the train {'split' if hub else 'file'} "
                              f"{where.source('train')}: a class the teacher never sees cannot be learned; add "
                              "examples or drop the label")
        if len(label_names) > 2 and set(about.metrics) - {"accuracy"}:
            raise _fail(path, f"f1 and matthews_corr are computed for two classes here; with {len(label_names)} "
                              "use accuracy")
    task = FileTask(about.name, label_names, about.metrics, where)
    splits = {split: check_rows(task, columns[split], task.files.source(split)) for split in ("train", "dev")}
    _warn_duplicates(splits, path)
    _CHECKED[task.files.sha256] = (files_stamp(task.files), splits)  # what read_file_splits gives while unchanged
    return task


_CHECKED: dict[str, tuple[tuple, dict]] = {}  # a task's checksum -> (its files' stamp, its checked splits)


def files_stamp(files: TaskFiles) -> tuple:
    """Size and modification time of the task file and its data files (a hub dataset's: the task file's)."""
    return tuple((p.stat().st_mtime_ns, p.stat().st_size) if p is not None and p.is_file() else None
                 for p in (files.path, files.train, files.dev))


def _read_columns(data: Path, wanted: list[str], split: str, task_file: Path) -> dict[str, list[Any]]:
    """The wanted columns of one data file, read through ``datasets``; every problem is one line."""
    import datasets

    datasets.disable_progress_bars()
    kind = FORMATS[data.suffix.lower()]
    if kind != "parquet":  # a text file with no data rows (a header alone) is an empty split, said as such
        lines = sum(1 for line in data.read_text(errors="replace").splitlines() if line.strip())
        if lines <= (1 if kind == "csv" else 0):
            raise _fail(task_file, f"{split} file {data.name} holds no rows")
    options = {"delimiter": "\t"} if data.suffix.lower() == ".tsv" else {}
    try:
        table = datasets.load_dataset(kind, data_files=str(data), split="train", **options)
    except Exception as error:  # the loaders raise many types; all mean the file cannot be read
        raise _fail(task_file, f"{split} file {data.name} cannot be read as {data.suffix} ({type(error).__name__}: "
                               f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if len(table) == 0:
        raise _fail(task_file, f"{split} file {data.name} holds no rows")
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise _fail(task_file, f"{split} file {data.name} has no column {missing[0]!r} (it has {table.column_names})")
    return {column: list(table[column]) for column in wanted}


def _read_hub_columns(hub: tuple[str, str | None, str, str], split_name: str, wanted: list[str], split: str,
                      task_file: Path) -> tuple[dict[str, list[Any]], tuple[str, ...] | None, str]:
    """The wanted columns of a hub (or local folder) dataset's split, a ClassLabel's names (None when the
    label is not one) and the split's fingerprint; every problem is one line."""
    import datasets

    datasets.disable_progress_bars()
    from kdenv.engine.hub import datasets_offline_if_unreachable, offline_note

    name, config = hub[0], hub[1]
    with datasets_offline_if_unreachable() as offline:
        try:
            table = datasets.load_dataset(name, config, split=split_name)
        except Exception as error:  # offline, unknown dataset/config/split: the loaders raise many types
            raise _fail(task_file, f"hub dataset {name!r}{f' config {config!r}' if config else ''} split {split_name!r} "
                                   f"cannot be loaded{offline_note(offline)} ({type(error).__name__}: "
                                   f"{str(error).splitlines()[0] if str(error) else ''}); "
                                   f"without hub access, export it to files and name them as train and dev") from None
    if len(table) == 0:
        raise _fail(task_file, f"{split} split {split_name!r} of {name!r} holds no rows")
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise _fail(task_file, f"{split} split {split_name!r} of {name!r} has no column {missing[0]!r} "
                               f"(it has {table.column_names})")
    feature = table.features[wanted[-1]]
    names = tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    columns = {column: list(table[column]) for column in wanted}
    if names is not None:  # label ids as their names, which check_rows checks against the listed ones
        columns[wanted[-1]] = [names[i] if isinstance(i, int) and 0 <= i < len(names) else i
                               for i in columns[wanted[-1]]]
    return columns, names, table._fingerprint


def check_rows(task: FileTask, columns: dict[str, list[Any]], source: str
               ) -> tuple[list[str], list[str] | None, np.ndarray]:
    """One split's texts and label ids (text_a, text_b or None, labels), each row checked: texts are
    text, labels are listed names (or finite numbers for regression), no label is missing."""
    files, regression = task.files, not task.label_names
    for column in files.text:
        for row, value in enumerate(columns[column]):
            if not isinstance(value, str):
                raise _fail(files.path, f"{source} row {row + 1}: column {column!r} holds {value!r}, not text")
    labels = []
    for row, value in enumerate(columns[files.label]):
        if value is None or (isinstance(value, float) and math.isnan(value) and not regression):
            raise _fail(files.path, f"{source} row {row + 1}: no label in column {files.label!r} (every train and "
                                    "dev row needs one: dev scores the teacher and the students)")
        if regression:
            try:
                score = float(value)
            except (TypeError, ValueError):
                score = float("nan")
            if not math.isfinite(score):
                raise _fail(files.path, f"{source} row {row + 1}: label {value!r} is not a finite number")
            labels.append(score)
        else:
            name = str(value)
            if name not in task.label_names:
                raise _fail(files.path, f"{source} row {row + 1}: label {name!r} is not one of "
                                        f"{list(task.label_names)}")
            labels.append(task.label_names.index(name))
    text_b = list(columns[files.text[1]]) if len(files.text) == 2 else None
    return (list(columns[files.text[0]]), text_b,
            np.asarray(labels, dtype=np.float32 if regression else np.int64))


def _warn_duplicates(splits: dict[str, Any], path: Path) -> None:
    def rows(split):
        text_a, text_b, _ = split
        return set(zip(text_a, text_b or [None] * len(text_a)))

    shared = rows(splits["train"]) & rows(splits["dev"])
    if shared:
        warnings.warn(f"{path}: {len(shared)} dev row(s) also appear in train (e.g. {next(iter(shared))[0][:60]!r}); "
                      "dev scores will be optimistic", stacklevel=3)


def read_file_splits(task: FileTask) -> dict[str, tuple[list[str], list[str] | None, np.ndarray]]:
    """The train and dev splits of a file task, as (text_a, text_b or None, labels): those read when the task
    file was checked, while no file has changed since; read again otherwise (an edited file is seen)."""
    files, wanted = task.files, [*task.files.text, task.files.label]
    checked = _CHECKED.get(files.sha256)
    if checked is not None and checked[0] == files_stamp(files):  # read and checked here, unchanged since
        return {split: (list(a), None if b is None else list(b), labels.copy())
                for split, (a, b, labels) in checked[1].items()}  # copies: the cache stays as read
    if files.hub is not None:
        return {split: check_rows(task, _read_hub_columns(files.hub, split_name, wanted, split, files.path)[0],
                                  files.source(split))
                for split, split_name in (("train", files.hub[2]), ("dev", files.hub[3]))}
    return {split: check_rows(task, _read_columns(data, wanted, split, files.path), files.source(split))
            for split, data in (("train", files.train), ("dev", files.dev))}
