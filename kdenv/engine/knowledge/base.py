"""The knowledge-type interface, the registry, and the forward passes every type shares.

A knowledge type is a small ``nn.Module`` (it may own parameters, e.g. a projection) that says
which teacher outputs it needs (:meth:`KnowledgeType.teacher_keys`) and what the student's forward
pass must return, and turns a :class:`StepContext` into one scalar loss. The trainer knows nothing
else about it.

Teacher outputs are named by string keys, the same for the online teacher and the cache:
``logits`` [B, C]; ``hidden.{l}`` [B, L, H]; ``cls.{l}`` [B, H]; ``attention.{l}`` [B, heads, L, L];
``grad.embedding`` [B, L, H]; ``grad.cls.{l}`` [B, H]. Layers ``l`` index ``hidden_states`` (0 is the
embedding block's output, ``l`` the output of layer ``l``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from kdenv.engine.data import model_inputs
from kdenv.engine.tasks import TaskSpec
from kdenv.errors import KdenvError

KNOWLEDGE_TYPES: dict[str, type[KnowledgeType]] = {}


class KnowledgeError(KdenvError, ValueError):
    """A knowledge configuration that cannot work; the message says how to fix it."""


def register(name: str) -> Callable[[type[KnowledgeType]], type[KnowledgeType]]:
    """Adds a knowledge type to the registry under ``name``."""

    def add(cls: type[KnowledgeType]) -> type[KnowledgeType]:
        if name in KNOWLEDGE_TYPES:
            raise KnowledgeError(f"knowledge type {name!r} registered twice")
        cls.name = name
        KNOWLEDGE_TYPES[name] = cls
        return cls

    return add


def default_layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs, 1-based: student layer s takes teacher layer s·T/S
    (3 of 6: 1↔2, 2↔4, 3↔6), which matches a student built from evenly spaced teacher layers."""
    return [(s, round(s * teacher_layers / student_layers)) for s in range(1, student_layers + 1)]


@dataclass
class KnowledgeSetup:
    """What a knowledge type may know when it is built."""

    task: TaskSpec
    student_config: Any  # transformers PretrainedConfig
    teacher_config: Any
    layer_map: list[tuple[int, int]] | None = None  # None: default_layer_map
    temperature: float = 5.0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        student_layers = self.student_config.num_hidden_layers
        teacher_layers = self.teacher_config.num_hidden_layers
        if self.layer_map is None:
            self.layer_map = default_layer_map(student_layers, teacher_layers)
        for student_layer, teacher_layer in self.layer_map:
            if not (0 <= student_layer <= student_layers and 0 <= teacher_layer <= teacher_layers):
                raise KnowledgeError(
                    f"layer map pair ({student_layer}, {teacher_layer}) out of range: the student has layers "
                    f"0..{student_layers}, the teacher 0..{teacher_layers} (0 is the embedding output)"
                )

    @property
    def student_hidden_size(self) -> int:
        return self.student_config.hidden_size

    @property
    def teacher_hidden_size(self) -> int:
        return self.teacher_config.hidden_size


@dataclass(frozen=True)
class StudentNeeds:
    """What the student's training forward pass (and its dropout-off gradient pass) must provide."""

    hidden_states: bool = False
    attentions: bool = False
    embedding_gradient: bool = False
    cls_gradient_layers: frozenset[int] = frozenset()

    def __or__(self, other: StudentNeeds) -> StudentNeeds:
        return StudentNeeds(
            self.hidden_states or other.hidden_states,
            self.attentions or other.attentions,
            self.embedding_gradient or other.embedding_gradient,
            self.cls_gradient_layers | other.cls_gradient_layers,
        )


