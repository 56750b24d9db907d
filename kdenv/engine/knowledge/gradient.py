"""Gradient knowledge (GKD): align the student's input gradient with the teacher's.

The gradient is that of the summed max-softmax confidence w.r.t. the embedding-block output. The
teacher's is a constant (eval mode, detached, cacheable); the student's comes from a dropout-off
pass with ``create_graph=True``, so the alignment loss trains the student (double backward)."""

from __future__ import annotations

import torch

from kdenv.engine.knowledge.base import (
    KnowledgeError,
    KnowledgeType,
    StepContext,
    StudentNeeds,
    normalized_gradient_loss,
    register,
)


def require_same_hidden_size(setup, name: str) -> None:
    if setup.student_hidden_size != setup.teacher_hidden_size:
        raise KnowledgeError(
            f"{name} compares gradients w.r.t. hidden vectors, so student and teacher need the same hidden "
            f"size ({setup.student_hidden_size} vs {setup.teacher_hidden_size}); leave {name} out of --knowledge, choose "
            f"a student of hidden size {setup.teacher_hidden_size}, or build the student from the teacher's layers "
            f"(no --student-model)"
        )


@register("gradient")
class InputGradients(KnowledgeType):
    def __init__(self, setup):
        super().__init__(setup)
        require_same_hidden_size(setup, "gradient")

    def teacher_keys(self) -> set[str]:
        return {"grad.embedding"}

    def student_needs(self) -> StudentNeeds:
        return StudentNeeds(embedding_gradient=True)

    def forward(self, step: StepContext) -> torch.Tensor:
        student_grad = step.student_gradients()["grad.embedding"]
        return normalized_gradient_loss(student_grad, step.teacher["grad.embedding"], step.mask)
