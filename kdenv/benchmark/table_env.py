"""The knowledge-selection environment replayed from a schedule table: the live environment's
spaces and rewards, no teacher, no model, no GLUE files, microseconds per step.

Registered as ``kdenv/KnowledgeSelectionTable-v0``: ``gymnasium.make("kdenv/KnowledgeSelectionTable-v0",
task="stsb")`` loads the table shipped in ``kdenv/tables/stsb/``; ``table=`` a name or a folder.
Each ``reset`` draws one of the table's seeds (``seeds=`` restricts the draw: train/test splits
over seeds); ``reset(options={"table_seed": s})`` picks one.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import replace
from typing import Any

import gymnasium as gym
import numpy as np

from kdenv.benchmark.table import Table, TableError, resolve_table, table_env_config
from kdenv.cli import parse_seeds
from kdenv.config import ACTION_SPACES, EnvConfig, crash_return
from kdenv.decision.env import action_weights, make_spaces, weights_to_action
from kdenv.decision.rewards import REWARDS

REWARD_SCALE = EnvConfig().reward_scale  # the live environment's: one definition, in kdenv.config


class KnowledgeSelectionTableEnv(gym.Env):
    """Steps through a table's trees; observations and rewards are those the live env returned."""

    metadata = {"render_modes": []}

    def __init__(self, table: Table, seeds: list[int] | None = None, reward: str = "metric_gain",
                 reward_scale: float = REWARD_SCALE, action_space: str = "discrete", exploration_bonus: float = 0.0):
        super().__init__()
        for name, value in (("reward_scale", reward_scale), ("exploration_bonus", exploration_bonus)):
            if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) \
                    or not np.isfinite(value):
                raise ValueError(f"{name} must be a finite number, not {value!r}; e.g. {name}=10.0")
        if not exploration_bonus >= 0:
            raise ValueError(f"exploration_bonus must be >= 0, not {exploration_bonus!r}")
        self.exploration_bonus = float(exploration_bonus)
        self._action_counts: dict[int, int] = {}
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; registered: {', '.join(REWARDS)}")
        if action_space not in ACTION_SPACES:
            raise ValueError(f"action_space must be one of {ACTION_SPACES}, not {action_space!r}")
        seeds = table.seeds if seeds is None else parse_seeds(seeds, "seeds")
        unknown = sorted(set(seeds) - set(table.seeds))
        if not seeds or unknown:
            raise TableError(f"seeds {unknown or seeds} are not in the table (it has {table.seeds})")
        if table.manifest["env"].get("cls_state"):
            raise TableError("tables hold the feature observation only (cls_state off)")
        self.table, self.seeds, self.reward, self.reward_scale = table, seeds, reward, float(reward_scale)
        self.knowledge = table.knowledge
        # The live environment the table was built with, acting in this env's space and reward.
        self.config = replace(table_env_config(table), action_space=action_space, reward=reward,
                              reward_scale=reward_scale, exploration_bonus=0.0)
        self.action_space, self.observation_space = make_spaces(self.config)
        self._nodes: dict[tuple[int, ...], dict[str, Any]] = {}
        self._observations: dict[int, dict[tuple[int, ...], np.ndarray]] = {
            seed: {history: np.asarray(node["observation"], dtype=np.float32) for history, node in table.nodes[seed].items()}
            for seed in seeds}
        self._history: tuple[int, ...] = ()
        self._done = True
        self.table_seed = seeds[0]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        chosen = (options or {}).get("table_seed")
        if chosen is None:
            chosen = self.seeds[int(self.np_random.integers(len(self.seeds)))]
        elif isinstance(chosen, bool) or not isinstance(chosen, numbers.Integral) or chosen not in self.seeds:
            raise TableError(f"table_seed {chosen} is not among this environment's seeds {self.seeds}")
        self.table_seed = int(chosen)
        self._nodes = self.table.nodes[self.table_seed]
        self._history, self._done = (), False
        return self._observations[self.table_seed][()].copy(), {"table_seed": self.table_seed}

    def step(self, action):
        if self._done:
            raise RuntimeError("the episode is over: call env.reset() before stepping again")
        index = self.action_index(action)
        self._history = (*self._history, index)
        node = self._nodes[self._history]
        if node["status"] != "ok":
            self._done = True
            penalty = crash_return() * self.reward_scale  # what a return adds: crash_return() in task units
            return self._observations[self.table_seed][self._history].copy(), penalty, True, False, {
                "crash": node.get("crash", ""), "status": node["status"], "history": self._history, "task_reward": penalty}
        reward = node["rewards"][self.reward] * self.reward_scale
        self._done = bool(node["terminal"])
        bonus = 0.0
        if self.exploration_bonus:  # as the live env: beta / sqrt(n) for the n-th use of an action
            self._action_counts[index] = self._action_counts.get(index, 0) + 1
            bonus = self.exploration_bonus / self._action_counts[index] ** 0.5
        info = {"metric": node["metric"], "loss": node["loss"], "task_reward": reward, "exploration_bonus": bonus,
                "action_weights": dict(node["weights"]), "status": "ok", "history": self._history}
        if self._done and "dev" in node:
            info["dev"] = node["dev"]
        return self._observations[self.table_seed][self._history].copy(), float(reward + bonus), self._done, False, info

    def action_index(self, action) -> int:
        """The subset index of an action of this env's space (Box weights round at 0.5), checked
        as the live environment checks it. The arrays agents pass (integers of 0 and 1 for
        MultiBinary, finite floats for Box, of the right shape) take a fast path of plain Python on
        their few values; anything else goes through the one action check, with its errors."""
        space = self.config.action_space
        if space == "discrete" and type(action) in (int, np.int64, np.int32) and 0 <= action < self.table.num_actions:
            return int(action)
        if type(action) is np.ndarray and action.shape == (len(self.knowledge),):
            values = action.tolist()
            if space == "multibinary" and action.dtype.kind in "biu" and all(v == 0 or v == 1 for v in values):
                return sum(int(v) << k for k, v in enumerate(values))
            if space == "box" and action.dtype.kind == "f" and all(math.isfinite(v) for v in values):
                return sum(int(v >= 0.5) << k for k, v in enumerate(values))
        weights = action_weights(action, self.knowledge, space)
        return sum(int(weights[name] >= 0.5) << k for k, name in enumerate(self.knowledge))

    def weights_to_action(self, weights: dict[str, float]):
        """As the live env: fixed policies act here unchanged."""
        return weights_to_action(weights, self.knowledge, self.config.action_space)


def make_table_env(task: str | None = None, table: str | None = None, seeds: list[int] | None = None,
                   reward: str = "metric_gain", reward_scale: float = REWARD_SCALE,
                   action_space: str = "discrete") -> KnowledgeSelectionTableEnv:
    """``gymnasium.make("kdenv/KnowledgeSelectionTable-v0", task="stsb")``: the shipped table of a
    task; ``table=`` takes any table's name (``stsb_h100_u8``) or folder."""
    if (task is None) == (table is None):
        raise TableError("name either task= (a shipped table's task) or table= (a table's name or folder), "
                         "not both or none")
    return KnowledgeSelectionTableEnv(resolve_table(task if task is not None else table), seeds, reward,
                                      reward_scale, action_space)
