"""RL algorithms by name (stable-baselines3 and sb3-contrib), with the action space each needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdenv.paths import hyperparams_dir


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

    def build(self, policy: str, env, **kwargs):
        """A new agent. Its networks are small MLPs, so they go on the CPU even on a GPU machine
        (SB3's ``device="auto"`` would put them on CUDA, where they run slower and SB3 warns);
        ``device=...`` in the hyperparameters overrides that."""
        return self.load_class()(policy, env, **{"device": "cpu", **kwargs})

    def check_build(self, hyperparams: Hyperparams, env) -> None:
        """Builds an agent on ``env`` (any environment with the run's spaces, e.g. a spaces-only
        one) and drops it: every hyperparameter value is checked before anything expensive runs or
        anything is written; a bad one is refused in one line."""
        import copy

        try:
            self.build(hyperparams.policy, env, seed=0, verbose=0, **copy.deepcopy(hyperparams.kwargs))
        except (TypeError, ValueError, KeyError, AssertionError, AttributeError) as error:
            raise ValueError(f"{self.name} cannot be built with these hyperparameters ({type(error).__name__}: "
                             f"{error}); check the hyperparameter file and --hp") from None

    def load(self, path: str | Path, **kwargs):
        """An agent saved with ``save_agent``, on the CPU unless ``device=...`` says otherwise."""
        return self.load_class().load(str(path), **{"device": "cpu", **kwargs})


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
    """The algorithm registered under ``name``."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


@dataclass
class Hyperparams:
    """An agent's settings as a hyperparameter file holds them: the policy class's name apart from
    the keyword arguments the algorithm's constructor takes."""

    policy: str = "MlpPolicy"
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> Hyperparams:
        params = dict(params)
        return cls(params.pop("policy", "MlpPolicy"), params)

    def as_dict(self) -> dict[str, Any]:
        """The file's form (``policy`` first), as run records and tuned.yaml store it."""
        return {"policy": self.policy, **self.kwargs}


def load_hyperparams(name: str, overrides: list[str] | None = None, file: str | Path | None = None) -> Hyperparams:
    """Hyperparameters of algorithm ``name`` from the shipped defaults
    (``kdenv/decision/hyperparams/<algo>.yaml``) or ``file`` (e.g. tune_table.py's tuned.yaml),
    with ``key=value`` overrides (values parsed as YAML: ``learning_rate=1e-3``,
    ``policy_kwargs={net_arch: [32]}``). Names the algorithm does not take are refused here."""
    algorithm = get_algorithm(name)
    path = Path(file) if file else hyperparams_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no hyperparameter file {path}" + (" (--hp-file)" if file else ""))
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"hyperparameter file {path} is not valid YAML ({error}); fix or replace it") from None
    if not isinstance(params, dict):
        raise ValueError(f"hyperparameter file {path} must hold a mapping of name: value, not {type(params).__name__}")
    params.update(parse_overrides(overrides))
    hyperparams = Hyperparams.from_dict(params)
    check_hyperparams(algorithm, hyperparams.kwargs)
    return hyperparams


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``key=value`` items, values parsed as YAML."""
    params = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"hyperparameter override {item!r} must look like key=value")
        try:
            params[key.strip()] = _parse_value(value)
        except yaml.YAMLError as error:
            raise ValueError(f"hyperparameter override {item!r}: the value is not valid YAML ({error})") from None
    return params


def check_hyperparams(algorithm: Algorithm, params: dict[str, Any]) -> None:
    """Refuses hyperparameter names the algorithm does not take, listing the ones it does (values
    are checked by constructing the agent on a spaces-only environment, before any training)."""
    import inspect

    accepted = set(inspect.signature(algorithm.load_class().__init__).parameters) - {"self", "env", "kwargs"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(f"{algorithm.name} takes no hyperparameter {unknown}; it takes: {', '.join(sorted(accepted))}")


def save_agent(model, path: Path) -> Path:
    """Saves an SB3 agent through a temporary file renamed into place (a kill never leaves half a zip)."""
    from kdenv.io import atomic_write

    with atomic_write(path, "wb") as handle:
        model.save(handle)
    return path


@dataclass(frozen=True)
class SavedAgent:
    """An agent saved by agents/train.py: its zip and the run record (config.yaml) beside it."""

    path: Path
    algorithm: Algorithm
    record: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> SavedAgent:
        zip_path = Path(path)
        config_path = zip_path.parent / "config.yaml"
        if not zip_path.is_file():
            raise ValueError(f"agent {str(zip_path)!r} does not exist; pass the agent.zip that agents/train.py saved")
        if not config_path.is_file():
            raise ValueError(f"agent {str(zip_path)!r} has no config.yaml beside it, so its algorithm and environment "
                             "are unknown; pass an agent.zip from a run folder of agents/train.py")
        record = yaml.safe_load(config_path.read_text()) or {}
        if "agent" not in record or "env" not in record:
            raise ValueError(f"{config_path} is not a run record of agents/train.py (no agent/env sections)")
        return cls(zip_path, get_algorithm(record["agent"]["algo"]), record)

    def load(self, **kwargs):
        return self.algorithm.load(self.path, **kwargs)


def check_agent_fits(model, env, source: str) -> None:
    """An agent acts only in an environment with its own spaces; a mismatch is refused clearly
    instead of ending in a stable-baselines3 traceback."""
    for kind in ("observation_space", "action_space"):
        mine, theirs = getattr(model, kind), getattr(env, kind)
        if mine != theirs:
            raise ValueError(f"agent {source} was trained with {kind} {mine}, this environment has {theirs}; rebuild the "
                             "environment with the agent's env settings (knowledge, action space, cls_state)")
