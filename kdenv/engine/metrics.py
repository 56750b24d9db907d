"""Task metrics (GLUE's official choices), written out directly so their definitions are visible."""

from __future__ import annotations

import numpy as np
from scipy import stats

from kdenv.engine.tasks import TaskSpec


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predictions == labels))


def f1_binary(predictions: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class (label 1), as GLUE reports it for MRPC and QQP."""
    true_pos = float(np.sum((predictions == 1) & (labels == 1)))
    false_pos = float(np.sum((predictions == 1) & (labels == 0)))
    false_neg = float(np.sum((predictions == 0) & (labels == 1)))
    denominator = 2 * true_pos + false_pos + false_neg
    return 2 * true_pos / denominator if denominator else 0.0


def matthews_corr(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation for binary labels; 0 when a row or column of the confusion is empty."""
    tp = float(np.sum((predictions == 1) & (labels == 1)))
    tn = float(np.sum((predictions == 0) & (labels == 0)))
    fp = float(np.sum((predictions == 1) & (labels == 0)))
    fn = float(np.sum((predictions == 0) & (labels == 1)))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denominator) if denominator else 0.0


def _correlation(kind: str, predictions: np.ndarray, labels: np.ndarray) -> float:
    if np.std(predictions) == 0 or np.std(labels) == 0:
        return 0.0  # a constant predictor has no correlation; scipy would warn and return NaN
    if kind == "pearson":
        return float(stats.pearsonr(predictions, labels)[0])
    return float(stats.spearmanr(predictions, labels)[0])


def task_metrics(task: TaskSpec, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """All of the task's metrics from raw model outputs ([N, C] logits, or [N] / [N, 1] scores)."""
    outputs = np.asarray(outputs, dtype=np.float64)
    labels = np.asarray(labels)
    if task.is_regression:
        scores = outputs.reshape(-1)
        return {name: _correlation(name, scores, labels.astype(np.float64)) for name in task.metrics}
    predictions = outputs.argmax(axis=-1)
    labels = labels.astype(np.int64)
    functions = {"accuracy": accuracy, "f1": f1_binary, "matthews_corr": matthews_corr}
    return {name: functions[name](predictions, labels) for name in task.metrics}


# --------------------------------------------------------------------------- teacher–student consistency


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def label_loyalty(teacher_logits: np.ndarray, student_logits: np.ndarray) -> float:
    """Share of inputs on which teacher and student predict the same label."""
    return float(np.mean(np.argmax(teacher_logits, -1) == np.argmax(student_logits, -1)))


def probability_loyalty(teacher_logits: np.ndarray, student_logits: np.ndarray) -> float:
    """Mean over inputs of 1 − √JSD(p_teacher, p_student), with JSD in bits (so in [0, 1]):
    1 for identical output distributions, 0 for disjoint ones."""
    p, q = _softmax(np.asarray(teacher_logits, np.float64)), _softmax(np.asarray(student_logits, np.float64))
    mixture = 0.5 * (p + q)

    def kl(a, b):
        return np.sum(np.where(a > 0, a * (np.log2(np.clip(a, 1e-300, None)) - np.log2(np.clip(b, 1e-300, None))), 0.0), -1)

    jsd = np.clip(0.5 * kl(p, mixture) + 0.5 * kl(q, mixture), 0.0, 1.0)
    return float(np.mean(1.0 - np.sqrt(jsd)))


def saliency_loyalty(teacher_saliency: list[np.ndarray], student_saliency: list[np.ndarray]) -> float:
    """Mean over inputs of the Spearman rank correlation between the teacher's and the student's
    per-token saliency (1: same token ranking, −1: reversed). Inputs whose saliency is constant
    for either model (no ranking) count as 0."""
    values = []
    for teacher_row, student_row in zip(teacher_saliency, student_saliency):
        if len(teacher_row) < 2 or np.ptp(teacher_row) == 0 or np.ptp(student_row) == 0:
            values.append(0.0)
            continue
        values.append(float(stats.spearmanr(teacher_row, student_row)[0]))
    return float(np.mean(values)) if values else 0.0