class KnowledgeType(nn.Module):
    """Base class: a named loss between student and teacher."""

    name: ClassVar[str] = ""
    needs_eager_attention: ClassVar[bool] = False
    option_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, setup: KnowledgeSetup):
        super().__init__()
        unknown = set(setup.options) - set(self.option_names)
        if unknown:
            raise KnowledgeError(f"{self.name}: unknown options {sorted(unknown)}; known: {list(self.option_names)}")
        self.setup = setup

    def teacher_keys(self) -> set[str]:
        """Teacher outputs this type reads (see the module docstring for the names)."""
        return set()

    def student_needs(self) -> StudentNeeds:
        return StudentNeeds()

    def forward(self, step: StepContext) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------- shared forward passes


def full_precision(tensor: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors (from autocast) upcast to float32; float32/float64 kept as they are."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def token_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L, 1] float mask of real (non-padding) tokens."""
    return attention_mask.unsqueeze(-1).float()


def confidence(task: TaskSpec, logits: torch.Tensor) -> torch.Tensor:
    """GKD's per-example confidence: the largest softmax probability (the predicted class's).
    For regression there is no distribution, so the predicted score itself stands in."""
    logits = full_precision(logits)
    if task.is_regression:
        return logits.squeeze(-1)
    return logits.softmax(-1).max(-1).values


def encoder_of(model: nn.Module) -> nn.Module:
    """The base transformer inside a ``*ForSequenceClassification`` model."""
    return getattr(model, model.base_model_prefix)


def confidence_gradients(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    task: TaskSpec,
    embedding: bool,
    cls_layers: frozenset[int] | set[int],
    create_graph: bool,
) -> dict[str, torch.Tensor]:
    """Gradients of the summed confidence w.r.t. the embedding-block output ([B, L, H]) and the
    [CLS] hidden state at ``cls_layers`` ([B, H]), with the model as it is (caller sets eval mode).

    With ``create_graph`` the gradients are themselves differentiable (GKD's double backward), so a
    loss on them trains the model. Examples are independent, so each row is that example's own
    gradient.
    """
    captured: dict[str, torch.Tensor] = {}

    def make_differentiable(_module, _inputs, output):
        # Frozen embeddings give an output outside the graph; a leaf that requires grad joins it.
        if not output.requires_grad:
            output = output.detach().requires_grad_(True)
        captured["embedding"] = output
        return output

    handle = encoder_of(model).embeddings.register_forward_hook(make_differentiable)
    try:
        with torch.enable_grad():
            outputs = model(
                **model_inputs(model, batch),
                output_hidden_states=bool(cls_layers),
            )
            targets, names = [], []
            if embedding:
                targets.append(captured["embedding"])
                names.append("grad.embedding")
            for layer in sorted(cls_layers):
                targets.append(outputs.hidden_states[layer])
                names.append(f"grad.cls.{layer}")
            total = confidence(task, outputs.logits).sum()
            grads = torch.autograd.grad(total, targets, create_graph=create_graph)
    finally:
        handle.remove()
    result = {}
    for name, grad in zip(names, grads):
        result[name] = grad[:, 0] if name.startswith("grad.cls.") else grad
    return result


def parse_teacher_keys(keys: set[str]) -> dict[str, Any]:
    """Groups teacher keys into what one teacher pass must produce."""
    plan = {"logits": False, "hidden": set(), "cls": set(), "attention": set(), "grad_embedding": False, "grad_cls": set()}
    for key in keys:
        if key == "logits":
            plan["logits"] = True
        elif key == "grad.embedding":
            plan["grad_embedding"] = True
        elif match := re.fullmatch(r"(hidden|cls|attention)\.(\d+)", key):
            plan[match.group(1)].add(int(match.group(2)))
        elif match := re.fullmatch(r"grad\.cls\.(\d+)", key):
            plan["grad_cls"].add(int(match.group(1)))
        else:
            raise KnowledgeError(f"unknown teacher output {key!r}")
    return plan


def teacher_outputs(
    teacher: nn.Module, batch: dict[str, torch.Tensor], task: TaskSpec, keys: set[str]
) -> dict[str, torch.Tensor]:
    """Runs the (frozen, eval-mode) teacher once and returns the requested outputs, detached."""
    plan = parse_teacher_keys(keys)
    result: dict[str, torch.Tensor] = {}
    needs_forward = plan["logits"] or plan["hidden"] or plan["cls"] or plan["attention"]
    if needs_forward:
        with torch.no_grad():
            outputs = teacher(
                **model_inputs(teacher, batch),
                output_hidden_states=bool(plan["hidden"] or plan["cls"]),
                output_attentions=bool(plan["attention"]),
            )
        if plan["logits"]:
            result["logits"] = full_precision(outputs.logits)
        for layer in plan["hidden"]:
            result[f"hidden.{layer}"] = full_precision(outputs.hidden_states[layer])
        for layer in plan["cls"]:
            result[f"cls.{layer}"] = full_precision(outputs.hidden_states[layer][:, 0])
        for layer in plan["attention"]:
            result[f"attention.{layer}"] = full_precision(outputs.attentions[layer - 1])
    if plan["grad_embedding"] or plan["grad_cls"]:
        grads = confidence_gradients(teacher, batch, task, plan["grad_embedding"], plan["grad_cls"], create_graph=False)
        result.update({name: full_precision(grad.detach()) for name, grad in grads.items()})
    # Padding positions are zeroed, exactly as the cache (which stores real tokens only) returns them.
    mask = batch["attention_mask"].to(next(iter(result.values())).dtype) if result else None
    for name, value in result.items():
        if name.startswith("hidden.") or name == "grad.embedding":
            result[name] = value * mask[:, :, None]
        elif name.startswith("attention."):
            result[name] = value * (mask[:, None, :, None] * mask[:, None, None, :])
    return result


@dataclass
class StepContext:
    """One update's inputs to every active knowledge type."""

    task: TaskSpec
    batch: dict[str, torch.Tensor]
    student: nn.Module
    student_logits: torch.Tensor
    student_hidden: tuple[torch.Tensor, ...] | None
    student_attentions: tuple[torch.Tensor, ...] | None
    teacher: dict[str, torch.Tensor]
    gradient_needs: StudentNeeds = field(default_factory=StudentNeeds)
    autocast: Callable[[], Any] | None = None
    _student_gradients: dict[str, torch.Tensor] | None = None

    @property
    def mask(self) -> torch.Tensor:
        return token_mask(self.batch["attention_mask"])

    def student_gradients(self) -> dict[str, torch.Tensor]:
        """The student's confidence gradients from a dropout-off pass ("unbiased", as in GKD), with
        ``create_graph=True``; computed once per update for every gradient type that asks."""
        if self._student_gradients is None:
            was_training = self.student.training
            self.student.eval()
            try:
                context = self.autocast() if self.autocast is not None else contextlib.nullcontext()
                # Fused SDPA kernels (flash, memory-efficient) have no double backward; the math
                # kernel does, and matches eager attention.
                with context, sdpa_kernel(SDPBackend.MATH):
                    self._student_gradients = confidence_gradients(
                        self.student, self.batch, self.task, self.gradient_needs.embedding_gradient,
                        self.gradient_needs.cls_gradient_layers, create_graph=True,
                    )
            finally:
                self.student.train(was_training)
        return self._student_gradients


def normalized_gradient_loss(student_grad: torch.Tensor, teacher_grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GKD's gradient alignment: each token's gradient L2-normalised over the hidden axis, squared
    error summed over tokens and hidden units, divided by the number of non-padding tokens."""
    eps = 1e-12
    student_grad, teacher_grad = full_precision(student_grad), full_precision(teacher_grad)
    student_unit = student_grad / student_grad.norm(dim=-1, keepdim=True).clamp_min(eps)
    teacher_unit = teacher_grad / teacher_grad.norm(dim=-1, keepdim=True).clamp_min(eps)
    squared = ((student_unit - teacher_unit) ** 2 * mask).sum()
    return squared / mask.sum().clamp_min(1.0)
