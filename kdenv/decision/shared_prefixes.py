"""Episodes of one seed that open alike are trained once: a wrapper that keeps the environment's state
after every phase it trains, and when a later episode of the same seed takes the same actions, restores
that state instead of training the phase again.

This is the tree builder's fork (``get_state``/``set_state``: same batches, same dropout draws) applied
to evaluation. On the CPU a restored phase is the phase that would have been trained, to the bit, so
every run's result is what an independent run gives (tests/test_evaluate.py checks it); on CUDA it is
one of the runs the hardware could have given. What a run replayed is counted (``reused_phases``).

States are held in memory (a 3-layer MiniLM student with its Adam moments: about 0.2 GB a state) up to
a byte budget per process; beyond it, phases are trained as usual. An environment with an exploration
bonus is not shared: its rewards count actions over the environment's lifetime, which a replay skips.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
import torch

DEFAULT_BUDGET_BYTES = 4 * 2**30


def action_key(action: Any) -> tuple:
    """An action as a hashable, exact key (an int, a binary vector or weights)."""
    return tuple(np.asarray(action).ravel().tolist())


def state_bytes(state: Any) -> int:
    """The bytes of the tensors and arrays in a (nested) state."""
    if isinstance(state, torch.Tensor):
        return state.element_size() * state.nelement()
    if isinstance(state, np.ndarray):
        return state.nbytes
    if isinstance(state, dict):
        return sum(state_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(value) for value in state)
    if hasattr(state, "state"):  # a trainer Snapshot
        return state_bytes(state.state)
    return 0


def can_share(env: gym.Env) -> bool:
    """Whether episodes of ``env`` can share their prefixes: it forks (get_state) and its rewards depend
    on the episode alone (no exploration bonus)."""
    base = env.unwrapped
    return hasattr(base, "get_state") and not getattr(base.config, "exploration_bonus", 0)


class SharedPrefixes(gym.Wrapper):
    """Trains each (seed, action prefix) once; see the module's docstring. ``reset`` needs a seed."""

    def __init__(self, env: gym.Env, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        if not can_share(env):
            raise ValueError("this environment cannot share prefixes (it cannot fork, or it pays an exploration "
                             "bonus that counts actions over its lifetime)")
        super().__init__(env)
        self.budget_bytes = budget_bytes
        self._seed: int | None = None
        self._nodes: dict[tuple, tuple[dict[str, Any], tuple]] = {}
        self._bytes = 0
        self._history: tuple = ()  # the environment always stands at the state after these actions
        self.reused = 0  # phases replayed in the current episode

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None:
            raise ValueError("SharedPrefixes shares the prefixes of one seed's episodes: reset it with seed=")
        if seed != self._seed:
            self._nodes.clear()
            self._bytes, self._seed = 0, seed
        self._history, self.reused = (), 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        key = (*self._history, action_key(action))
        if key in self._nodes:
            state, result = self._nodes[key]
            self.env.unwrapped.set_state(state)
            self._history = key
            self.reused += 1
            return copy.deepcopy(result)
        result = self.env.step(action)
        self._history = key
        if self._bytes < self.budget_bytes:
            state = self.env.unwrapped.get_state()
            size = state_bytes(state)
            if self._bytes + size <= self.budget_bytes:
                self._nodes[key] = (state, copy.deepcopy(result))
                self._bytes += size
        return result
