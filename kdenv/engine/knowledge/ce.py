"""Fine-tune knowledge: the hard labels (cross-entropy; MSE for regression)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdenv.engine.knowledge.base import KnowledgeType, StepContext, register
from kdenv.engine.tasks import TaskSpec


def task_loss(task: TaskSpec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hard-label loss: cross-entropy, or MSE on the single output for regression (STS-B)."""
    if task.is_regression:
        return F.mse_loss(logits.float().squeeze(-1), labels.float())
    return F.cross_entropy(logits.float(), labels)


@register("ce")
class HardLabels(KnowledgeType):
    def forward(self, step: StepContext) -> torch.Tensor:
        return task_loss(step.task, step.student_logits, step.batch["labels"])
