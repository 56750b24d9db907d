"""Relation knowledge: FSP matrices (Yim et al.) between consecutive mapped layers, MSE.

FSP(a, b) = Σ_tokens h_a ⊗ h_b / n_tokens, an H×H matrix describing how one layer's features
relate to the next one's. Layers: the embedding output, then each mapped layer."""

from __future__ import annotations

import torch

from kdenv.engine.knowledge.base import KnowledgeType, StepContext, StudentNeeds, full_precision, register
from kdenv.engine.knowledge.hidden import make_projections, project


def fsp_matrix(first: torch.Tensor, second: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, H, H] flow matrices over the real tokens of each example."""
    count = mask.sum(1, keepdim=True).clamp_min(1.0)  # [B, 1, 1]
    return torch.einsum("bli,blj->bij", first * mask, second) / count


@register("relation")
class FlowRelations(KnowledgeType):
    def __init__(self, setup):
        super().__init__(setup)
        self.layers = [(0, 0)] + [(s, t) for s, t in setup.layer_map if s > 0]
        self.projections = make_projections(setup, [s for s, _ in self.layers])

    def teacher_keys(self) -> set[str]:
        return {f"hidden.{t}" for _, t in self.layers}

    def student_needs(self) -> StudentNeeds:
        return StudentNeeds(hidden_states=True)

    def forward(self, step: StepContext) -> torch.Tensor:
        mask = step.mask
        student = [project(self.projections, s, full_precision(step.student_hidden[s])) for s, _ in self.layers]
        teacher = [step.teacher[f"hidden.{t}"] for _, t in self.layers]
        losses = []
        for i in range(len(self.layers) - 1):
            student_fsp = fsp_matrix(student[i], student[i + 1], mask)
            teacher_fsp = fsp_matrix(teacher[i], teacher[i + 1], mask)
            losses.append(((student_fsp - teacher_fsp) ** 2).mean())
        return torch.stack(losses).mean()
