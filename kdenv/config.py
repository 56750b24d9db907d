"""Configuration: one dataclass per concern, with defaults, saved as YAML beside every run.

Each field carries its help text (``metadata["help"]``), from which the scripts derive their flags
(``kdenv.cli``), and each dataclass checks its values when it is made, so that a bad value is
refused with a message that names the fix before any expensive work starts. Run budgets (how much
distillation one episode is) are defined once, in :data:`BUDGETS`.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdenv import numerics
from kdenv.errors import KdenvError
from kdenv.io import atomic_write


class ConfigError(KdenvError, ValueError):
    """A configuration value that cannot work; the message says which and how to fix it."""


def option(default: Any = None, help: str = "", factory: Any = None, flag: bool = True) -> Any:  # noqa: A002
    """A dataclass field with its help text (``flag=False``: not exposed as a command-line flag)."""
    metadata = {"help": help, "flag": flag}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _is_whole(value: Any) -> bool:
    """A whole number: a Python or NumPy integer, never a boolean (True is not 1 update)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _plain_numbers(config: Any) -> None:
    """NumPy scalars in a config's fields become Python ones (``np.int64(8)`` is a whole number, as 8
    is); booleans stay booleans, and are refused wherever a number is meant."""
    import numpy as np

    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if isinstance(value, np.bool_):
            value = bool(value)
        elif isinstance(value, np.integer):
            value = int(value)
        elif isinstance(value, np.floating):
            value = float(value)
        else:
            continue
        object.__setattr__(config, item.name, value)


def _positive_or_none(name: str, value: int | None) -> None:
    _require(value is None or (_is_whole(value) and value >= 1), f"{name} must be a whole number >= 1 or unset, not {value!r}")


@dataclass(frozen=True)
class Budget:
    """A named run budget: how long an episode is and how big the models are."""

    phases: int
    updates_per_phase: int | None  # None: derived from `episode_epochs` over the train split
    episode_epochs: float | None  # passes over the train split that one episode makes
    total_timesteps: int  # agent training, in phases (environment steps)
    max_reward_examples: int | None
    reward: str  # the reward definition (kdenv/decision/rewards.py), chosen by measurement (docs/benchmark.md)
    student_layers: int
    teacher_model: str | None  # None: whatever teacher is saved (minilm when one must be fine-tuned)
    description: str


BUDGETS: dict[str, Budget] = {
    # The reward of each budget, from the reward curve (docs/benchmark.md, "Regimes"): in the long horizon
    # (stsb_k2_u128, 0.4 epoch a phase, as the gpu budget's phases) teacher_agreement ranks a seed's schedules
    # as dev does at least as well as metric_gain at every size, more reliably, and its choice is the one
    # whose out-of-sample interval cleared 0 at 4 seeds; at the cpu budget's U = 8 neither ranks well (Spearman with dev
    # +0.43 and +0.46 on stsb_u8) and teacher_agreement ties on MRPC's 128 examples, so the cpu budget keeps
    # metric_gain until its own regime's curve (stsb_u8_o) is built.
    "cpu": Budget(phases=4, updates_per_phase=8, episode_epochs=None, total_timesteps=40, max_reward_examples=128,
                  reward="metric_gain", student_layers=3, teacher_model=None,
                  description="proxy budget for a 2-core CPU: 3-layer student, 4 phases x 8 updates, reward split "
                              "capped at 128, 40 agent steps (10 episodes)"),
    "gpu": Budget(phases=10, updates_per_phase=None, episode_epochs=4.0, total_timesteps=400, max_reward_examples=1000,
                  reward="teacher_agreement", student_layers=6, teacher_model="bert-base-uncased",
                  description="the papers' scale: BERT-base teacher (hub), 6-layer student, 10 phases covering 4 "
                              "epochs, reward split capped at 1000 (teacher_agreement), 400 agent steps"),
}
DEFAULT_BUDGET = BUDGETS["cpu"]


