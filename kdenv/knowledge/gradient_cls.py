"""GKD-CLS: besides the embedding gradient, align at the mapped layers the [CLS] hidden state
(PKD's normalised distance) and the gradient w.r.t. the [CLS] hidden state.

By default the student's last layer is left out of the map, as in the paper (teacher layers
2, 4, …, 10 to student layers 1 … 5): the logits already cover the top."""

from __future__ import annotations

import torch

from kdenv.knowledge.base import (
    KnowledgeType,
    StepContext,
    StudentNeeds,
    normalized_gradient_loss,
    register,
)
from kdenv.knowledge.gradient import require_same_hidden_size
from kdenv.knowledge.hidden import unit_cls_error


@register("gradient_cls")
class ClsGradients(KnowledgeType):
    option_names = ("include_last_layer",)

    def __init__(self, setup):
        super().__init__(setup)
        require_same_hidden_size(setup, "gradient_cls")
        last = setup.student_config.num_hidden_layers
        keep_last = bool(setup.options.get("include_last_layer", False))
        self.pairs = [(s, t) for s, t in setup.layer_map if s > 0 and (keep_last or s < last)]

    def teacher_keys(self) -> set[str]:
        keys = {"grad.embedding"}
        for _, t in self.pairs:
            keys |= {f"cls.{t}", f"grad.cls.{t}"}
        return keys

    def student_needs(self) -> StudentNeeds:
        return StudentNeeds(hidden_states=True, embedding_gradient=True,
                            cls_gradient_layers=frozenset(s for s, _ in self.pairs))

    def forward(self, step: StepContext) -> torch.Tensor:
        gradients = step.student_gradients()
        loss = normalized_gradient_loss(gradients["grad.embedding"], step.teacher["grad.embedding"], step.mask)
        for student_layer, teacher_layer in self.pairs:
            loss = loss + unit_cls_error(step.student_hidden[student_layer][:, 0], step.teacher[f"cls.{teacher_layer}"])
            student_grad = gradients[f"grad.cls.{student_layer}"][:, None]
            teacher_grad = step.teacher[f"grad.cls.{teacher_layer}"][:, None]
            ones = torch.ones(student_grad.shape[0], 1, 1, device=student_grad.device)
            loss = loss + normalized_gradient_loss(student_grad, teacher_grad, ones)
        return loss
