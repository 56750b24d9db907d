"""Action-space adapters for algorithms that cannot take the environment's own space."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class MultiDiscreteOnOff(gym.ActionWrapper):
    """Presents a ``MultiBinary(K)`` environment as ``MultiDiscrete([2] * K)``.

    sb3-contrib's RecurrentPPO fails on MultiBinary actions: its Bernoulli distribution takes the
    log-probability of the int8 action tensor, which torch refuses. A categorical over {0, 1}
    per type is the same policy class and works.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        if not isinstance(env.action_space, spaces.MultiBinary):
            raise ValueError(f"MultiDiscreteOnOff wraps MultiBinary action spaces, not {env.action_space}")
        self.action_space = spaces.MultiDiscrete([2] * int(np.prod(env.action_space.shape)))

    def action(self, action):
        return np.asarray(action, dtype=np.int8)