@dataclass
class DataConfig:
    """Which task and data, and how it is tokenised and split."""

    task: str = option("rte", "GLUE task", flag=False)
    data_dir: str | None = option(None, "local GLUE folder; None: $KDENV_GLUE_DIR, else the hub", flag=False)
    max_length: int = option(128, "maximum tokens per example (truncation)")
    reward_size: float | int = option(0.1, "held out of GLUE train for rewards and model selection: a fraction in "
                                           "(0, 1) or a whole count; must match the teacher's")
    max_reward_examples: int | None = option(None, "cap on the reward split (cheaper rewards); dev is never capped")
    max_train_examples: int | None = option(None, "cap on the train split: a stratified subsample of this many, "
                                                      "drawn with --split-seed (quick runs; a cheaper SST-2 teacher)")
    split_seed: int = option(0, "seed of the train/reward split; must match the teacher's")
    cache_tokenization: bool = option(True, "keep tokenised splits under runs/cache/tokenized", flag=False)

    def __post_init__(self) -> None:
        _plain_numbers(self)
        size = self.reward_size
        if isinstance(size, float) and size >= 1 and size.is_integer():
            self.reward_size = size = int(size)
        _require(not isinstance(size, bool) and (
            (isinstance(size, float) and 0 < size < 1) or (_is_whole(size) and size >= 1)),
            f"reward_size {size!r}: give a fraction in (0, 1) (0.1 = 10% of train) or a whole count of examples (250)")
        _require(_is_whole(self.max_length) and 8 <= self.max_length <= 512,
                 f"max_length must be a whole number in 8..512, not {self.max_length!r}")
        _positive_or_none("max_reward_examples", self.max_reward_examples)
        _positive_or_none("max_train_examples", self.max_train_examples)


@dataclass
class FinetuneConfig:
    """Fine-tuning a base model on a task (the teacher). Defaults follow common GLUE practice."""

    model: str = option("minilm", "base model: 'minilm' (the packaged all-MiniLM-L6-v2), a hub id, or a local folder")
    epochs: int = option(4, "passes over the train split")
    batch_size: int = option(16, "training batch size")
    eval_batch_size: int = option(64, "evaluation batch size", flag=False)
    learning_rate: float = option(5e-5, "peak AdamW learning rate")
    selection_tolerance: float | None = option(None, "keep the latest epoch whose selection metric is within this of the "
                                                     "best epoch's (unset: one bootstrap standard error; 0: the best)")
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and LayerNorm)")
    warmup_ratio: float = option(0.1, "share of updates spent in linear warmup")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    seed: int = option(42, "training seed (shuffling, dropout, classifier initialisation)")
    device: str = option("auto", "device", flag=False)
    precision: str = option("auto", "precision", flag=False)
    max_steps: int | None = option(None, "stop after this many updates (smoke tests); unset: full epochs")

    def __post_init__(self) -> None:
        _plain_numbers(self)
        _require(_is_whole(self.epochs) and self.epochs >= 1, f"epochs must be a whole number >= 1, not {self.epochs!r}")
        _require(_is_whole(self.batch_size) and self.batch_size >= 1, f"batch_size must be >= 1, not {self.batch_size!r}")
        _require(_finite(self.learning_rate) and self.learning_rate > 0, f"learning_rate must be > 0, not {self.learning_rate!r}")
        _require(_finite(self.weight_decay) and self.weight_decay >= 0, f"weight_decay must be >= 0, not {self.weight_decay!r}")
        _require(_finite(self.warmup_ratio) and 0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), not {self.warmup_ratio!r}")
        _positive_or_none("max_steps", self.max_steps)
        _require(self.selection_tolerance is None or (_finite(self.selection_tolerance) and self.selection_tolerance >= 0),
                 f"selection_tolerance must be >= 0 or unset, not {self.selection_tolerance!r}")


STUDENT_INITS = ("evenly", "first")


