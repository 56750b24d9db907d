"""Knowledge types, looked up by name. Importing this package registers every built-in type."""

from __future__ import annotations

import math

from kdenv.knowledge import attention, ce, gradient, gradient_cls, hidden, logits, relation  # noqa: F401 (registration)
from kdenv.knowledge.base import (
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

__all__ = [
    "KNOWLEDGE_TYPES", "KnowledgeError", "KnowledgeSetup", "KnowledgeType", "StepContext", "StudentNeeds",
    "build_knowledge", "default_layer_map", "register", "teacher_outputs", "validate_weights",
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
