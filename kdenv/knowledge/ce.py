"""Fine-tune knowledge: the hard labels (cross-entropy; MSE for regression)."""

from __future__ import annotations

import torch

from kdenv.knowledge.base import KnowledgeType, StepContext, register
from kdenv.training import task_loss


@register("ce")
class HardLabels(KnowledgeType):
    def forward(self, step: StepContext) -> torch.Tensor:
        return task_loss(step.task, step.student_logits, step.batch["labels"])
