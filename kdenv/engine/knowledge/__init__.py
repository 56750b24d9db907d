"""Knowledge types, looked up by name. Importing this package registers every built-in type."""

from __future__ import annotations

import copy
import math
from typing import Any

from torch import nn

from kdenv.engine.knowledge import attention, ce, gradient, gradient_cls, hidden, logits, relation  # noqa: F401 (registration)
from kdenv.engine.knowledge.base import (
    KNOWLEDGE_TYPES,
    KnowledgeError,
    KnowledgeSetup,
    KnowledgeType,
    StepContext,
    StudentNeeds,
    default_layer_map,
    register,
    teacher_outputs,
)
from kdenv.engine.models import attention_implementation

__all__ = [
    "KNOWLEDGE_TYPES", "KnowledgeError", "KnowledgeSetup", "KnowledgeType", "StepContext", "StudentNeeds",
    "build_knowledge", "build_knowledge_modules", "default_layer_map", "register", "teacher_outputs", "validate_weights",
]


def build_knowledge(name: str, setup: KnowledgeSetup) -> KnowledgeType:
    if name not in KNOWLEDGE_TYPES:
        raise KnowledgeError(f"unknown knowledge type {name!r}; registered: {', '.join(sorted(KNOWLEDGE_TYPES))}")
    return KNOWLEDGE_TYPES[name](setup)


def validate_weights(weights: dict[str, float], available: set[str] | list[str]) -> dict[str, float]:
    """Checks knowledge weights: known names, finite and non-negative values."""
    clean = {}
    for name, weight in weights.items():
        if name not in available:
            raise KnowledgeError(f"knowledge {name!r} is not available here; available: {', '.join(sorted(available))}")
        weight = float(weight)
        if math.isnan(weight) or math.isinf(weight) or weight < 0:
            raise KnowledgeError(f"weight of {name!r} must be a finite number >= 0, got {weight}")
        clean[name] = weight
    return clean


def build_knowledge_modules(
    names: list[str], config, task, student: nn.Module, teacher_config: Any, check_attention: bool = True
) -> dict[str, KnowledgeType]:
    """The knowledge types on offer, built for this student/teacher pair (checks layer maps,
    options, hidden sizes and attention implementations up front)."""
    setup = KnowledgeSetup(
        task=task, student_config=student.config, teacher_config=teacher_config,
        layer_map=[tuple(pair) for pair in config.layer_map] if config.layer_map else None,
        temperature=config.temperature,
    )
    unknown_options = set(config.knowledge_options) - set(names)
    if unknown_options:
        raise KnowledgeError(f"options given for knowledge not on offer: {sorted(unknown_options)}")
    modules = {}
    for name in names:
        type_setup = copy.copy(setup)
        type_setup.options = dict(config.knowledge_options.get(name, {}))
        module = build_knowledge(name, type_setup)
        if check_attention and module.needs_eager_attention and attention_implementation(student) != "eager":
            raise KnowledgeError(
                f"knowledge {name!r} reads attention maps, but the student was loaded with "
                f"{attention_implementation(student)!r} attention; load student and teacher with "
                "attn_implementation='eager'"
            )
        modules[name] = module
    return modules
