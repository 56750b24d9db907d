"""The GLUE task table: one place that says how each task is read, labelled and scored."""

from __future__ import annotations

import math
from dataclasses import dataclass


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


# Label order follows the hub's `nyu-mll/glue` ClassLabel features, so both sources agree on ids.
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec(
            name="cola",
            hub_config="cola",
            hub_text_fields=("sentence",),
            label_names=("unacceptable", "acceptable"),
            metrics=("matthews_corr", "accuracy"),
            local=LocalLayout("CoLA", has_header=False, text_a=3, text_b=None, label=1),
        ),
        TaskSpec(
            name="sst2",
            hub_config="sst2",
            hub_text_fields=("sentence",),
            label_names=("negative", "positive"),
            metrics=("accuracy",),
            local=LocalLayout("SST-2", has_header=True, text_a="sentence", text_b=None, label="label"),
        ),
        TaskSpec(
            name="mrpc",
            hub_config="mrpc",
            hub_text_fields=("sentence1", "sentence2"),
            label_names=("not_equivalent", "equivalent"),
            metrics=("f1", "accuracy"),
            local=LocalLayout(
                "MRPC", has_header=True, text_a="#1 String", text_b="#2 String", label="Quality"
            ),
        ),
        TaskSpec(
            name="stsb",
            hub_config="stsb",
            hub_text_fields=("sentence1", "sentence2"),
            label_names=(),
            metrics=("pearson", "spearman"),
            local=LocalLayout(
                "STS-B", has_header=True, text_a="sentence1", text_b="sentence2", label="score"
            ),
        ),
        TaskSpec(
            name="qqp",
            hub_config="qqp",
            hub_text_fields=("question1", "question2"),
            label_names=("not_duplicate", "duplicate"),
            metrics=("accuracy", "f1"),
            local=LocalLayout(
                "QQP", has_header=True, text_a="question1", text_b="question2", label="is_duplicate"
            ),
        ),
        TaskSpec(
            name="mnli",
            hub_config="mnli",
            hub_text_fields=("premise", "hypothesis"),
            label_names=("entailment", "neutral", "contradiction"),
            # The mismatched dev set is loaded as the extra split ``dev_mismatched``.
            metrics=("accuracy",),
            local=LocalLayout(
                "MNLI",
                has_header=True,
                text_a="sentence1",
                text_b="sentence2",
                label="gold_label",
                dev_files=("dev_matched.tsv", "dev_mismatched.tsv"),
            ),
            hub_dev_splits=("validation_matched", "validation_mismatched"),
        ),
        TaskSpec(
            name="qnli",
            hub_config="qnli",
            hub_text_fields=("question", "sentence"),
            label_names=("entailment", "not_entailment"),
            metrics=("accuracy",),
            local=LocalLayout("QNLI", has_header=True, text_a="question", text_b="sentence", label="label"),
        ),
        TaskSpec(
            name="rte",
            hub_config="rte",
            hub_text_fields=("sentence1", "sentence2"),
            label_names=("entailment", "not_entailment"),
            metrics=("accuracy",),
            local=LocalLayout("RTE", has_header=True, text_a="sentence1", text_b="sentence2", label="label"),
        ),
        TaskSpec(
            name="wnli",
            hub_config="wnli",
            hub_text_fields=("sentence1", "sentence2"),
            label_names=("not_entailment", "entailment"),
            metrics=("accuracy",),
            local=LocalLayout("WNLI", has_header=True, text_a="sentence1", text_b="sentence2", label="label"),
        ),
    ]
}

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli"}


def get_task(name: str) -> TaskSpec:
    """Looks a task up by name, case-insensitively (``RTE``, ``sst-2`` and ``sst2`` all work)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise ValueError(
            f"unknown GLUE task {name!r}; choose one of: {', '.join(sorted(TASKS))}"
        )
    return TASKS[key]
