"""Scoring a finished distillation on GLUE dev: the task metric and the teacher–student
consistency metrics (label, probability and saliency loyalty)."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from kdenv.engine.inference import predict, token_saliency
from kdenv.engine.metrics import label_loyalty, probability_loyalty, saliency_loyalty, task_metrics
from kdenv.engine.trainer import StudentTrainer


class DevScorer:
    """Holds the teacher's dev outputs and saliency (computed once) and scores students against them."""

    def __init__(self, teacher: nn.Module, trainer: StudentTrainer, split: str = "dev"):
        self.split, self.task, self.runtime = split, trainer.task, trainer.runtime
        data = trainer.data
        self.data = data[split]
        self.pad_token_id = data.pad_token_id
        teacher = teacher.to(self.runtime.device)
        # The trainer holds the teacher's logits for every evaluation split (from the teacher cache).
        self.teacher_logits = trainer.eval_teacher_logits.get(split)
        if self.teacher_logits is None:
            self.teacher_logits = predict(teacher, self.data, self.pad_token_id, self.runtime)
        self.teacher_saliency = token_saliency(teacher, self.data, self.task, self.pad_token_id, self.runtime)
        self.teacher_metrics = task_metrics(self.task, self.teacher_logits, self.data.labels)

    def score(self, student: nn.Module) -> dict[str, Any]:
        student_logits = predict(student, self.data, self.pad_token_id, self.runtime)
        metrics = task_metrics(self.task, student_logits, self.data.labels)
        result: dict[str, Any] = {"metrics": metrics}
        if not self.task.is_regression:
            result["label_loyalty"] = label_loyalty(self.teacher_logits, student_logits)
            result["probability_loyalty"] = probability_loyalty(self.teacher_logits, student_logits)
        else:
            # No label or distribution to compare for a single score; agreement is the correlation.
            result["label_loyalty"] = float(np.corrcoef(self.teacher_logits[:, 0], student_logits[:, 0])[0, 1])
            result["probability_loyalty"] = float("nan")
        student_saliency = token_saliency(student, self.data, self.task, self.pad_token_id, self.runtime)
        result["saliency_loyalty"] = saliency_loyalty(self.teacher_saliency, student_saliency)
        return result
