"""The papers' distillation recipes by name, and parsing of ``--knowledge`` specifications."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kdenv.knowledge import KNOWLEDGE_TYPES, KnowledgeError, validate_weights


@dataclass(frozen=True)
class Recipe:
    weights: dict[str, float]
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""


# Weights apply to normalised losses (see LossNormalizer), so α = 0.5 splits the update evenly
# between hard labels and soft logits, as KD's α·T²·KL + (1 − α)·CE does at T = 5.
PRESETS: dict[str, Recipe] = {
    "kd": Recipe({"ce": 0.5, "logits": 0.5}, description="vanilla KD (Hinton): T=5, alpha=0.5"),
    "pkd": Recipe({"ce": 0.5, "logits": 0.5, "hidden_cls": 1.0},
                  description="Patient KD: KD plus normalised [CLS] states at the mapped layers"),
    "gkd": Recipe({"ce": 0.5, "logits": 0.5, "gradient": 1.0},
                  description="Gradient KD: KD plus embedding-gradient alignment"),
    "gkd-cls": Recipe({"ce": 0.5, "logits": 0.5, "gradient_cls": 1.0},
                      description="GKD-CLS: KD plus [CLS] state/gradient alignment and embedding gradients"),
}


def parse_knowledge(spec: str) -> Recipe:
    """Parses ``kd``, ``logits,gradient`` or ``logits=0.5,hidden=1,gradient=1`` (presets and
    types may be mixed; a bare type gets weight 1; later items override earlier ones)."""
    weights: dict[str, float] = {}
    options: dict[str, dict[str, Any]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = item.partition("=")
        name = name.strip()
        if name in PRESETS and not value:
            weights.update(PRESETS[name].weights)
            options.update(PRESETS[name].options)
            continue
        if name not in KNOWLEDGE_TYPES:
            raise KnowledgeError(
                f"unknown knowledge {name!r}; types: {', '.join(sorted(KNOWLEDGE_TYPES))}; presets: {', '.join(PRESETS)}"
            )
        try:
            weights[name] = float(value) if value else 1.0
        except ValueError:
            raise KnowledgeError(f"weight of {name!r} must be a number, got {value!r}") from None
    if not weights:
        raise KnowledgeError("no knowledge given; e.g. --knowledge kd or --knowledge logits=0.5,gradient=1")
    return Recipe(validate_weights(weights, KNOWLEDGE_TYPES), options)
