"""GKD-CLS: besides the embedding gradient, align at the mapped layers the [CLS] hidden state
(PKD's normalised distance) and the gradient w.r.t. the [CLS] hidden state.

By default the student's last layer is left out of the map, as in the paper (teacher layers
2, 4, …, 10 to student layers 1 … 5): the logits already cover the top.

Options: ``include_last_layer``; ``include_embedding`` (default true: the embedding-gradient term
is part of this type; false leaves it to a separate ``gradient`` term, which is how the paper
weights it, with its own β); ``pkd_reduction``: ``sum`` (default: squared distance of unit [CLS]
vectors summed over hidden units and layers) or ``mean`` (the official code's ``F.mse_loss`` over
[batch, layers, hidden]: the same divided by layers × hidden size)."""

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
from kdenv.engine.knowledge.gradient import require_same_hidden_size
from kdenv.engine.knowledge.hidden import unit_cls_error


@register("gradient_cls")
class ClsGradients(KnowledgeType):
    option_names = ("include_last_layer", "include_embedding", "pkd_reduction")

    def __init__(self, setup):
        super().__init__(setup)
        require_same_hidden_size(setup, "gradient_cls")
        last = setup.student_config.num_hidden_layers
        keep_last = bool(setup.options.get("include_last_layer", False))
        self.pairs = [(s, t) for s, t in setup.layer_map if s > 0 and (keep_last or s < last)]
        self.include_embedding = bool(setup.options.get("include_embedding", True))
        self.pkd_reduction = setup.options.get("pkd_reduction", "sum")
        if self.pkd_reduction not in ("sum", "mean"):
            raise KnowledgeError(f"gradient_cls: pkd_reduction must be 'sum' or 'mean', not {self.pkd_reduction!r}")
        if not self.pairs and not self.include_embedding:
            raise KnowledgeError("gradient_cls has nothing to align: no mapped layer below the student's last, and "
                                 "include_embedding is off")

    def teacher_keys(self) -> set[str]:
        keys = {"grad.embedding"} if self.include_embedding else set()
        for _, t in self.pairs:
            keys |= {f"cls.{t}", f"grad.cls.{t}"}
        return keys

    def student_needs(self) -> StudentNeeds:
        return StudentNeeds(hidden_states=True, embedding_gradient=self.include_embedding,
                            cls_gradient_layers=frozenset(s for s, _ in self.pairs))

    def forward(self, step: StepContext) -> torch.Tensor:
        gradients = step.student_gradients()
        loss = torch.zeros((), device=step.student_logits.device)
        if self.include_embedding:
            loss = normalized_gradient_loss(gradients["grad.embedding"], step.teacher["grad.embedding"], step.mask)
        pkd_scale = 1.0 if self.pkd_reduction == "sum" else 1.0 / (len(self.pairs) * self.setup.student_hidden_size)
        for student_layer, teacher_layer in self.pairs:
            pkd = unit_cls_error(step.student_hidden[student_layer][:, 0], step.teacher[f"cls.{teacher_layer}"])
            loss = loss + pkd_scale * pkd
            student_grad = gradients[f"grad.cls.{student_layer}"][:, None]
            teacher_grad = step.teacher[f"grad.cls.{teacher_layer}"][:, None]
            ones = torch.ones(student_grad.shape[0], 1, 1, device=student_grad.device)
            loss = loss + normalized_gradient_loss(student_grad, teacher_grad, ones)
        return loss
