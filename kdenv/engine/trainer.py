"""The phase-wise student trainer: the engine the environment drives.

Each :meth:`StudentTrainer.run_phase` trains the student for N optimiser updates with a given
weight per knowledge type; a type with weight 0 is not computed at all. The trainer also
evaluates on any split, and snapshots / restores its whole state in memory so that an episode
can restart from the same initial student quickly.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from kdenv.config import DistillConfig
from kdenv.engine.data import BatchStream, TaskData, model_inputs, to_device
from kdenv.engine.inference import predict
from kdenv.engine.knowledge import (
    KnowledgeType,
    StepContext,
    StudentNeeds,
    build_knowledge_modules,
    validate_weights,
)
from kdenv.engine.knowledge.ce import task_loss
from kdenv.engine.metrics import task_metrics
from kdenv.engine.optim import linear_warmup_decay, make_optimizer, scaled_backward, scaled_step, step_schedule
from kdenv.engine.runtime import Runtime, seed_everything
from kdenv.engine.teacher_cache import TeacherSource


class LossNormalizer:
    """Divides each knowledge type's loss by a running (exponential) mean of its own magnitude.

    Raw losses differ by orders of magnitude (a KL at T=5 times 25, a normalised gradient error,
    an FSP MSE), so a weight would otherwise mean something different for every type. After
    normalisation each active term is about 1, and weights in [0, 1] are comparable shares.
    The scale is detached: it rescales gradients, it is not itself optimised.
    """

    def __init__(self, momentum: float = 0.9, enabled: bool = True):
        self.momentum, self.enabled = momentum, enabled
        self.scales: dict[str, float] = {}

    def __call__(self, name: str, loss: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return loss
        value = float(loss.detach())
        previous = self.scales.get(name)
        scale = value if previous is None else self.momentum * previous + (1 - self.momentum) * value
        self.scales[name] = scale
        return loss / max(scale, 1e-8)

    def state_dict(self) -> dict[str, Any]:
        return {"scales": dict(self.scales)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scales = dict(state["scales"])


@dataclass
class PhaseStats:
    """What one phase did. ``status`` is ``ok`` or ``non_finite`` (the phase stopped early, the
    student was restored to its state at the start of the phase; ``message`` says which loss)."""

    updates: int
    status: str = "ok"
    message: str = ""
    weights: dict[str, float] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)  # raw loss of each active type, mean over updates
    normalized_losses: dict[str, float] = field(default_factory=dict)
    grad_norms: dict[str, float] = field(default_factory=dict)  # of each weighted term, first update of the phase
    total_loss: float = 0.0
    grad_norm: float = 0.0  # of the whole update before clipping, mean over the updates that stepped
    scaler_skips: int = 0  # fp16 only: updates whose scaled gradients overflowed (skipped, scale lowered)
    learning_rate: float = 0.0
    wall_time_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Snapshot:
    state: dict[str, Any]


class StudentTrainer:
    """Trains a student from teacher knowledge, phase by phase."""

    def __init__(
        self,
        student: nn.Module,
        teacher_source: TeacherSource,
        data: TaskData,
        knowledge: Mapping[str, KnowledgeType] | Sequence[str],
        config: DistillConfig,
        runtime: Runtime,
        total_updates: int | None,
        teacher_config: Any = None,
        eval_teacher_logits: dict[str, np.ndarray] | None = None,
    ):
        """``knowledge``: the knowledge modules built for this student (``build_knowledge_modules``),
        or their names, to be built here (then ``teacher_config`` is needed). ``total_updates`` is
        the length of the learning-rate schedule (None: ``config.distill_epochs`` over the train split)."""
        seed_everything(config.seed)  # projections, dropout and shuffling all follow from the seed
        self.data, self.task, self.config, self.runtime = data, data.task, config, runtime
        self.student = student.to(runtime.device).train()
        self.teacher_source = teacher_source
        self.eval_teacher_logits = eval_teacher_logits or {}
        if not isinstance(knowledge, Mapping):
            if teacher_config is None:
                raise ValueError("building knowledge modules by name needs the teacher's config (teacher_config)")
            knowledge = build_knowledge_modules(list(knowledge), config, self.task, student, teacher_config)
        self.knowledge = dict(knowledge)
        for module in self.knowledge.values():
            module.to(runtime.device)
        if config.freeze_embeddings:
            for parameter in _embeddings(student).parameters():
                parameter.requires_grad_(False)
        extra = [p for module in self.knowledge.values() for p in module.parameters()]
        self.optimizer = make_optimizer(nn.ModuleList([student, *self.knowledge.values()]),
                                        config.learning_rate, config.weight_decay)
        self.trainable = [p for p in student.parameters() if p.requires_grad] + extra
        self.stream = BatchStream(data["train"], data.pad_token_id, config.batch_size, seed=config.seed)
        if total_updates is None:
            total_updates = math.ceil(config.distill_epochs * self.stream.batches_per_epoch)
        self.total_updates = max(1, total_updates)
        warmup = int(config.warmup_ratio * self.total_updates)
        self.scheduler = linear_warmup_decay(self.optimizer, warmup, self.total_updates)
        self.scaler = runtime.grad_scaler()
        self.normalizer = LossNormalizer(config.normalizer_momentum, config.normalize_losses)
        self.updates_done = 0
        self.compute_calls: dict[str, int] = {name: 0 for name in self.knowledge}  # for tests and profiling

    @property
    def learning_rate(self) -> float:
        """The learning rate the next update will use."""
        return self.scheduler.get_last_lr()[0]

    # ------------------------------------------------------------------ training

    def run_phase(
        self,
        weights: dict[str, float],
        num_updates: int,
        on_update: Callable[[int, dict[str, float]], None] | None = None,
    ) -> PhaseStats:
        """Trains for ``num_updates`` optimiser updates with ``weights`` per knowledge type."""
        weights = validate_weights(weights, self.knowledge)
        active = {name: weight for name, weight in weights.items() if weight > 0}
        needs = StudentNeeds()
        teacher_keys: set[str] = set()
        for name in active:
            needs = needs | self.knowledge[name].student_needs()
            teacher_keys |= self.knowledge[name].teacher_keys()
        stats = PhaseStats(updates=0, weights=dict(weights))
        sums: dict[str, float] = {name: 0.0 for name in active}
        normalized_sums: dict[str, float] = {name: 0.0 for name in active}
        start = time.perf_counter()
        start_state = self.snapshot() if self.config.restore_on_non_finite else None
        self.student.train()
        for update in range(num_updates):
            batch = to_device(next(self.stream), self.runtime.device)
            teacher = self.teacher_source.batch_outputs(batch, teacher_keys)
            with self.runtime.autocast():
                outputs = self.student(
                    **model_inputs(self.student, batch),
                    output_hidden_states=needs.hidden_states,
                    output_attentions=needs.attentions,
                )
            step = StepContext(
                task=self.task, batch=batch, student=self.student, student_logits=outputs.logits,
                student_hidden=outputs.hidden_states, student_attentions=outputs.attentions,
                teacher=teacher, gradient_needs=needs, autocast=self.runtime.autocast,
            )
            terms: dict[str, torch.Tensor] = {}
            bad = None
            for name, weight in active.items():
                self.compute_calls[name] += 1
                loss = self.knowledge[name](step).float()
                if not torch.isfinite(loss):
                    bad = f"{name} loss is {float(loss.detach())} at update {update} of the phase"
                    break
                sums[name] += float(loss.detach())
                normalized = self.normalizer(name, loss)
                normalized_sums[name] += float(normalized.detach())
                terms[name] = weight * normalized
            if bad is None and update == 0 and self.config.measure_type_grad_norms and len(terms) > 0:
                stats.grad_norms = self._type_grad_norms(terms)
            total = sum(terms.values()) if terms else None
            if bad is None and total is not None:
                grad_norm = scaled_backward(total, self.optimizer, self.scaler, self.trainable, self.config.max_grad_norm)
                overflow = not torch.isfinite(grad_norm)
                if overflow and not self.scaler.is_enabled():
                    bad = f"gradient norm is {float(grad_norm)} at update {update} of the phase"
                # With fp16 loss scaling an overflow is routine (the scale starts at 2^16 and is
                # searched downwards): scaler.step skips the update and scaler.update lowers the scale.
            if bad is not None:
                stats.status, stats.message = "non_finite", bad
                if start_state is not None:
                    self.restore(start_state)
                break
            if total is not None:
                scaled_step(self.optimizer, self.scaler)
                stats.total_loss += float(total.detach())
                if overflow:
                    stats.scaler_skips += 1
                else:
                    stats.grad_norm += float(grad_norm)
            else:
                # Every weight is zero: nothing to learn from. No parameter has a gradient, so the
                # step changes nothing, but schedule and data position advance as in any update.
                self.optimizer.zero_grad(set_to_none=True)
                self.optimizer.step()
            step_schedule(self.scheduler)
            self.updates_done += 1
            stats.updates += 1
            if on_update is not None:
                on_update(self.updates_done, {name: float(t.detach()) for name, t in terms.items()})
        count = max(stats.updates, 1)
        stats.losses = {name: value / count for name, value in sums.items()}
        stats.normalized_losses = {name: value / count for name, value in normalized_sums.items()}
        stats.total_loss /= count
        stats.grad_norm /= max(stats.updates - stats.scaler_skips, 1)
        stats.learning_rate = self.learning_rate
        stats.wall_time_s = time.perf_counter() - start
        return stats

    def _type_grad_norms(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """Gradient norm of each weighted term over the trainable parameters (one extra backward per type)."""
        norms = {}
        for name, term in terms.items():
            grads = torch.autograd.grad(term, self.trainable, retain_graph=True, allow_unused=True)
            squared = sum(float(g.float().pow(2).sum()) for g in grads if g is not None)
            norms[name] = math.sqrt(squared)
        return norms

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, split: str = "reward", indices: np.ndarray | None = None) -> dict[str, float]:
        """Task metrics, hard-label loss and teacher–student agreement on ``split`` (on its examples
        ``indices`` only, if given: a fixed subsample)."""
        return self.evaluate_with_outputs(split, indices)[0]

    def evaluate_with_outputs(self, split: str = "reward",
                              indices: np.ndarray | None = None) -> tuple[dict[str, float], np.ndarray]:
        """:meth:`evaluate`, and the student's outputs behind it ([examples, num_labels] float32, in
        the split's order, or the order of ``indices``): what a table keeps per example."""
        data = self.data[split] if indices is None else self.data[split].subset(indices)
        outputs = predict(self.student, data, self.data.pad_token_id, self.runtime, self.config.eval_batch_size)
        result = task_metrics(self.task, outputs, data.labels)
        result["loss"] = float(task_loss(self.task, torch.from_numpy(outputs), torch.from_numpy(data.labels)))
        teacher_logits = self.eval_teacher_logits.get(split)
        if teacher_logits is not None and indices is not None:
            teacher_logits = teacher_logits[np.asarray(indices)]
        if teacher_logits is not None:
            if self.task.is_regression:
                result["agreement"] = float(np.corrcoef(outputs[:, 0], teacher_logits[:, 0])[0, 1])
            else:
                result["agreement"] = float(np.mean(outputs.argmax(-1) == teacher_logits.argmax(-1)))
        return result, outputs

    @torch.no_grad()
    def probe_cls(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """The student's mean last-layer [CLS] vector on ``batch``, in eval mode (the
        knowledge-selection paper's state)."""
        was_training = self.student.training
        self.student.eval()
        batch = to_device(batch, self.runtime.device)
        with self.runtime.autocast():
            outputs = self.student(**model_inputs(self.student, batch), output_hidden_states=True)
        self.student.train(was_training)
        return outputs.hidden_states[-1][:, 0].float().mean(0).cpu().numpy()

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> Snapshot:
        """Everything that determines future training, copied in memory."""
        return Snapshot(copy.deepcopy({
            "student": self.student.state_dict(),
            "knowledge": {name: module.state_dict() for name, module in self.knowledge.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "stream": self.stream.state_dict(),
            "updates_done": self.updates_done,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }))

    def restore(self, snapshot: Snapshot) -> None:
        state = copy.deepcopy(snapshot.state)
        self.student.load_state_dict(state["student"])
        for name, module in self.knowledge.items():
            module.load_state_dict(state["knowledge"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.normalizer.load_state_dict(state["normalizer"])
        self.stream.load_state_dict(state["stream"])
        self.updates_done = state["updates_done"]
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])

    def reseed(self, seed: int) -> None:
        """New shuffling and dropout randomness (for a new episode from the same initial student)."""
        seed_everything(seed)
        self.stream.reseed(seed)


def _embeddings(model: nn.Module) -> nn.Module:
    return getattr(model, model.base_model_prefix).embeddings
