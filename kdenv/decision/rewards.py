"""Reward functions of the environment, by name. Each sees the reward-split evaluation before and
after a phase (and the episode's first one) and returns a float; none ever sees GLUE dev."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RewardInput:
    metric_before: float
    metric_after: float
    loss_before: float
    loss_after: float
    metric_initial: float
    terminal: bool
    # agreement with the teacher on the reward split: the correlation of their scores for regression,
    # the share of equal predicted labels for classification
    agreement_before: float = 0.0
    agreement_after: float = 0.0


RewardFn = Callable[[RewardInput], float]
REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    def add(function: RewardFn) -> RewardFn:
        REWARDS[name] = function
        return function

    return add


@register_reward("metric_gain")
def metric_gain(step: RewardInput) -> float:
    """Change of the task metric on the reward split; the return telescopes to final − initial."""
    return step.metric_after - step.metric_before


@register_reward("loss_decrease")
def loss_decrease(step: RewardInput) -> float:
    """Decrease of the reward-split cross-entropy (the knowledge-selection paper's reward)."""
    return step.loss_before - step.loss_after


@register_reward("log_loss")
def log_loss_decrease(step: RewardInput) -> float:
    """log(loss before) − log(loss after): scale-free (DACBench's learning-rate control reward)."""
    return math.log(max(step.loss_before, 1e-12)) - math.log(max(step.loss_after, 1e-12))


@register_reward("final_metric")
def final_metric(step: RewardInput) -> float:
    """Zero until the last phase, then the episode's metric gain (sparse, terminal only)."""
    return step.metric_after - step.metric_initial if step.terminal else 0.0


@register_reward("teacher_agreement")
def teacher_agreement(step: RewardInput) -> float:
    """Change of the student's agreement with the teacher on the reward split. A reward that reads no
    label: on the long-horizon regime's first seed it ranks schedules as dev does about as well as
    metric_gain, and more reliably at 256 examples (docs/benchmark.md, Regimes)."""
    return step.agreement_after - step.agreement_before


# What a table's records store; any other reward is derived from a node and its parent when a table
# loads (kdenv.benchmark.table.derive_rewards), so tables built before it was added offer it too.
RECORDED_REWARDS = ("metric_gain", "loss_decrease", "log_loss", "final_metric")


def get_reward(name: str) -> RewardFn:
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; registered: {', '.join(REWARDS)}")
    return REWARDS[name]
