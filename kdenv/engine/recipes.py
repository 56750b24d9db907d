"""The papers' distillation recipes by name, and parsing of ``--knowledge`` specifications.

Two families:

- ``kd``, ``pkd``, ``gkd``, ``gkd-cls``: kdenv's own versions, defined on *normalised* loss terms
  (each divided by a running mean of its magnitude, see ``LossNormalizer``), so that weights are
  comparable shares of the update and an agent can switch terms on and off. They change no
  training setting.
- ``gkd-paper``, ``gkd-cls-paper``: the official GKD objective and training recipe, exactly: raw
  losses, KD's KL averaged over batch *and* classes (``nn.KLDivLoss()``'s default) times T²,
  α = 0.5, T = 5, PKD's [CLS] distance as ``F.mse_loss`` over [batch, layers, hidden], a separate
  weight β for the embedding gradient and γ for the [CLS] terms (both 1 here; the paper tunes them:
  override with ``gkd-paper,gradient=B``), a student initialised from the teacher's *first*
  layers with every dropout at 0 and a fresh pooler and classifier, AdamW at lr 5e-5 without
  weight decay or warmup, batch 32, 4 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kdenv.engine.knowledge import KNOWLEDGE_TYPES, KnowledgeError, validate_weights


@dataclass(frozen=True)
class Recipe:
    weights: dict[str, float]
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)  # DistillConfig fields the recipe sets


# The official code's training setup (GKD, built on the PKD code): see the module docstring.
PAPER_TRAINING: dict[str, Any] = {
    "normalize_losses": False, "temperature": 5.0, "learning_rate": 5e-5, "weight_decay": 0.0, "warmup_ratio": 0.0,
    "batch_size": 32, "distill_epochs": 4.0, "student_init": "first", "student_dropout": 0.0, "fresh_head": True,
}
PAPER_KD_OPTIONS = {"logits": {"reduction": "mean"}}

# Weights of kdenv's own recipes apply to normalised losses (see LossNormalizer), so α = 0.5 splits
# the update evenly between hard labels and soft logits, as KD's α·T²·KL + (1 − α)·CE does at T = 5.
RECIPES: dict[str, Recipe] = {
    "kd": Recipe({"ce": 0.5, "logits": 0.5}, description="vanilla KD (Hinton): T=5, alpha=0.5"),
    "pkd": Recipe({"ce": 0.5, "logits": 0.5, "hidden_cls": 1.0},
                  description="Patient KD: KD plus normalised [CLS] states at the mapped layers"),
    "gkd": Recipe({"ce": 0.5, "logits": 0.5, "gradient": 1.0},
                  description="Gradient KD: KD plus embedding-gradient alignment"),
    "gkd-cls": Recipe({"ce": 0.5, "logits": 0.5, "gradient_cls": 1.0},
                      description="GKD-CLS: KD plus [CLS] state/gradient alignment and embedding gradients"),
    "gkd-paper": Recipe({"ce": 0.5, "logits": 0.5, "gradient": 1.0}, options=PAPER_KD_OPTIONS,
                        training=PAPER_TRAINING,
                        description="GKD exactly as the official code: raw losses, beta=1, its training recipe"),
    "gkd-cls-paper": Recipe(
        {"ce": 0.5, "logits": 0.5, "gradient": 1.0, "gradient_cls": 1.0},
        options={**PAPER_KD_OPTIONS, "gradient_cls": {"include_embedding": False, "pkd_reduction": "mean"}},
        training=PAPER_TRAINING,
        description="GKD-CLS exactly as the official code: raw losses, beta=gamma=1, its training recipe"),
}


def parse_knowledge(spec: str) -> Recipe:
    """Parses ``kd``, ``logits,gradient`` or ``logits=0.5,hidden=1,gradient=1`` (recipes and
    types may be mixed; a bare type gets weight 1; later items override earlier ones). A recipe's
    options and training settings come along with it."""
    weights: dict[str, float] = {}
    options: dict[str, dict[str, Any]] = {}
    training: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if name in RECIPES:
            if sep:
                raise KnowledgeError(
                    f"{name!r} is a recipe and takes no weight ({item!r}); write {name!r} alone, or give the weights "
                    f"of its types instead ({','.join(f'{k}={w:g}' for k, w in RECIPES[name].weights.items())})")
            weights.update(RECIPES[name].weights)
            options.update(RECIPES[name].options)
            training.update(RECIPES[name].training)
            continue
        if name not in KNOWLEDGE_TYPES:
            raise KnowledgeError(
                f"unknown knowledge {name!r}; types: {', '.join(sorted(KNOWLEDGE_TYPES))}; recipes: {', '.join(RECIPES)}"
            )
        try:
            weights[name] = float(value) if sep else 1.0
        except ValueError:
            raise KnowledgeError(f"weight of {name!r} must be a number, got {value!r}") from None
    if not weights:
        raise KnowledgeError("no knowledge given; e.g. --knowledge kd or --knowledge logits=0.5,gradient=1")
    weights = validate_weights(weights, KNOWLEDGE_TYPES)
    if not any(weight > 0 for weight in weights.values()):
        raise KnowledgeError(f"every weight in {spec!r} is 0, so the student would learn nothing; give at least one "
                             "type a positive weight (e.g. ce=1)")
    return Recipe(weights, options, training=training)
