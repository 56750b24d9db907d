"""Assembling a distillation: teacher (fine-tuned if missing), data, student, teacher knowledge
(cached or online) and the trainer. Used by ``agents/distill.py`` and by the environment."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from kdenv.config import DataConfig, DistillConfig, FinetuneConfig
from kdenv.data import EncodedSplit, TaskData, load_task_data
from kdenv.knowledge import KNOWLEDGE_TYPES, KnowledgeError
from kdenv.metrics import task_metrics
from kdenv.models import check_same_vocabulary, load_classifier, load_tokenizer, student_from_teacher
from kdenv.paths import cache_dir
from kdenv.runtime import Runtime, seed_everything
from kdenv.tasks import get_task
from kdenv.teacher import finetune_teacher, load_teacher, teacher_metadata
from kdenv.teacher_cache import OnlineTeacher, TeacherCache, model_fingerprint, split_fingerprint
from kdenv.trainer import StudentTrainer, build_knowledge_modules


@dataclass
class Distillation:
    trainer: StudentTrainer
    data: TaskData
    teacher_metadata: dict[str, Any]
    teacher_scores: dict[str, dict[str, float]]  # split -> the teacher's metrics
    cache_reports: dict[str, str]  # what happened to each cache (valid / rebuilt and why)
    teacher: Any  # the loaded teacher model (frozen), for anything that needs more of it later


def ensure_teacher(data_config: DataConfig, runtime: Runtime, progress: bool = True,
                   base_model: str = "minilm") -> dict[str, Any]:
    """The task's teacher record, fine-tuning the teacher with default settings if there is none."""
    task = get_task(data_config.task)
    metadata = teacher_metadata(task.name)
    if metadata is None:
        print(f"no teacher for {task.name} yet: fine-tuning one (saved under runs/teachers/{task.name})")
        teacher_data = DataConfig(task=task.name, data_dir=data_config.data_dir, max_length=data_config.max_length,
                                  reward_size=data_config.reward_size, split_seed=data_config.split_seed)
        metadata = finetune_teacher(teacher_data, FinetuneConfig(model=base_model, device=str(runtime.device)), runtime,
                                    progress=progress)
    return metadata


def _check_split_matches_teacher(data_config: DataConfig, metadata: dict[str, Any]) -> None:
    """The teacher must not have trained on the reward split, so both must use the same split."""
    teacher_data = metadata["data"]
    for name in ("reward_size", "split_seed", "max_length"):
        if teacher_data[name] != getattr(data_config, name):
            raise ValueError(
                f"the {metadata['task']} teacher was fine-tuned with {name}={teacher_data[name]}, this run asks for "
                f"{getattr(data_config, name)}; a different split would let the reward slice overlap what the "
                f"teacher trained on. Use the teacher's value or fine-tune a new teacher (--force)"
            )


def _cache_directory(task: str, split_name: str, split: EncodedSplit, keys: set[str], dtype: str) -> Any:
    """One folder per (split contents, knowledge, dtype): runs that cap a split differently (e.g.
    another reward-split size) get their own cache instead of rebuilding a shared one in place."""
    tag = hashlib.sha256(json.dumps([sorted(keys), dtype, split_fingerprint(split)]).encode()).hexdigest()[:10]
    return cache_dir() / "teacher_knowledge" / task / f"{split_name}-{tag}"


def build_distillation(
    data_config: DataConfig,
    config: DistillConfig,
    knowledge_names: list[str],
    runtime: Runtime,
    total_updates: int | None = None,
    progress: bool = True,
) -> Distillation:
    """Everything needed to distil: returns a trainer ready for ``run_phase``. ``total_updates``
    sets the learning-rate schedule's length (None: ``config.epochs`` over the train split)."""
    unknown = [name for name in knowledge_names if name not in KNOWLEDGE_TYPES]
    if unknown:
        raise KnowledgeError(f"unknown knowledge {unknown}; registered: {', '.join(sorted(KNOWLEDGE_TYPES))}")
    if config.teacher_mode not in ("cache", "online"):
        raise ValueError(f"teacher_mode must be 'cache' or 'online', not {config.teacher_mode!r}")
    task = get_task(data_config.task)
    metadata = ensure_teacher(data_config, runtime, progress, base_model=config.teacher_model)
    _check_split_matches_teacher(data_config, metadata)
    needs_eager = any(KNOWLEDGE_TYPES[name].needs_eager_attention for name in knowledge_names)
    attention = "eager" if needs_eager else "sdpa"
    teacher, tokenizer, _ = load_teacher(task.name, attn_implementation=attention)
    data = load_task_data(data_config, tokenizer)
    seed_everything(config.seed)
    if config.student_model:
        student = load_classifier(config.student_model, task, attn_implementation=attention)
        check_same_vocabulary(tokenizer, load_tokenizer(config.student_model))
    else:
        student = student_from_teacher(teacher, num_layers=config.student_layers)
    modules = build_knowledge_modules(knowledge_names, config, task, student, teacher.config)
    train_keys: set[str] = set().union(*(module.teacher_keys() for module in modules.values()))
    del modules  # the trainer builds its own, after reseeding, so that runs repeat exactly
    reports: dict[str, str] = {}
    budget = int(config.cache_memory_budget_gb * (1 << 30))
    eval_logits: dict[str, np.ndarray] = {}
    fingerprint = model_fingerprint(teacher)
    for split in [name for name in data.splits if name != "train"]:
        cache = TeacherCache.open(
            _cache_directory(task.name, split, data[split], {"logits"}, "float32"), teacher, task, data[split],
            {"logits"}, runtime, data.pad_token_id, dtype="float32", memory_budget_bytes=budget, progress=progress,
            teacher_fingerprint=fingerprint,
        )
        eval_logits[split] = np.asarray(cache.arrays["logits"])
        reports[split] = cache.info.reason
    if config.teacher_mode == "cache" and train_keys:
        source = TeacherCache.open(
            _cache_directory(task.name, "train", data["train"], train_keys, config.cache_dtype), teacher, task,
            data["train"], train_keys, runtime, data.pad_token_id, dtype=config.cache_dtype,
            memory_budget_bytes=budget, progress=progress, teacher_fingerprint=fingerprint,
        )
        reports["train"] = f"{source.info.reason}, {source.info.bytes / 1e6:.0f} MB" + (
            ", memory-mapped" if source.info.memory_mapped else "")
    else:
        source = OnlineTeacher(teacher, task, runtime)
        reports["train"] = "online teacher"
    trainer = StudentTrainer(student, source, data, knowledge_names, config, runtime, total_updates,
                             teacher.config, eval_teacher_logits=eval_logits)
    teacher_scores = {
        split: task_metrics(task, logits, data[split].labels) for split, logits in eval_logits.items()
    }
    return Distillation(trainer, data, metadata, teacher_scores, reports, teacher)
