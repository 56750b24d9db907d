"""Running a model over a whole split: its outputs, its task metrics and loss, and its token saliency."""

from __future__ import annotations

import numpy as np
import torch

from kdenv.engine.data import EncodedSplit, TaskData, collate, length_bucketed_batches, model_inputs, to_device
from kdenv.engine.knowledge.base import confidence_gradients, encoder_of
from kdenv.engine.knowledge.ce import task_loss
from kdenv.engine.metrics import task_metrics
from kdenv.engine.runtime import Runtime
from kdenv.engine.tasks import TaskSpec


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
            logits = model(**model_inputs(model, batch)).logits
        outputs[indices] = logits.float().cpu().numpy()
    model.train(was_training)
    return outputs


def evaluate_with_outputs(
    model: torch.nn.Module, data: TaskData, split_name: str, runtime: Runtime, batch_size: int = 64
) -> tuple[dict[str, float], np.ndarray]:
    """Task metrics and mean hard-label loss of ``model`` on one split, and its outputs there."""
    split = data[split_name]
    outputs = predict(model, split, data.pad_token_id, runtime, batch_size)
    metrics = task_metrics(data.task, outputs, split.labels)
    labels = torch.from_numpy(split.labels)
    metrics["loss"] = float(task_loss(data.task, torch.from_numpy(outputs), labels))
    return metrics, outputs


def evaluate(
    model: torch.nn.Module, data: TaskData, split_name: str, runtime: Runtime, batch_size: int = 64
) -> dict[str, float]:
    """Task metrics and mean hard-label loss of ``model`` on one split."""
    return evaluate_with_outputs(model, data, split_name, runtime, batch_size)[0]


def token_saliency(
    model: torch.nn.Module, split: EncodedSplit, task: TaskSpec, pad_token_id: int, runtime: Runtime,
    batch_size: int = 32,
) -> list[np.ndarray]:
    """Per-token saliency of every example: ‖gradient × input‖₂ over the hidden axis, where the
    gradient is that of the model's confidence (max softmax probability; the score for regression)
    w.r.t. the embedding-block output, in eval mode. One array per example (its real tokens)."""
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
