"""Fixed knowledge-selection policies: the baselines every learned schedule must beat: the named
ones, a constant subset (``only-hidden+gradient``) and a fixed subset per phase
(``schedule-hidden+gradient/gradient/hidden``: what an open-loop schedule chosen on a table plays).

They answer ``predict(observation, state, episode_start, deterministic)`` like a
stable-baselines3 model, so the same evaluation code runs agents and baselines. A policy reads
the phase from the observation's progress feature (index 0) and returns an action of the
environment's action space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kdenv.engine.recipes import RECIPES

WeightFn = Callable[[int, int, np.random.Generator, list[str]], dict[str, float]]


def _all_on(phase, phases, rng, knowledge):
    return {name: 1.0 for name in knowledge}


def _none(phase, phases, rng, knowledge):
    return {name: 0.0 for name in knowledge}


def _random_hard(phase, phases, rng, knowledge):
    return {name: float(rng.integers(0, 2)) for name in knowledge}


def _random_soft(phase, phases, rng, knowledge):
    return {name: float(rng.uniform()) for name in knowledge}


def _progress(phase, phases):
    return phase / max(phases - 1, 1)


def _linear_increase(phase, phases, rng, knowledge):
    return {name: _progress(phase, phases) for name in knowledge}


def _linear_decrease(phase, phases, rng, knowledge):
    return {name: 1.0 - _progress(phase, phases) for name in knowledge}


def _only(kinds: list[str]) -> WeightFn:
    def weights(phase, phases, rng, knowledge):
        return {name: float(name in kinds) for name in knowledge}

    return weights


def only_types(name: str) -> list[str]:
    """The types an ``only-<a>[+<b>...]`` policy keeps on in every phase (a constant subset)."""
    return [kind for kind in name.removeprefix("only-").split("+") if kind]


def schedule_types(name: str) -> list[list[str]]:
    """The types a ``schedule-<subset>/<subset>/...`` policy keeps on in each phase, one subset a phase
    (``none``: no teacher knowledge that phase), e.g. schedule-hidden+gradient/gradient/hidden."""
    return [[] if subset == "none" else subset.split("+") for subset in name.removeprefix("schedule-").split("/")]


def _schedule(phases: list[list[str]]) -> WeightFn:
    def weights(phase, count, rng, knowledge):
        if not 0 <= phase < len(phases):
            raise ValueError(f"a schedule of {len(phases)} phases was asked for phase {phase}")
        return {name: float(name in phases[phase]) for name in knowledge}

    return weights


def recipe_knowledge(name: str) -> list[str]:
    """The types a recipe switches on besides `ce` (which is the environment's base term)."""
    return [k for k, w in RECIPES[name].weights.items() if w > 0 and k != "ce"]


def _recipe(name: str) -> WeightFn:
    recipe = RECIPES[name]

    def weights(phase, phases, rng, knowledge):
        return {k: float(recipe.weights.get(k, 0.0)) for k in knowledge}

    return weights


BASE_POLICIES: dict[str, WeightFn] = {
    "all": _all_on,
    "none": _none,
    "random-hard": _random_hard,
    "random-soft": _random_soft,
    "linear-increase": _linear_increase,
    "linear-decrease": _linear_decrease,
    # Recipes that also set training (the *-paper ones) cannot be a schedule inside an environment
    # whose trainer is already built: run them with agents/distill.py.
    **{name: _recipe(name) for name, recipe in RECIPES.items() if not recipe.training},
}


def _check_subset(name: str, kinds: list[str], knowledge: list[str], how: str) -> None:
    """One subset of a policy's name: each type named once (``how``: the fix when not), each offered."""
    if "" in kinds or len(set(kinds)) != len(kinds):
        raise ValueError(f"policy {name!r}: {how}")
    for kind in kinds:
        if kind not in knowledge:
            raise ValueError(f"policy {name!r}: {kind!r} is not offered ({','.join(knowledge)}); offer it with "
                             f"--knowledge")


def check_policy(name: str, knowledge: list[str], phases: int | None = None) -> None:
    """Refuses, with the fix, a fixed policy that cannot run in an environment offering ``knowledge``
    (and, for a ``schedule-`` policy, of ``phases`` phases where given)."""
    if name.startswith("schedule-"):
        for subset in name.removeprefix("schedule-").split("/"):
            if subset != "none":
                _check_subset(name, subset.split("+"), knowledge, "name one subset a phase, separated by '/': its "
                              "types joined by '+', each once, or none; e.g. schedule-hidden+gradient/gradient/hidden")
        count = len(schedule_types(name))
        if phases is not None and count != phases:
            raise ValueError(f"policy {name!r} names {count} phases, but the episode has {phases}: name one subset "
                             f"per phase (or set --phases {count})")
        return
    if name.startswith("only-"):
        _check_subset(name, only_types(name) or [""], knowledge,
                      "name the types to keep on once each, e.g. only-gradient or only-hidden+gradient")
        return
    if name in RECIPES and RECIPES[name].training:
        raise ValueError(f"{name!r} sets its own training recipe (raw losses, learning rate, student), so it cannot be "
                         f"a schedule in this environment; run it with: python agents/distill.py --knowledge {name}")
    if name not in BASE_POLICIES:
        raise ValueError(f"unknown policy {name!r}; fixed policies: {', '.join(policy_names(knowledge))}")
    if name in RECIPES:
        missing = [k for k in recipe_knowledge(name) if k not in knowledge]
        if missing:
            raise ValueError(f"recipe {name!r} needs knowledge {missing}, which the environment does not offer "
                             f"({','.join(knowledge)}); offer them with --knowledge")


def policy_names(knowledge: list[str]) -> list[str]:
    """Every fixed policy available for an environment offering ``knowledge`` (besides the constant
    subsets only-<a>+<b> and the per-phase schedules schedule-<subset>/<subset>/...)."""
    return [*BASE_POLICIES, *(f"only-{name}" for name in knowledge), "schedule-<subset>/<subset>/..."]


@dataclass
class FixedPolicy:
    """A fixed schedule over an environment's phases."""

    name: str
    env: object  # KnowledgeDistillationEnv (duck-typed: knowledge, config, weights_to_action)
    seed: int = 0

    def __post_init__(self):
        check_policy(self.name, self.env.knowledge, self.env.config.phases)
        if self.name.startswith("only-"):
            self._weights = _only(only_types(self.name))
        elif self.name.startswith("schedule-"):
            self._weights = _schedule(schedule_types(self.name))
        else:
            self._weights = BASE_POLICIES[self.name]
        self.rng = np.random.default_rng(self.seed)

    def weights(self, phase: int) -> dict[str, float]:
        return self._weights(phase, self.env.config.phases, self.rng, self.env.knowledge)

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        features = observation["features"] if isinstance(observation, dict) else observation
        phase = int(round(float(np.asarray(features)[0]) * self.env.config.phases))
        return self.env.weights_to_action(self.weights(phase)), state
