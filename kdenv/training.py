"""Shared training pieces (optimiser, schedule, task loss, prediction) and teacher fine-tuning."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kdenv.config import FinetuneConfig
from kdenv.data import EncodedSplit, TaskData, collate, length_bucketed_batches
from kdenv.metrics import task_metrics
from kdenv.runtime import Runtime
from kdenv.tasks import TaskSpec

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


def make_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and LayerNorm weights (the BERT recipe)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate)


def linear_warmup_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warmup to the base learning rate, then linear decay to zero at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def task_loss(task: TaskSpec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hard-label loss: cross-entropy, or MSE on the single output for regression (STS-B)."""
    if task.is_regression:
        return F.mse_loss(logits.float().squeeze(-1), labels.float())
    return F.cross_entropy(logits.float(), labels)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    split: EncodedSplit,
    pad_token_id: int,
    runtime: Runtime,
    batch_size: int = 64,
) -> np.ndarray:
    """Model outputs (logits, float32) for a whole split, in the split's own order."""
    was_training = model.training
    model.eval()
    outputs = np.zeros((len(split), model.config.num_labels), dtype=np.float32)
    for indices in length_bucketed_batches(split.lengths, batch_size, shuffle=False):
        batch = to_device(collate(split, indices, pad_token_id), runtime.device)
        with runtime.autocast():
            logits = model(**{k: batch[k] for k in MODEL_INPUTS}).logits
        outputs[indices] = logits.float().cpu().numpy()
    model.train(was_training)
    return outputs


def evaluate(
    model: torch.nn.Module, data: TaskData, split_name: str, runtime: Runtime, batch_size: int = 64
) -> dict[str, float]:
    """Task metrics and mean hard-label loss of ``model`` on one split."""
    split = data[split_name]
    outputs = predict(model, split, data.pad_token_id, runtime, batch_size)
    metrics = task_metrics(data.task, outputs, split.labels)
    labels = torch.from_numpy(split.labels)
    metrics["loss"] = float(task_loss(data.task, torch.from_numpy(outputs), labels))
    return metrics


@dataclass
class FinetuneResult:
    best_metrics: dict[str, dict[str, float]]  # split name -> metrics, at the selected epoch
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0
    steps: int = 0


def finetune(
    model: torch.nn.Module,
    data: TaskData,
    config: FinetuneConfig,
    runtime: Runtime,
    select_on: str = "reward",
    log_dir: Path | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tunes ``model`` on ``data['train']`` with hard labels, evaluating on the reward and dev
    splits after every epoch and keeping the weights of the epoch best on ``select_on``.

    The model is left holding the best weights.
    """
    task = data.task
    model.to(runtime.device).train()
    train = data["train"]
    lengths = train.lengths
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    optimizer = make_optimizer(model, config.learning_rate, config.weight_decay)
    scheduler = linear_warmup_decay(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    scaler = runtime.grad_scaler()
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))
    metric_name = task.primary_metric
    best_score, best_state, result = -math.inf, None, FinetuneResult({}, -1)
    start, step = time.perf_counter(), 0
    bar = tqdm(total=total_steps, desc=f"fine-tune {task.name}", disable=not progress, unit="step")
    for epoch in range(config.epochs):
        for indices in length_bucketed_batches(lengths, config.batch_size, shuffle=True, seed=config.seed + epoch):
            if step >= total_steps:
                break
            batch = to_device(collate(train, indices, data.pad_token_id), runtime.device)
            with runtime.autocast():
                logits = model(**{k: batch[k] for k in MODEL_INPUTS}).logits
            loss = task_loss(task, logits, batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch)
            if writer is not None:
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
        evaluations = {
            name: evaluate(model, data, name, runtime, config.eval_batch_size)
            for name in ("reward", "dev")
        }
        record = {"epoch": epoch, "step": step, **{f"{s}/{k}": v for s, m in evaluations.items() for k, v in m.items()}}
        result.history.append(record)
        if writer is not None:
            for key, value in record.items():
                if "/" in key:
                    writer.add_scalar(key, value, step)
        bar.write(
            f"epoch {epoch}: reward {metric_name} {evaluations['reward'][metric_name]:.4f}, "
            f"dev {metric_name} {evaluations['dev'][metric_name]:.4f}"
        )
        if evaluations[select_on][metric_name] > best_score:
            best_score = evaluations[select_on][metric_name]
            best_state = copy.deepcopy(model.state_dict())
            result.best_metrics, result.best_epoch = evaluations, epoch
        if step >= total_steps:
            break
    bar.close()
    if writer is not None:
        writer.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    result.wall_time_s = time.perf_counter() - start
    result.steps = step
    return result


def token_saliency(
    model: torch.nn.Module, split: EncodedSplit, task: TaskSpec, pad_token_id: int, runtime: Runtime,
    batch_size: int = 32,
) -> list[np.ndarray]:
    """Per-token saliency of every example: ‖gradient × input‖₂ over the hidden axis, where the
    gradient is that of the model's confidence (max softmax probability; the score for regression)
    w.r.t. the embedding-block output, in eval mode. One array per example (its real tokens)."""
    from kdenv.knowledge.base import confidence_gradients, encoder_of

    was_training = model.training
    model.eval()
    result: list[np.ndarray] = [np.zeros(0)] * len(split)
    captured = {}
    handle = encoder_of(model).embeddings.register_forward_hook(
        lambda _module, _inputs, output: captured.__setitem__("embedding", output.detach()))
    try:
        for indices in length_bucketed_batches(split.lengths, batch_size, shuffle=False):
            batch = to_device(collate(split, indices, pad_token_id), runtime.device)
            with runtime.autocast():
                gradient = confidence_gradients(model, batch, task, True, set(), create_graph=False)["grad.embedding"]
            saliency = (gradient.float() * captured["embedding"].float()).norm(dim=-1).cpu().numpy()
            for row, example in enumerate(indices):
                result[example] = saliency[row, : len(split.input_ids[example])]
    finally:
        handle.remove()
        model.train(was_training)
    return result
