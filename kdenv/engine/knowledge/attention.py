"""Attention knowledge: attention-map MSE over the layer map (needs eager attention on both models)."""

from __future__ import annotations

import torch

from kdenv.engine.knowledge.base import KnowledgeType, StepContext, StudentNeeds, full_precision, register


@register("attention")
class AttentionMaps(KnowledgeType):
    needs_eager_attention = True

    def __init__(self, setup):
        super().__init__(setup)
        # Embeddings (layer 0) have no attention map.
        self.pairs = [(s, t) for s, t in setup.layer_map if s > 0 and t > 0]

    def teacher_keys(self) -> set[str]:
        return {f"attention.{t}" for _, t in self.pairs}

    def student_needs(self) -> StudentNeeds:
        return StudentNeeds(attentions=True)

    def forward(self, step: StepContext) -> torch.Tensor:
        token = step.batch["attention_mask"].float()
        pair_mask = (token[:, :, None] * token[:, None, :]).unsqueeze(1)  # [B, 1, L, L]
        losses = []
        for student_layer, teacher_layer in self.pairs:
            student_map = full_precision(step.student_attentions[student_layer - 1])
            teacher_map = step.teacher[f"attention.{teacher_layer}"]
            if student_map.shape[1] != teacher_map.shape[1]:
                # Different head counts: compare the head-averaged maps.
                student_map, teacher_map = student_map.mean(1, keepdim=True), teacher_map.mean(1, keepdim=True)
            squared = ((student_map - teacher_map) ** 2 * pair_mask).sum()
            losses.append(squared / (pair_mask.sum() * student_map.shape[1]))
        return torch.stack(losses).mean()