@dataclass
class DistillConfig:
    """Distilling a student from a task's teacher: student shape, optimisation, knowledge losses,
    and how teacher knowledge is served."""

    teacher_model: str | None = option(DEFAULT_BUDGET.teacher_model,
                                       "base model of the teacher: fine-tuned into one when none is saved (unset: "
                                       "minilm); when set, a saved teacher must have been fine-tuned from it")
    student_layers: int = option(DEFAULT_BUDGET.student_layers, "student = this many teacher layers")
    student_init: str = option("evenly", "which teacher layers the student keeps: 'evenly' spaced (top layer kept, "
                                         "next to the classifier) or the 'first' ones (the GKD paper's choice)")
    student_dropout: float | None = option(None, "dropout of the student (unset: the teacher's; the GKD paper: 0)")
    fresh_head: bool = option(False, "re-initialise the student's pooler and classifier instead of copying the teacher's")
    student_model: str | None = option(None, "instead: a pre-trained model (hub id or folder) with the teacher's vocabulary")
    freeze_embeddings: bool = option(True, "keep the teacher's embeddings frozen in the student (as in GKD)")
    distill_epochs: float = option(3.0, "budget of agents/distill.py, in passes over the train split")
    batch_size: int = option(16, "training batch size")
    eval_batch_size: int = option(64, "evaluation batch size", flag=False)
    learning_rate: float = option(1e-4, "peak AdamW learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and LayerNorm)")
    warmup_ratio: float = option(0.1, "share of the run's updates spent in linear warmup")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    temperature: float = option(5.0, "softmax temperature of `logits`")
    layer_map: list[list[int]] | None = option(None, "[[student_layer, teacher_layer], ...]; unset: evenly spaced", flag=False)
    knowledge_options: dict[str, dict[str, Any]] = option(factory=dict, help="per-type options", flag=False)
    normalize_losses: bool = option(True, "divide each loss by a running mean of its magnitude (weights become shares)")
    normalizer_momentum: float = option(0.9, "momentum of the loss normaliser's running mean", flag=False)
    measure_type_grad_norms: bool = option(True, "per-type gradient norms on each phase's first update", flag=False)
    restore_on_non_finite: bool = option(True, "a NaN/inf phase rolls the student back", flag=False)
    teacher_mode: str = option("cache", "serve teacher knowledge from the on-disk 'cache' or run the teacher 'online'")
    cache_dtype: str = option("float16", "storage of cached teacher tensors: float16 or float32")
    cache_memory_budget_gb: float = option(4.0, "above this size the cache is memory-mapped instead of loaded")
    seed: int = option(42, "seed of the student (projections, dropout, data order)")
    device: str = option("auto", "device", flag=False)
    precision: str = option("auto", "precision", flag=False)

    def __post_init__(self) -> None:
        _plain_numbers(self)
        _require(_is_whole(self.student_layers) and self.student_layers >= 1,
                 f"student_layers must be >= 1, not {self.student_layers!r}")
        _require(self.student_init in STUDENT_INITS, f"student_init must be one of {STUDENT_INITS}, not {self.student_init!r}")
        _require(self.student_dropout is None or (_finite(self.student_dropout) and 0 <= self.student_dropout < 1),
                 f"student_dropout must be in [0, 1) or unset, not {self.student_dropout!r}")
        _require(_finite(self.distill_epochs) and self.distill_epochs > 0,
                 f"distill_epochs must be > 0, not {self.distill_epochs!r}")
        _require(_is_whole(self.batch_size) and self.batch_size >= 1, f"batch_size must be >= 1, not {self.batch_size!r}")
        _require(_finite(self.learning_rate) and self.learning_rate > 0, f"learning_rate must be > 0, not {self.learning_rate!r}")
        _require(_finite(self.weight_decay) and self.weight_decay >= 0, f"weight_decay must be >= 0, not {self.weight_decay!r}")
        _require(_finite(self.warmup_ratio) and 0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), not {self.warmup_ratio!r}")
        _require(_finite(self.temperature) and self.temperature > 0, f"temperature must be > 0, not {self.temperature!r}")
        _require(self.teacher_mode in ("cache", "online"), f"teacher_mode must be 'cache' or 'online', not {self.teacher_mode!r}")
        _require(self.cache_dtype in ("float16", "float32"), f"cache_dtype must be float16 or float32, not {self.cache_dtype!r}")


ACTION_SPACES = ("multibinary", "box", "discrete")


