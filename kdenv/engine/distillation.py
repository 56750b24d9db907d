"""Assembling a distillation, one way: teacher (fine-tuned if missing), data, student, knowledge
modules and teacher knowledge (cached or online) are prepared once by :func:`prepare_distillation`;
then :meth:`Distillation.build_trainer` makes the trainer for a schedule of a settled length.
``agents/distill.py`` and the environment factory both assemble through here."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kdenv import numerics
from kdenv.config import DataConfig, DistillConfig, FinetuneConfig
from kdenv.engine.data import EncodedSplit, TaskData, collate, load_task_data, model_inputs, to_device
from kdenv.engine.knowledge import KNOWLEDGE_TYPES, KnowledgeError, KnowledgeType, build_knowledge_modules
from kdenv.engine.metrics import task_metrics
from kdenv.engine.models import (
    ModelError,
    check_same_vocabulary,
    folder_fingerprint,
    load_classifier,
    load_config,
    load_tokenizer,
    student_from_teacher,
    student_layers_for,
)
from kdenv.engine.runtime import Runtime, seed_everything
from kdenv.engine.tasks import get_task
from kdenv.engine.teacher import finetune_teacher, load_teacher, teacher_metadata
from kdenv.engine.teacher_cache import (
    OnlineTeacher,
    TeacherCache,
    TeacherSource,
    frozen,
    split_fingerprint,
)
from kdenv.engine.trainer import StudentTrainer
from kdenv.paths import cache_dir, teacher_dir

DEFAULT_TEACHER_MODEL = "minilm"


@dataclass
class Distillation:
    """Everything a distillation is built from; :meth:`build_trainer` makes its trainer."""

    data_config: DataConfig
    config: DistillConfig
    runtime: Runtime
    data: TaskData
    teacher: Any  # the loaded teacher model (frozen)
    teacher_metadata: dict[str, Any]
    teacher_fingerprint: str
    teacher_scores: dict[str, dict[str, float]]  # split -> the teacher's metrics
    cache_reports: dict[str, str]  # what happened to each cache (valid / rebuilt and why)
    student: Any
    knowledge: dict[str, KnowledgeType]
    teacher_source: TeacherSource
    eval_teacher_logits: dict[str, np.ndarray]

    @property
    def task(self):
        return self.data.task

    def build_trainer(self, total_updates: int | None = None) -> StudentTrainer:
        """The trainer, with a learning-rate schedule of ``total_updates`` (None: the config's distill_epochs).
        It owns the student and the knowledge modules: build it once per distillation."""
        return StudentTrainer(self.student, self.teacher_source, self.data, self.knowledge, self.config, self.runtime,
                              total_updates, eval_teacher_logits=self.eval_teacher_logits)

    def teacher_record(self) -> dict[str, Any]:
        """The teacher's identity, recorded beside every run that uses it."""
        metric = self.task.primary_metric
        record = {"fingerprint": self.teacher_fingerprint, "base_model": self.teacher_metadata.get("base_model"),
                  "directory": str(teacher_dir(self.task.name)), f"dev_{metric}": self.teacher_scores["dev"][metric],
                  "finetune": self.teacher_metadata.get("finetune")}
        if self.task.files is not None:  # the task file and data files the teacher was fine-tuned on
            record["task_files_sha256"] = self.task.files.sha256
        cap = self.teacher_metadata.get("data", {}).get("max_train_examples")
        if cap is not None:  # a teacher fine-tuned on a capped train split says so (absent: the whole split)
            record["max_train_examples"] = cap
        return record

    @torch.no_grad()
    def teacher_probe_cls(self, probe_size: int) -> np.ndarray:
        """The teacher's mean last-layer [CLS] vector on the first ``probe_size`` reward examples."""
        split = self.data["reward"]
        batch = to_device(collate(split, list(range(min(probe_size, len(split)))), self.data.pad_token_id),
                          self.runtime.device)
        outputs = self.teacher(**model_inputs(self.teacher, batch), output_hidden_states=True)
        return outputs.hidden_states[-1][:, 0].float().mean(0).cpu().numpy()


def ensure_teacher(data_config: DataConfig, runtime: Runtime, progress: bool = True,
                   base_model: str | None = None) -> dict[str, Any]:
    """The task's teacher record, fine-tuning the teacher with default settings if there is none.
    With ``base_model`` set, a saved teacher must have been fine-tuned from it."""
    task = get_task(data_config.task)
    metadata = teacher_metadata(task.name)
    if metadata is None:
        model = base_model or DEFAULT_TEACHER_MODEL
        print(f"no teacher for {task.name} yet: fine-tuning {model} (saved under {teacher_dir(task.name)})")
        teacher_data = DataConfig(task=task.ref, data_dir=data_config.data_dir, max_length=data_config.max_length,
                                  reward_size=data_config.reward_size, split_seed=data_config.split_seed)
        return finetune_teacher(teacher_data, FinetuneConfig(model=model, device=str(runtime.device)), runtime,
                                progress=progress)
    recorded = metadata.get("base_model_fingerprint")
    if base_model is not None and metadata.get("base_model") == base_model and recorded is not None \
            and folder_fingerprint(base_model) != recorded:
        raise ModelError(
            f"the model folder {base_model} changed since the saved {task.name} teacher ({teacher_dir(task.name)}) was "
            f"fine-tuned from it (its files' fingerprint differs); fine-tune the teacher again: python "
            f"agents/finetune_teacher.py --task {task.ref} --model {base_model} --force")
    if base_model is not None and metadata.get("base_model") != base_model:
        raise ModelError(
            f"the saved {task.name} teacher ({teacher_dir(task.name)}) was fine-tuned from {metadata.get('base_model')!r}, "
            f"but this run asks for a teacher from {base_model!r}; pass --teacher-model {metadata.get('base_model')} to use "
            f"it, or fine-tune the other one: python agents/finetune_teacher.py --task {task.name} --model {base_model} --force")
    return metadata


def check_split_matches_teacher(data_config: DataConfig, metadata: dict[str, Any]) -> None:
    """The teacher must not have trained on the reward split, so both must use the same split."""
    teacher_data = metadata["data"]
    flags = {"reward_size": "--reward-size", "split_seed": "--split-seed", "max_length": "--max-length"}
    for name, flag in flags.items():
        if teacher_data[name] != getattr(data_config, name):
            raise ValueError(
                f"the {metadata['task']} teacher was fine-tuned with {name}={teacher_data[name]}, this run asks for "
                f"{getattr(data_config, name)}; a different split would let the reward slice overlap what the "
                f"teacher trained on. Pass {flag} {teacher_data[name]}, or fine-tune a new teacher (--force)"
            )


def _cache_directory(task: str, split_name: str, split: EncodedSplit, keys: set[str], dtype: str,
                     numerics_of: str) -> Any:
    """One folder per (split contents, knowledge, dtype, numerics): runs that cap a split
    differently (e.g. another reward-split size) or compute in other numerics get their own cache
    instead of rebuilding a shared one in place."""
    tag = hashlib.sha256(json.dumps([sorted(keys), dtype, split_fingerprint(split), numerics_of]).encode()).hexdigest()[:10]
    return cache_dir() / "teacher_knowledge" / task / f"{split_name}-{tag}"


def check_student_model(knowledge_names: list[str], config: DistillConfig, task) -> None:
    """A pre-trained student (``--student-model``) must share the teacher's tokenizer, and every knowledge
    type on offer must apply to the pair (a gradient needs equal hidden sizes; hidden states get a
    projection). Checked on configs and tokenizers, before a teacher is fine-tuned or any weights load."""
    if not config.student_model:
        return  # a student built from the teacher's layers fits every knowledge type
    saved = teacher_metadata(task.name)
    teacher_source = teacher_dir(task.name) if saved is not None else (config.teacher_model or DEFAULT_TEACHER_MODEL)
    check_same_vocabulary(load_tokenizer(teacher_source), load_tokenizer(config.student_model))
    student_config, teacher_config = load_config(config.student_model), load_config(teacher_source)
    student_config.num_labels = teacher_config.num_labels = task.num_labels
    build_knowledge_modules(knowledge_names, config, task, _ConfigOnly(student_config), teacher_config,
                            check_attention=False)


class _ConfigOnly:
    """What building knowledge modules reads of a student: its config."""

    def __init__(self, config) -> None:
        self.config = config


def student_record(config: DistillConfig) -> dict[str, Any] | None:
    """A pre-trained student's identity (its name and, for a local folder, its files' fingerprint); None when
    the student is built from the teacher's layers (the teacher's fingerprint names it)."""
    if not config.student_model:
        return None
    return {"model": config.student_model, "fingerprint": folder_fingerprint(config.student_model)}


def check_knowledge_names(names: list[str]) -> None:
    unknown = [name for name in names if name not in KNOWLEDGE_TYPES]
    if unknown:
        raise KnowledgeError(f"unknown knowledge {unknown}; registered: {', '.join(sorted(KNOWLEDGE_TYPES))}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise KnowledgeError(f"knowledge {duplicates} named twice; name each type once")


def prepare_distillation(
    data_config: DataConfig,
    config: DistillConfig,
    knowledge_names: list[str],
    runtime: Runtime,
    progress: bool = True,
) -> Distillation:
    """Teacher, data, student, knowledge modules and teacher knowledge for a distillation."""
    check_knowledge_names(knowledge_names)
    task = get_task(data_config.task)
    check_student_model(knowledge_names, config, task)
    metadata = ensure_teacher(data_config, runtime, progress, base_model=config.teacher_model)
    check_split_matches_teacher(data_config, metadata)
    needs_eager = any(KNOWLEDGE_TYPES[name].needs_eager_attention for name in knowledge_names)
    attention = "eager" if needs_eager else "sdpa"
    teacher, tokenizer, loaded = load_teacher(task.name, attn_implementation=attention)
    teacher = frozen(teacher, runtime)
    data = load_task_data(data_config, tokenizer)
    seed_everything(config.seed)
    if config.student_model:
        student = load_classifier(config.student_model, task, attn_implementation=attention)
        check_same_vocabulary(tokenizer, load_tokenizer(config.student_model))
    else:
        layers = student_layers_for(config.student_init, teacher.config.num_hidden_layers, config.student_layers)
        student = student_from_teacher(teacher, layers=layers, dropout=config.student_dropout,
                                       fresh_head=config.fresh_head)
    modules = build_knowledge_modules(knowledge_names, config, task, student, teacher.config)
    train_keys: set[str] = set().union(*(module.teacher_keys() for module in modules.values()))
    reports: dict[str, str] = {}
    budget = int(config.cache_memory_budget_gb * (1 << 30))
    eval_logits: dict[str, np.ndarray] = {}
    fingerprint = loaded["fingerprint"]  # load_teacher hashed (and checked) the weights already
    for split in [name for name in data.splits if name != "train"]:
        numerics_of = numerics.cache_numerics(runtime.device.type, split)
        cache = TeacherCache.open(
            _cache_directory(task.name, split, data[split], {"logits"}, "float32", numerics_of), teacher, task,
            data[split], {"logits"}, runtime, data.pad_token_id, dtype="float32", memory_budget_bytes=budget,
            progress=progress, teacher_fingerprint=fingerprint, numerics_of=numerics_of,
        )
        eval_logits[split] = np.asarray(cache.arrays["logits"])
        reports[split] = cache.info.reason
    if config.teacher_mode == "cache" and train_keys:
        numerics_of = numerics.cache_numerics(runtime.device.type, "train")
        source = TeacherCache.open(
            _cache_directory(task.name, "train", data["train"], train_keys, config.cache_dtype, numerics_of), teacher,
            task, data["train"], train_keys, runtime, data.pad_token_id, dtype=config.cache_dtype,
            memory_budget_bytes=budget, progress=progress, teacher_fingerprint=fingerprint, numerics_of=numerics_of,
        )
        reports["train"] = f"{source.info.reason}, {source.info.bytes / 1e6:.0f} MB" + (
            ", memory-mapped" if source.info.memory_mapped else "")
    else:
        source = OnlineTeacher(teacher, task, runtime)
        reports["train"] = "online teacher"
    teacher_scores = {split: task_metrics(task, logits, data[split].labels) for split, logits in eval_logits.items()}
    return Distillation(data_config, config, runtime, data, teacher, metadata, fingerprint, teacher_scores, reports,
                        student, modules, source, eval_logits)
