"""Feature knowledge: hidden states over a layer map, MSE, through a learned projection when the
student's hidden size differs from the teacher's. ``cls_only`` gives PKD's variant: L2-normalised
[CLS] vectors, squared error."""

from __future__ import annotations

import torch
from torch import nn

from kdenv.engine.knowledge.base import KnowledgeType, StepContext, full_precision, register


def make_projections(setup, layers: list[int]) -> nn.ModuleDict | None:
    """One learned linear map per student layer, student size → teacher size; None when equal."""
    if setup.student_hidden_size == setup.teacher_hidden_size:
        return None
    return nn.ModuleDict({
        str(layer): nn.Linear(setup.student_hidden_size, setup.teacher_hidden_size) for layer in layers
    })


def project(projections: nn.ModuleDict | None, layer: int, hidden: torch.Tensor) -> torch.Tensor:
    return hidden if projections is None else projections[str(layer)](hidden)


def unit_cls_error(student_cls: torch.Tensor, teacher_cls: torch.Tensor) -> torch.Tensor:
    """PKD's normalised [CLS] distance: ‖s/‖s‖ − t/‖t‖‖², averaged over the batch."""
    student_unit = nn.functional.normalize(full_precision(student_cls), dim=-1)
    teacher_unit = nn.functional.normalize(full_precision(teacher_cls), dim=-1)
    return ((student_unit - teacher_unit) ** 2).sum(-1).mean()


@register("hidden")
class HiddenStates(KnowledgeType):
    option_names = ("cls_only",)

    def __init__(self, setup):
        super().__init__(setup)
        self.cls_only = bool(setup.options.get("cls_only", False))
        self.projections = make_projections(setup, [s for s, _ in setup.layer_map])

    def teacher_keys(self) -> set[str]:
        prefix = "cls" if self.cls_only else "hidden"
        return {f"{prefix}.{t}" for _, t in self.setup.layer_map}

    def student_needs(self):
        from kdenv.engine.knowledge.base import StudentNeeds

        return StudentNeeds(hidden_states=True)

    def forward(self, step: StepContext) -> torch.Tensor:
        losses = []
        mask = step.mask
        for student_layer, teacher_layer in self.setup.layer_map:
            student_hidden = project(self.projections, student_layer, full_precision(step.student_hidden[student_layer]))
            if self.cls_only:
                losses.append(unit_cls_error(student_hidden[:, 0], step.teacher[f"cls.{teacher_layer}"]))
            else:
                teacher_hidden = step.teacher[f"hidden.{teacher_layer}"]
                squared = ((student_hidden - teacher_hidden) ** 2 * mask).sum()
                losses.append(squared / (mask.sum() * teacher_hidden.shape[-1]))
        return torch.stack(losses).mean()


@register("hidden_cls")
class ClsHiddenStates(HiddenStates):
    """PKD's knowledge as its own type: normalised [CLS] states at the mapped layers."""

    option_names = ()

    def __init__(self, setup):
        super().__init__(setup)
        self.cls_only = True
