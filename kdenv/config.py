"""Configuration: one dataclass per concern, with defaults, saved as YAML beside every run."""

from __future__ import annotations

import dataclasses
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdenv.io import atomic_write


@dataclass
class DataConfig:
    """Which task and data, and how it is tokenised and split."""

    task: str = "rte"
    data_dir: str | None = None  # local GLUE folder; None: $KDENV_GLUE_DIR, else the hub
    max_length: int = 128
    reward_size: float | int = 0.1  # held out of train for rewards: a fraction, or a count
    max_reward_examples: int | None = None  # cap on the reward split (cheaper rewards)
    max_train_examples: int | None = None  # cap on train (proxy budgets)
    split_seed: int = 0  # fixes the train/reward split, shared by teacher and students
    cache_tokenization: bool = True


@dataclass
class FinetuneConfig:
    """Fine-tuning a base model on a task (the teacher). Defaults follow common GLUE practice."""

    model: str = "minilm"  # "minilm" (the packaged all-MiniLM-L6-v2), a hub id, or a local folder
    epochs: int = 3
    batch_size: int = 16
    eval_batch_size: int = 64
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    max_steps: int | None = None  # stop after this many updates (smoke tests); None: full epochs


@dataclass
class DistillConfig:
    """Distilling a student from a task's teacher: student shape, optimisation, knowledge losses,
    and how teacher knowledge is served."""

    teacher_model: str = "minilm"  # base model fine-tuned into the teacher when none is saved yet
    student_layers: int = 3  # student built from this many evenly spaced teacher layers
    student_model: str | None = None  # instead: any pre-trained model with the teacher's vocabulary
    freeze_embeddings: bool = True  # as in GKD: the student keeps the teacher's embeddings
    epochs: float = 3.0  # budget of the distill command, in passes over the train split
    batch_size: int = 16
    eval_batch_size: int = 64
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    temperature: float = 5.0
    layer_map: list[list[int]] | None = None  # [[student_layer, teacher_layer], ...]; None: evenly spaced
    knowledge_options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    normalize_losses: bool = True  # divide each loss by a running mean of its magnitude
    normalizer_momentum: float = 0.9
    measure_type_grad_norms: bool = True  # per-type gradient norms on each phase's first update
    restore_on_non_finite: bool = True  # a NaN/inf phase rolls the student back to the phase start
    teacher_mode: str = "cache"  # "cache" (computed once, reused) or "online" (teacher run every batch)
    cache_dtype: str = "float16"
    cache_memory_budget_gb: float = 4.0  # above this the cache is memory-mapped from disk
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"


@dataclass
class EnvConfig:
    """The knowledge-selection environment: what is offered, how episodes are cut, how rewarded."""

    knowledge: list[str] = dataclasses.field(default_factory=lambda: ["logits", "hidden", "gradient"])
    base_weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"ce": 1.0})  # always on
    action_space: str = "multibinary"  # "multibinary" (on/off), "box" (weights in [0,1]), "discrete" (2^K subsets)
    phases: int = 4  # steps per episode
    updates_per_phase: int = 8
    epochs: float | None = None  # if set, updates_per_phase is derived: epochs over train / phases
    reward: str = "metric_gain"  # see kdenv/rewards.py
    reward_scale: float = 10.0  # metric gains are ~0.01; scaled so returns are O(0.1-1)
    exploration_bonus: float = 0.0  # count-based bonus (reported apart in info)
    crash_penalty: float = -1.0  # reward when a phase hits NaN/inf (the episode ends)
    cls_state: bool = False  # add the teacher's and student's [CLS] vectors (Dict observation)
    probe_size: int = 16


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Builds a config dataclass, refusing unknown keys (a typo should not silently do nothing)."""
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(known)}")
    return cls(**values)


def environment_record() -> dict[str, str]:
    """Versions that affect results, recorded beside every run."""
    import torch
    import transformers

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": str(torch.__version__),
        "transformers": str(transformers.__version__),
        "command": " ".join(sys.argv),
    }


def save_run_config(path: str | Path, seeds: dict[str, int], **sections: Any) -> Path:
    """Writes every config section, the seeds and the software versions to one YAML file."""
    record = {name: to_dict(section) for name, section in sections.items()}
    record["seeds"] = seeds
    record["environment"] = environment_record()
    path = Path(path)
    with atomic_write(path) as handle:
        yaml.safe_dump(record, handle, sort_keys=False)
    return path


def load_run_config(path: str | Path, **classes: type) -> dict[str, Any]:
    """Reads a saved run config back into dataclasses (sections named in ``classes``)."""
    record = yaml.safe_load(Path(path).read_text())
    return {name: from_dict(cls, record[name]) for name, cls in classes.items()}
