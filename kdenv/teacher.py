"""The fine-tuned teacher of a task: trained once, saved under ``runs/teachers/<task>/``, reused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdenv.config import DataConfig, FinetuneConfig, save_run_config, to_dict
from kdenv.data import TaskData, length_bucketed_batches, load_task_data, padding_savings
from kdenv.models import ModelError, load_classifier, load_tokenizer, save_model
from kdenv.paths import teacher_dir
from kdenv.runtime import Runtime, seed_everything
from kdenv.tasks import get_task
from kdenv.training import finetune

METADATA_FILE = "kdenv.json"


def teacher_metadata(task: str, directory: Path | None = None) -> dict[str, Any] | None:
    """The saved teacher's record (scores, config), or None when there is no complete teacher."""
    path = (directory or teacher_dir(get_task(task).name)) / METADATA_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


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
    model = load_classifier(directory, spec, attn_implementation=attn_implementation)
    return model, load_tokenizer(directory), metadata


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
    }

    def write_config(tmp: Path) -> None:
        save_run_config(tmp / "config.yaml", {"finetune": finetune_config.seed, "split": data_config.split_seed},
                        data=data_config, finetune=finetune_config)

    save_model(model, tokenizer, directory, metadata, write_extra=write_config)
    return metadata
