"""KnowledgeDistillationEnv: distillation as a Gymnasium environment.

An episode is one distillation run from the same initial student; a step is one phase: the
action fixes the weight of each offered knowledge type, the trainer runs ``updates_per_phase``
updates, and the reward split (never GLUE dev) is evaluated for the reward.

Observation (``Box(-1, 1)``, float32), feature by feature (K = number of offered types):

====================  ==========================================================================
index                 feature
====================  ==========================================================================
0                     progress: phases done / phases
1                     reward-split metric after the last phase
2                     best reward-split metric so far in the episode
3                     metric change over the last phase, ×10, clipped
4                     reward-split loss relative to the initial one (loss / initial − 1), clipped
5                     loss change over the last phase relative to the initial loss, ×10, clipped
6                     teacher–student agreement on the reward split (label agreement; corr. for STS-B)
7                     learning rate / peak learning rate
8 … 8+K−1             each type's last measured raw loss relative to its first (ratio − 1), clipped
8+K … 8+2K−1          each type's share of the summed per-type gradient norms in the last phase
8+2K … 8+3K−1         the previous action's weight of each type
====================  ==========================================================================

With ``EnvConfig.cls_state`` the observation is a ``Dict`` holding these features under
``features`` and, as in the knowledge-selection paper, the teacher's and the student's mean
last-layer [CLS] vectors on a fixed probe batch of reward examples (``teacher_cls``, ``student_cls``,
squashed by tanh).
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from kdenv.config import ACTION_SPACES, EnvConfig
from kdenv.decision.rewards import RewardInput, get_reward
from kdenv.engine.data import collate
from kdenv.engine.trainer import StudentTrainer

__all__ = ["ACTION_SPACES", "BASE_FEATURES", "KnowledgeDistillationEnv", "SpacesOnlyEnv", "WallTime", "make_spaces", "weights_to_action"]

BASE_FEATURES = 8


class WallTime(float):
    """Seconds on the wall clock. Any two compare equal: determinism checks (gymnasium's
    ``check_env`` compares ``info`` dicts across identical runs) should judge the computation,
    not the clock. Otherwise it is a plain float."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WallTime) or float.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = float.__hash__


def make_spaces(config: EnvConfig, cls_sizes: tuple[int, int] | None = None) -> tuple[spaces.Space, spaces.Space]:
    """The action and observation spaces of an environment with ``config``; ``cls_sizes`` are the
    teacher's and the student's hidden sizes (needed with ``cls_state``)."""
    num_types = len(config.knowledge)
    if config.action_space == "multibinary":
        action_space = spaces.MultiBinary(num_types)
    elif config.action_space == "box":
        action_space = spaces.Box(0.0, 1.0, shape=(num_types,), dtype=np.float32)
    else:
        action_space = spaces.Discrete(2**num_types)
    features = spaces.Box(-1.0, 1.0, shape=(BASE_FEATURES + 3 * num_types,), dtype=np.float32)
    if not config.cls_state:
        return action_space, features
    if cls_sizes is None:
        raise ValueError("cls_state needs the teacher's and the student's hidden sizes")
    return action_space, spaces.Dict({
        "features": features,
        "teacher_cls": spaces.Box(-1.0, 1.0, shape=(cls_sizes[0],), dtype=np.float32),
        "student_cls": spaces.Box(-1.0, 1.0, shape=(cls_sizes[1],), dtype=np.float32),
    })


def weights_to_action(weights: dict[str, float], knowledge: list[str], action_space: str):
    """An action of ``action_space`` over ``knowledge`` for per-type weights: the weights themselves
    (``box``), or on/off bits rounded at 0.5 (``multibinary``), or their subset index (``discrete``,
    bit k switches type k)."""
    values = np.array([weights.get(name, 0.0) for name in knowledge], dtype=np.float32)
    if action_space == "box":
        return np.clip(values, 0.0, 1.0)
    bits = (values >= 0.5).astype(np.int8)
    if action_space == "multibinary":
        return bits
    return int(sum(int(bit) << k for k, bit in enumerate(bits)))


