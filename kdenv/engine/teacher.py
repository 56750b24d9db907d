"""The fine-tuned teacher of a task: trained once, saved under ``runs/teachers/<task>/``, reused."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from kdenv import numerics
from kdenv.config import DataConfig, FinetuneConfig, save_run_config, to_dict
from kdenv.engine.data import (
    TaskData,
    collate,
    length_bucketed_batches,
    load_task_data,
    model_inputs,
    padding_savings,
    to_device,
)
from kdenv.engine.inference import evaluate_with_outputs
from kdenv.engine.knowledge.ce import task_loss
from kdenv.engine.metrics import task_metrics
from kdenv.engine.models import ModelError, folder_fingerprint, load_classifier, load_tokenizer, save_model
from kdenv.engine.optim import linear_warmup_decay, make_optimizer, scaled_backward, scaled_step, step_schedule
from kdenv.engine.runtime import Runtime, seed_everything
from kdenv.engine.tasks import get_task
from kdenv.engine.teacher_cache import model_fingerprint
from kdenv.paths import teacher_dir

METADATA_FILE = "kdenv.json"


def teacher_metadata(task: str, directory: Path | None = None) -> dict[str, Any] | None:
    """The saved teacher's record (scores, config), or None when there is no complete teacher."""
    name = get_task(task).name
    path = (directory or teacher_dir(name)) / METADATA_FILE
    if not path.is_file():
        return None
    try:
        metadata = json.loads(path.read_text())
        if not isinstance(metadata, dict) or "data" not in metadata or "primary_metric" not in metadata:
            raise ValueError("a teacher record needs its data and primary_metric entries")
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelError(f"the teacher record {path} is damaged ({error}); fine-tune the teacher again: "
                         f"python agents/finetune_teacher.py --task {name} --force") from None
    spec = get_task(task)
    recorded = metadata.get("task_files_sha256")
    if spec.files is not None and recorded is not None and recorded != spec.files.sha256:
        raise ModelError(f"the {name} teacher ({path.parent}) was fine-tuned on other data: the task file or its data "
                         f"files changed since (checksum {spec.files.sha256[:12]}, not {recorded[:12]}); fine-tune it "
                         f"again: python agents/finetune_teacher.py --task {spec.ref} --force")
    return metadata


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def has_weights(directory: Path) -> bool:
    """Whether a saved teacher's folder holds its weights (a cut save or a deleted file leaves none)."""
    return any((Path(directory) / name).is_file() for name in WEIGHT_FILES)


def load_teacher(task: str, attn_implementation: str = "sdpa", directory: Path | None = None):
    """Loads the saved teacher of ``task`` (model, tokenizer, metadata)."""
    spec = get_task(task)
    directory = directory or teacher_dir(spec.name)
    metadata = teacher_metadata(spec.name, directory)
    if metadata is None:
        raise ModelError(
            f"no fine-tuned teacher for {spec.name} in {directory}; "
            f"run: python agents/finetune_teacher.py --task {spec.name}"
        )
    if not has_weights(directory):
        raise ModelError(f"the teacher in {directory} has its record but no weights ({' or '.join(WEIGHT_FILES)}: a "
                         f"save cut short, or a deleted file); fine-tune it again: python agents/finetune_teacher.py "
                         f"--task {spec.name} --force")
    try:
        model = load_classifier(directory, spec, attn_implementation=attn_implementation)
        tokenizer = load_tokenizer(directory)
    except ModelError:
        raise
    except Exception as error:  # safetensors, json and OS errors all mean a damaged folder here
        raise ModelError(f"the teacher in {directory} cannot be loaded ({type(error).__name__}: {error}); fine-tune it "
                         f"again: python agents/finetune_teacher.py --task {spec.name} --force") from None
    recorded, actual = metadata.get("fingerprint"), model_fingerprint(model)  # hashed once per load
    if recorded is not None and actual != recorded:
        raise ModelError(f"the teacher in {directory} is damaged or was replaced: its weights' fingerprint is "
                         f"{actual}, not the {recorded} recorded when it was saved; fine-tune it "
                         f"again: python agents/finetune_teacher.py --task {spec.name} --force")
    return model, tokenizer, {**metadata, "fingerprint": actual}  # the fingerprint of the weights just loaded