@dataclass
class EnvConfig:
    """The knowledge-selection environment: what is offered, how episodes are cut, how rewarded."""

    knowledge: list[str] = option(factory=lambda: ["logits", "hidden", "gradient"],
                                  help="knowledge types the agent chooses among")
    base_weights: dict[str, float] = option(factory=lambda: {"ce": 1.0}, help="always-on terms", flag=False)
    action_space: str = option("multibinary", "'multibinary' (on/off), 'box' (weights in [0,1]), 'discrete' (2^K subsets)",
                               flag=False)
    phases: int = option(DEFAULT_BUDGET.phases, "phases (agent decisions) per episode")
    updates_per_phase: int = option(DEFAULT_BUDGET.updates_per_phase, "student updates per phase")
    episode_epochs: float | None = option(DEFAULT_BUDGET.episode_epochs, "if set, updates_per_phase is derived: "
                                          "one episode makes this many passes over train", flag=False)
    reward: str = option(DEFAULT_BUDGET.reward, "reward on the reward split (see kdenv/decision/rewards.py)")
    reward_scale: float = option(10.0, "multiplier of the task reward (metric gains are ~0.01)")
    exploration_bonus: float = option(0.0, "count-based exploration bonus beta (0: off)")
    crash_penalty: float = option(-1.0, "reward when a phase hits NaN/inf (the episode ends)", flag=False)
    cls_state: bool = option(False, "add the teacher's and student's [CLS] vectors to the observation (Dict)")
    probe_size: int = option(16, "reward examples in the [CLS] probe batch", flag=False)

    def __post_init__(self) -> None:
        _plain_numbers(self)
        self.knowledge = list(self.knowledge)
        _require(len(self.knowledge) > 0, "offer at least one knowledge type (e.g. knowledge=['logits', 'gradient'])")
        duplicates = sorted({name for name in self.knowledge if self.knowledge.count(name) > 1})
        _require(not duplicates, f"knowledge {duplicates} offered twice; name each type once")
        overlap = sorted(set(self.knowledge) & set(self.base_weights))
        _require(not overlap, f"{overlap} is both offered and always on (base_weights); choose one")
        for name, weight in self.base_weights.items():
            _require(_finite(weight) and weight >= 0, f"base weight of {name!r} must be a finite number >= 0, not {weight!r}")
        _require(self.action_space in ACTION_SPACES, f"action_space must be one of {ACTION_SPACES}, not {self.action_space!r}")
        _require(_is_whole(self.phases) and self.phases >= 1,
                 f"phases must be a whole number >= 1, not {self.phases!r}")
        _require(_is_whole(self.updates_per_phase) and self.updates_per_phase >= 1,
                 f"updates_per_phase must be a whole number >= 1, not {self.updates_per_phase!r}")
        _require(self.episode_epochs is None or (_finite(self.episode_epochs) and self.episode_epochs > 0),
                 f"episode_epochs must be > 0 or unset, not {self.episode_epochs!r}")
        _require(_finite(self.reward_scale) and self.reward_scale != 0,
                 f"reward_scale must be a finite non-zero number, not {self.reward_scale!r}")
        _require(_finite(self.exploration_bonus) and self.exploration_bonus >= 0,
                 f"exploration_bonus must be a finite number >= 0, not {self.exploration_bonus!r}")
        _require(_finite(self.crash_penalty), f"crash_penalty must be finite, not {self.crash_penalty!r}")
        _require(_is_whole(self.probe_size) and self.probe_size >= 1, f"probe_size must be >= 1, not {self.probe_size!r}")

    def resolved(self, train_examples: int, batch_size: int) -> EnvConfig:
        """This config with ``updates_per_phase`` settled: with ``episode_epochs`` set, the updates that
        make that many passes over ``train_examples`` in ``phases`` phases; otherwise unchanged."""
        if self.episode_epochs is None:
            return self
        batches_per_epoch = math.ceil(train_examples / batch_size)
        updates = math.ceil(self.episode_epochs * batches_per_epoch / self.phases)
        return dataclasses.replace(self, updates_per_phase=max(1, updates))

    @property
    def total_updates(self) -> int:
        return self.phases * self.updates_per_phase


def crash_return(config: EnvConfig | None = None) -> float:
    """A crashed episode's penalty in task-reward units (the units of returns before scaling, in
    which tables, the oracle and every leaderboard figure are stated): the crash penalty the
    environment gives as a reward, divided by its reward scale. The one definition: the table
    environment gives ``crash_return() * reward_scale`` and a return adds ``crash_return()``."""
    config = config or EnvConfig()
    return config.crash_penalty / config.reward_scale