def action_weights(action, knowledge: list[str], action_space: str) -> dict[str, float]:
    """The weight of each offered type for an action of ``action_space`` over ``knowledge``: the one
    action check of both environments (live and table). ``discrete``: one integer in [0, 2^K), bit
    k switching type k; ``multibinary``: K values of exactly 0 or 1; ``box``: K finite numbers,
    clipped to [0, 1]. Anything else (a float, a string, NaN or inf, the wrong shape) is refused
    with a ValueError that names the space and what to pass."""
    num_types = len(knowledge)
    try:
        array = np.asarray(action)
    except (TypeError, ValueError):
        array = np.asarray(None)
    if action_space == "discrete":
        if array.size != 1 or not np.issubdtype(array.dtype, np.integer) or not 0 <= int(array.reshape(-1)[0]) < 2**num_types:
            raise ValueError(f"action {action!r} does not fit Discrete({2**num_types}) over {knowledge}: "
                             f"pass one integer in [0, {2**num_types}); bit k switches {knowledge[0]}…")
        index = int(array.reshape(-1)[0])
        return {name: float((index >> k) & 1) for k, name in enumerate(knowledge)}
    if array.shape != (num_types,) or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"action {action!r} of shape {array.shape} does not fit the {action_space} action space over "
                         f"{knowledge}: pass a length-{num_types} vector of numbers")
    values = array.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"action {action!r} holds NaN or inf")
    if action_space == "multibinary":
        if not np.all((values == 0) | (values == 1)):
            raise ValueError(f"MultiBinary action must hold only 0 and 1, got {action!r}")
    else:
        values = np.clip(values, 0.0, 1.0)
    return {name: float(value) for name, value in zip(knowledge, values)}


class SpacesOnlyEnv(gym.Env):
    """An environment with the spaces of a configuration and no trainer behind it: an agent can be
    constructed on it (checking its hyperparameters) before the expensive environment is built."""

    def __init__(self, config: EnvConfig, cls_sizes: tuple[int, int] | None = None):
        self.action_space, self.observation_space = make_spaces(config, cls_sizes)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


@dataclass
class EpisodeState:
    """Everything the rest of an episode depends on besides the trainer: what the observation and
    the rewards are computed from. Public (``env.episode``) so that a tree builder or a debugger
    reads it by name; :meth:`KnowledgeDistillationEnv.get_state` copies it with the trainer."""

    initial: dict[str, float]  # the reward-split evaluation of the initial student
    metric_name: str
    num_types: int
    phase: int = 0
    episode_seed: int | None = None
    terminated: bool = False
    metric: float = 0.0
    best: float = 0.0
    metric_change: float = 0.0
    loss: float = 0.0
    loss_change: float = 0.0
    agreement: float = 0.0
    first_losses: dict[str, float] = field(default_factory=dict)
    last_losses: dict[str, float] = field(default_factory=dict)
    grad_share: np.ndarray | None = None
    previous_action: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.metric = self.best = self.initial[self.metric_name]
        self.loss = self.initial["loss"]
        self.agreement = self.initial.get("agreement", 0.0)
        if self.grad_share is None:
            self.grad_share = np.zeros(self.num_types, dtype=np.float32)
        if self.previous_action is None:
            self.previous_action = np.zeros(self.num_types, dtype=np.float32)

    def reward_input(self, evaluation: dict[str, float], terminal: bool) -> RewardInput:
        """What every reward function reads for a phase that ended with ``evaluation``."""
        return RewardInput(metric_before=self.metric, metric_after=evaluation[self.metric_name],
                           loss_before=self.loss, loss_after=evaluation["loss"],
                           metric_initial=self.initial[self.metric_name], terminal=terminal,
                           agreement_before=self.agreement, agreement_after=evaluation.get("agreement", 0.0))

    def update(self, evaluation: dict[str, float], stats, weights: dict[str, float], knowledge: list[str]) -> None:
        """The state after a phase that ended with ``evaluation`` (its stats, the action's weights)."""
        metric = evaluation[self.metric_name]
        self.metric_change, self.metric = metric - self.metric, metric
        self.best = max(self.best, metric)
        self.loss_change, self.loss = evaluation["loss"] - self.loss, evaluation["loss"]
        self.agreement = evaluation.get("agreement", 0.0)
        for name, value in stats.losses.items():
            self.first_losses.setdefault(name, value)
            self.last_losses[name] = value
        norms = np.array([stats.grad_norms.get(name, 0.0) for name in knowledge], dtype=np.float64)
        self.grad_share = (norms / norms.sum() if norms.sum() > 0 else norms).astype(np.float32)
        self.previous_action = np.array([weights[name] for name in knowledge], dtype=np.float32)