def finetune_teacher(
    data_config: DataConfig,
    finetune_config: FinetuneConfig,
    runtime: Runtime,
    select_on: str = "reward",
    directory: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tunes the base model on the task and saves it (atomically) with its config and scores."""
    task = get_task(data_config.task)
    directory = Path(directory or teacher_dir(task.name))
    seed_everything(finetune_config.seed)
    tokenizer = load_tokenizer(finetune_config.model)
    base_fingerprint = folder_fingerprint(finetune_config.model)
    data: TaskData = load_task_data(data_config, tokenizer)
    model = load_classifier(finetune_config.model, task)
    batches = length_bucketed_batches(data["train"].lengths, finetune_config.batch_size, True, finetune_config.seed)
    padding = padding_savings(data["train"].lengths, batches, data_config.max_length)
    result = finetune(
        model, data, finetune_config, runtime, select_on=select_on,
        log_dir=directory.parent / "tensorboard" / task.name, progress=progress,
    )
    metadata = {
        "task": task.name,
        "base_model": finetune_config.model,
        "base_model_fingerprint": base_fingerprint,  # a local folder's files (None: a hub id)
        **({"task_files_sha256": task.files.sha256} if task.files is not None else {}),
        "primary_metric": task.primary_metric,
        "dev": result.best_metrics["dev"],
        "reward": result.best_metrics["reward"],
        "selected_on": select_on,
        "best_epoch": result.best_epoch,
        "steps": result.steps,
        "wall_time_s": round(result.wall_time_s, 1),
        "device": runtime.describe(),
        "split_sizes": {name: len(split) for name, split in data.splits.items()},
        "padding": padding,
        "history": result.history,
        "data": to_dict(data_config),
        "finetune": to_dict(finetune_config),
        # The saved weights' fingerprint: load_teacher refuses a teacher whose weights no longer match.
        "fingerprint": model_fingerprint(model),
        "numerics": numerics.describe(),
    }

    def write_config(tmp: Path) -> None:
        save_run_config(tmp / "config.yaml", {"finetune": finetune_config.seed, "split": data_config.split_seed},
                        data=data_config, finetune=finetune_config)

    save_model(model, tokenizer, directory, metadata, write_extra=write_config)
    return metadata


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
    splits after every epoch, and keeps the weights of the epoch :func:`select_epoch` picks on
    ``select_on``: the latest one whose metric is within ``config.selection_tolerance`` (default:
    one bootstrap standard error) of the best epoch's.

    The model is left holding the selected weights.
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
    result, epoch_states = FinetuneResult({}, -1), []
    start, step = time.perf_counter(), 0
    bar = tqdm(total=total_steps, desc=f"fine-tune {task.name}", disable=not progress, unit="step")
    for epoch in range(config.epochs):
        for indices in length_bucketed_batches(lengths, config.batch_size, shuffle=True, seed=config.seed + epoch):
            if step >= total_steps:
                break
            batch = to_device(collate(train, indices, data.pad_token_id), runtime.device)
            with runtime.autocast():
                logits = model(**model_inputs(model, batch)).logits
            loss = task_loss(task, logits, batch["labels"])
            scaled_backward(loss, optimizer, scaler, model.parameters(), config.max_grad_norm)
            scaled_step(optimizer, scaler)
            step_schedule(scheduler)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch)
            if writer is not None:
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
        evaluations, outputs = {}, {}
        for name in ("reward", "dev"):
            evaluations[name], outputs[name] = evaluate_with_outputs(model, data, name, runtime, config.eval_batch_size)
        record = {"epoch": epoch, "step": step, **{f"{s}/{k}": v for s, m in evaluations.items() for k, v in m.items()}}
        record[f"{select_on}/{metric_name}_stderr"] = bootstrap_stderr(task, outputs[select_on], data[select_on].labels,
                                                                      seed=config.seed)
        result.history.append(record)
        epoch_states.append(({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, evaluations))
        if writer is not None:
            for key, value in record.items():
                if "/" in key:
                    writer.add_scalar(key, value, step)
        bar.write(
            f"epoch {epoch}: reward {metric_name} {evaluations['reward'][metric_name]:.4f}, "
            f"dev {metric_name} {evaluations['dev'][metric_name]:.4f}"
        )
        if step >= total_steps:
            break
    bar.close()
    if writer is not None:
        writer.close()
    result.best_epoch = select_epoch(result.history, f"{select_on}/{metric_name}", config.selection_tolerance)
    best_state, result.best_metrics = epoch_states[result.best_epoch]
    model.load_state_dict(best_state)
    result.wall_time_s = time.perf_counter() - start
    result.steps = step
    return result


def bootstrap_stderr(task, outputs: np.ndarray, labels: np.ndarray, resamples: int = 200, seed: int = 0) -> float:
    """Standard error of the task's primary metric on a split, by resampling its examples."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        index = rng.integers(0, len(labels), len(labels))
        value = task_metrics(task, outputs[index], labels[index])[task.primary_metric]
        if np.isfinite(value):
            values.append(value)
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def select_epoch(history: list[dict[str, Any]], key: str, tolerance: float | None = None) -> int:
    """The latest epoch whose ``key`` is within ``tolerance`` of the best epoch's (None: that
    epoch's bootstrap standard error, ``key + "_stderr"``; 0: plain argmax).

    Why not the plain argmax: on a small selection split (RTE: 249 examples) the metric's noise is
    as large as the differences between epochs, and an argmax then often picks epoch 0, a
    near-uniform model whose accuracy is luck. Later epochs have trained longer; an earlier one
    wins only when it is better by more than the noise."""
    scores = [record[key] for record in history]
    best = int(np.argmax(scores))
    margin = history[best].get(key + "_stderr", 0.0) if tolerance is None else tolerance
    return max(index for index, score in enumerate(scores) if score >= scores[best] - margin)
