"""The prefix-sharing wrapper on a stand-in environment that forks: what it restores, what it keeps
within its byte budget, and what it refuses."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from kdenv.decision.shared_prefixes import SharedPrefixes, action_key, can_share, state_bytes


class Counting(gym.Env):
    """A fork-able environment whose state is a tensor of the actions taken; counts the phases it trains."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Discrete(4)

    def __init__(self, bonus=0.0):
        self.config = type("Config", (), {"exploration_bonus": bonus})()
        self.trained = 0
        self.value = torch.zeros(256)  # 1 KB of state

    def reset(self, *, seed=None, options=None):
        self.value = torch.full((256,), float(seed))
        return np.array([self.value.sum().item()], np.float32), {}

    def step(self, action):
        self.trained += 1
        self.value = self.value * 10 + int(action)
        return np.array([self.value[0].item()], np.float32), float(action), False, False, {"action": int(action)}

    def get_state(self):
        return {"value": self.value.clone()}

    def set_state(self, state):
        self.value = state["value"].clone()


def play(env, seed, actions):
    env.reset(seed=seed)
    return [env.step(a)[0][0] for a in actions]


def test_a_replayed_prefix_gives_what_training_gives_and_counts_itself():
    alone, shared = Counting(), SharedPrefixes(Counting())
    for seed, actions in [(1, [2, 3, 1]), (1, [2, 3, 0]), (1, [2, 1, 1]), (1, [2, 3, 1]), (2, [2, 3, 1])]:
        assert play(shared, seed, actions) == play(alone, seed, actions)
    # seed 1: 3 + 1 + 2 + 0 phases trained; a new seed starts afresh: 3 more
    assert shared.env.trained == 9 and alone.trained == 15
    play(shared, 2, [2, 3, 1])
    assert shared.reused == 3 and shared.env.trained == 9
    assert shared.held_bytes == 3 * 1024  # only seed 2's three nodes are held


def test_within_no_budget_nothing_is_kept_and_everything_is_trained():
    shared = SharedPrefixes(Counting(), budget_bytes=0)
    play(shared, 1, [2, 3])
    play(shared, 1, [2, 3])
    assert shared.env.trained == 4 and shared.reused == 0 and shared.held_bytes == 0


def test_what_cannot_share_is_refused():
    assert not can_share(Counting(bonus=0.1)) and can_share(Counting())
    with pytest.raises(ValueError, match="exploration bonus"):
        SharedPrefixes(Counting(bonus=0.1))
    with pytest.raises(ValueError, match="seed="):
        SharedPrefixes(Counting()).reset()


def test_keys_and_sizes():
    assert action_key(np.array([1, 0, 1], np.int8)) == (1, 0, 1) and action_key(3) == (3,)
    assert action_key(np.array([0.5, 1.0])) != action_key(np.array([0.5, 0.999]))
    assert state_bytes({"a": torch.zeros(10), "b": [np.zeros(4, np.float64)], "c": 3}) == 40 + 32
