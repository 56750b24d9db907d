"""Response knowledge: the teacher's soft outputs, temperature-scaled KL times T² (MSE for regression)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdenv.engine.knowledge.base import KnowledgeError, KnowledgeType, StepContext, full_precision, register

REDUCTIONS = ("batchmean", "mean")


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            reduction: str = "batchmean") -> torch.Tensor:
    """T² · KL(p_teacher^T || p_student^T) (Hinton et al.'s scaling keeps gradient magnitudes
    comparable across temperatures), averaged over the batch (``batchmean``), or over batch and
    classes (``mean``: what ``nn.KLDivLoss()`` does by default, and so the PKD and GKD code)."""
    student_log_probs = F.log_softmax(full_precision(student_logits) / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(full_precision(teacher_logits) / temperature, dim=-1)
    if reduction == "mean":
        # The official code's nn.KLDivLoss() default: the sum over every element divided by
        # batch x classes. Written out, because torch has announced that reduction="mean" will
        # come to mean "batchmean"; this keeps the paper recipe fixed whatever torch does.
        kl = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="sum") / student_log_probs.numel()
    else:
        kl = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction=reduction)
    return kl * temperature**2


@register("logits")
class SoftLogits(KnowledgeType):
    option_names = ("temperature", "reduction")

    def __init__(self, setup):
        super().__init__(setup)
        self.temperature = float(setup.options.get("temperature", setup.temperature))
        self.reduction = setup.options.get("reduction", "batchmean")
        if self.reduction not in REDUCTIONS:
            raise KnowledgeError(f"logits: reduction must be one of {REDUCTIONS}, not {self.reduction!r}")

    def teacher_keys(self) -> set[str]:
        return {"logits"}

    def forward(self, step: StepContext) -> torch.Tensor:
        if step.task.is_regression:
            return F.mse_loss(full_precision(step.student_logits), step.teacher["logits"])
        return soft_kl(step.student_logits, step.teacher["logits"], self.temperature, self.reduction)
