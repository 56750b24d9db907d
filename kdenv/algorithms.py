"""RL algorithms by name (stable-baselines3 and sb3-contrib), with the action space each needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HYPERPARAMS_DIR = Path(__file__).resolve().parents[1] / "agents" / "hyperparams"


@dataclass(frozen=True)
class Algorithm:
    name: str
    module: str
    class_name: str
    action_space: str  # the environment's action space this algorithm gets
    wrap_multidiscrete: bool = False

    def load_class(self):
        import importlib

        return getattr(importlib.import_module(self.module), self.class_name)


ALGORITHMS: dict[str, Algorithm] = {
    algo.name: algo
    for algo in [
        Algorithm("a2c", "stable_baselines3", "A2C", "multibinary"),
        Algorithm("ppo", "stable_baselines3", "PPO", "multibinary"),
        Algorithm("dqn", "stable_baselines3", "DQN", "discrete"),
        Algorithm("sac", "stable_baselines3", "SAC", "box"),
        Algorithm("td3", "stable_baselines3", "TD3", "box"),
        Algorithm("ddpg", "stable_baselines3", "DDPG", "box"),
        Algorithm("trpo", "sb3_contrib", "TRPO", "multibinary"),
        Algorithm("recurrent_ppo", "sb3_contrib", "RecurrentPPO", "multibinary", wrap_multidiscrete=True),
    ]
}


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def load_hyperparams(name: str, overrides: list[str] | None = None, directory: Path | None = None) -> dict[str, Any]:
    """Hyperparameters from ``agents/hyperparams/<algo>.yaml``, with ``key=value`` overrides
    (values parsed as YAML: ``learning_rate=1e-3``, ``policy_kwargs={net_arch: [32]}``)."""
    path = (directory or HYPERPARAMS_DIR) / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no hyperparameter file {path}")
    params = yaml.safe_load(path.read_text()) or {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"hyperparameter override {item!r} must look like key=value")
        params[key.strip()] = _parse_value(value)
    return params