class KnowledgeDistillationEnv(gym.Env):
    """Each step chooses the knowledge mix of the next distillation phase."""

    metadata = {"render_modes": []}

    def __init__(self, trainer: StudentTrainer, config: EnvConfig, teacher_probe_cls: np.ndarray | None = None):
        super().__init__()
        unknown = [name for name in config.knowledge if name not in trainer.knowledge]
        if unknown:
            raise ValueError(f"knowledge {unknown} offered by the environment but not built into the trainer "
                             f"(trainer has {list(trainer.knowledge)})")
        missing_base = [name for name in config.base_weights if name not in trainer.knowledge]
        if missing_base:
            raise ValueError(f"always-on knowledge {missing_base} is not built into the trainer "
                             f"(trainer has {list(trainer.knowledge)})")
        self.trainer, self.config = trainer, config
        self.knowledge = list(config.knowledge)
        self.num_types = len(self.knowledge)
        self._probe = None
        cls_sizes = None
        if config.cls_state:
            if teacher_probe_cls is None:
                raise ValueError("cls_state needs the teacher's probe [CLS] vector (teacher_probe_cls)")
            reward_split = trainer.data["reward"]
            probe = list(range(min(config.probe_size, len(reward_split))))
            self._probe = collate(reward_split, probe, trainer.data.pad_token_id)
            self._teacher_cls = np.tanh(np.asarray(teacher_probe_cls, dtype=np.float32))
            cls_sizes = (self._teacher_cls.shape[0], trainer.student.config.hidden_size)
        self.action_space, self.observation_space = make_spaces(config, cls_sizes)
        self._reward_fn = get_reward(config.reward)
        self._initial_snapshot = trainer.snapshot()
        # The initial student's reward-split evaluation, and its outputs there (a table keeps them).
        self.initial_eval, self.initial_outputs = trainer.evaluate_with_outputs("reward")
        self._peak_lr = trainer.config.learning_rate
        self._action_counts: Counter = Counter()
        self.episode_index = -1
        self.episode = self._new_episode(None)

    # ------------------------------------------------------------------ gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        episode_seed = seed if seed is not None else int(self.np_random.integers(2**31 - 1))
        self.trainer.restore(self._initial_snapshot)
        self.trainer.reseed(episode_seed)
        self.episode_index += 1
        self.episode = self._new_episode(episode_seed)
        return self._observation(), {"episode_seed": episode_seed, "metric": self.episode.metric}

    @property
    def phase(self) -> int:
        return self.episode.phase

    @property
    def episode_seed(self) -> int | None:
        return self.episode.episode_seed

    def step(self, action):
        episode = self.episode
        if episode.terminated:
            raise RuntimeError("the episode is over (the last step returned terminated=True): call env.reset() before "
                               "stepping again")
        weights = self.action_to_weights(action)
        full_weights = {**self.config.base_weights, **weights}
        start = time.perf_counter()
        stats = self.trainer.run_phase(full_weights, self.config.updates_per_phase)
        episode.phase += 1
        info: dict[str, Any] = {
            "phase": episode.phase, "weights": full_weights, "action_weights": weights, "status": stats.status,
            "losses": stats.losses, "normalized_losses": stats.normalized_losses, "grad_norms": stats.grad_norms,
            "learning_rate": stats.learning_rate, "updates": self.trainer.updates_done,
        }
        if stats.status != "ok":
            info.update(crash=stats.message, phase_wall_time_s=WallTime(time.perf_counter() - start),
                        task_reward=self.config.crash_penalty, exploration_bonus=0.0)
            episode.previous_action = np.array([weights[name] for name in self.knowledge], dtype=np.float32)
            episode.terminated = True
            return self._observation(), float(self.config.crash_penalty), True, False, info
        evaluation, outputs = self.trainer.evaluate_with_outputs("reward")
        terminal = episode.phase >= self.config.phases
        reward_input = episode.reward_input(evaluation, terminal)
        task_reward = self._reward_fn(reward_input) * self.config.reward_scale
        bonus = self._exploration_bonus(weights)
        episode.update(evaluation, stats, weights, self.knowledge)
        info.update(
            metric=episode.metric, loss=episode.loss, agreement=evaluation.get("agreement", 0.0),
            reward_split=evaluation, reward_outputs=outputs, reward_input=reward_input, task_reward=task_reward,
            exploration_bonus=bonus,
            phase_wall_time_s=WallTime(time.perf_counter() - start),
        )
        episode.terminated = terminal
        return self._observation(), float(task_reward + bonus), terminal, False, info

    # ------------------------------------------------------------------ fork: state in, state out

    def get_state(self) -> dict[str, Any]:
        """Everything that determines the rest of the episode (trainer snapshot and the episode's
        observation state), copied: :meth:`set_state` forks the episode from here, any number of
        times, each continuation seeing the same batches and dropout draws (CompilerGym's fork)."""
        return {"trainer": self.trainer.snapshot(), "episode": copy.deepcopy(self.episode),
                "action_counts": copy.deepcopy(self._action_counts)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.trainer.restore(state["trainer"])
        self.episode = copy.deepcopy(state["episode"])
        self._action_counts = copy.deepcopy(state["action_counts"])

    # ------------------------------------------------------------------ actions

    def action_to_weights(self, action) -> dict[str, float]:
        """The offered types' weights for an action of this environment's action space."""
        return action_weights(action, self.knowledge, self.config.action_space)

    def weights_to_action(self, weights: dict[str, float]):
        """The inverse of :meth:`action_to_weights` (hard spaces round weights at 0.5)."""
        return weights_to_action(weights, self.knowledge, self.config.action_space)

    def _exploration_bonus(self, weights: dict[str, float]) -> float:
        """Count-based bonus β/√n for the n-th use of a (rounded) action over the env's lifetime."""
        if self.config.exploration_bonus <= 0:
            return 0.0
        key = tuple(round(weights[name], 1) for name in self.knowledge)
        self._action_counts[key] += 1
        return self.config.exploration_bonus / math.sqrt(self._action_counts[key])

    # ------------------------------------------------------------------ state and observation

    def _new_episode(self, episode_seed: int | None) -> EpisodeState:
        return EpisodeState(self.initial_eval, self.trainer.task.primary_metric, self.num_types,
                            episode_seed=episode_seed)

    def _observation(self):
        episode = self.episode
        initial_loss = max(self.initial_eval["loss"], 1e-8)
        loss_ratios = [
            episode.last_losses[name] / max(episode.first_losses[name], 1e-8) - 1.0 if name in episode.last_losses else 0.0
            for name in self.knowledge
        ]
        lr = self.trainer.learning_rate / self._peak_lr if self._peak_lr else 0.0
        features = np.concatenate([
            [
                episode.phase / self.config.phases, episode.metric, episode.best, 10 * episode.metric_change,
                episode.loss / initial_loss - 1.0, 10 * episode.loss_change / initial_loss, episode.agreement, lr,
            ],
            loss_ratios, episode.grad_share, episode.previous_action,
        ])
        features = np.clip(np.nan_to_num(features), -1.0, 1.0).astype(np.float32)
        if self._probe is None:
            return features
        student_cls = np.tanh(self.trainer.probe_cls(self._probe)).astype(np.float32)
        return {"features": features, "teacher_cls": self._teacher_cls.copy(), "student_cls": student_cls}