def budget_env_fields(budget: Budget, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The EnvConfig fields a budget sets. ``given`` (the env fields set on the command line):
    an explicit ``updates_per_phase`` replaces the budget's ``episode_epochs``, which would derive it."""
    fields = {"phases": budget.phases, "updates_per_phase": budget.updates_per_phase or 1,
              "episode_epochs": budget.episode_epochs, "reward": budget.reward}
    if "updates_per_phase" in (given or {}):
        fields["episode_epochs"] = None
    return fields


def budget_help_defaults() -> dict[str, str]:
    """For --help: the value each --preset gives the fields a budget sets, e.g. ``cpu: 4, gpu: 10``."""
    def values(budget: Budget) -> dict[str, Any]:
        env = budget_env_fields(budget)
        if budget.updates_per_phase is None:
            env["updates_per_phase"] = "from episode_epochs"
        return {**env, "max_reward_examples": budget.max_reward_examples, "student_layers": budget.student_layers,
                "teacher_model": budget.teacher_model or "the saved teacher"}

    per_preset = {name: values(budget) for name, budget in BUDGETS.items()}
    return {field: "per --preset: " + ", ".join(f"{name} {preset[field]}" for name, preset in per_preset.items())
            for field in per_preset["cpu"]}


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


# Fields renamed for what they count: old name -> new name. Records written before keep the old
# names, and read back through from_dict; the tree work folders' keys are computed with the old
# names (recorded_names), so a build keeps its folder across the rename.
RENAMED_FIELDS: dict[str, dict[str, str]] = {
    "DistillConfig": {"epochs": "distill_epochs"},
    "EnvConfig": {"epochs": "episode_epochs"},
}


def current_names(cls: type, values: dict[str, Any], warn: bool = False) -> dict[str, Any]:
    """``values`` with the old names of renamed fields replaced by the new ones (``warn``: say so, in one
    line, for a dict a user wrote); both names at once are refused."""
    renamed = RENAMED_FIELDS.get(cls.__name__, {})
    out = dict(values)
    for old, new in renamed.items():
        if old in out:
            if new in out:
                raise ConfigError(f"{cls.__name__} was given both {old!r} and its new name {new!r}; keep {new!r}")
            out[new] = out.pop(old)
            if warn:
                warnings.warn(f"{cls.__name__} field {old!r} is now {new!r}; the old name works for one release",
                              DeprecationWarning, stacklevel=3)
    return out


def recorded_names(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` under the field names records carried before the renames (for keys that must not move)."""
    back = {new: old for old, new in RENAMED_FIELDS.get(cls.__name__, {}).items()}
    return {back.get(key, key): value for key, value in values.items()}


def from_dict(cls: type, values: dict[str, Any], warn_renamed: bool = False) -> Any:
    """Builds a config dataclass, refusing unknown keys (a typo should not silently do nothing). Old
    names of renamed fields are read as the new ones (``warn_renamed``: with a deprecation line)."""
    values = current_names(cls, values, warn=warn_renamed)
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(known)}")
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
        "torch_threads": str(torch.get_num_threads()),
        "numerics": numerics.describe(),
        "command": " ".join(sys.argv),
    }


def save_run_config(path: str | Path, seeds: dict[str, int], teacher: dict[str, Any] | None = None,
                    **sections: Any) -> Path:
    """Writes every config section, the seeds, the teacher's identity and the software versions to one YAML file."""
    record = {name: section if isinstance(section, dict) else to_dict(section) for name, section in sections.items()
              if section is not None}  # an absent section (no pre-trained student) is left out
    record["seeds"] = seeds
    if teacher is not None:
        record["teacher"] = teacher
    record["environment"] = environment_record()
    path = Path(path)
    with atomic_write(path) as handle:
        yaml.safe_dump(record, handle, sort_keys=False)
    return path


def load_run_config(path: str | Path, **classes: type) -> dict[str, Any]:
    """Reads a saved run config back into dataclasses (sections named in ``classes``)."""
    record = yaml.safe_load(Path(path).read_text())
    return {name: from_dict(cls, record[name]) for name, cls in classes.items()}
