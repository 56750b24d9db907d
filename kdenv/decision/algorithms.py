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

    def check_build(self, hyperparams: Hyperparams, env, smoke_steps: int = 0) -> None:
        """Builds an agent on ``env`` (any environment with the run's spaces, e.g. a spaces-only
        one) and drops it: every hyperparameter value is checked before anything expensive runs or
        anything is written; a bad one is refused in one line. ``smoke_steps`` > 0 (on an env that
        steps cheaply, such as a table's) also trains that many steps, which catches values that only
        fail in use (``gamma=abc``)."""
        import copy

        try:
            model = self.build(hyperparams.policy, env, seed=0, verbose=0, **copy.deepcopy(hyperparams.kwargs))
            if smoke_steps:
                model.learn(total_timesteps=smoke_steps)
        except (TypeError, ValueError, KeyError, AssertionError, AttributeError, IndexError, RuntimeError) as error:
            raise ValueError(f"{self.name} cannot be built with these hyperparameters ({type(error).__name__}: "
                             f"{error}); check the hyperparameter file and --hp") from None



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
    """An agent saved by agents/train.py or train_table.py: its zip and the run record
    (config.yaml) beside it, which says how to rebuild everything but its weights."""

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
        try:
            record = yaml.safe_load(config_path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ValueError(f"{config_path}, the run record of agent {zip_path}, is damaged ({type(error).__name__}: "
                             f"{str(error).splitlines()[0]}); restore it or retrain the agent") from None
        if not isinstance(record, dict) or not isinstance(record.get("agent"), dict) or "env" not in record:
            raise ValueError(f"{config_path} is not a run record of agents/train.py (no agent/env sections)")
        return cls(zip_path, get_algorithm(str(record["agent"].get("algo"))), record)

    def spaces_env(self, env=None, probe: bool = False):
        """An environment with the spaces this agent acts in, built from its run record (the
        [CLS] sizes of a ``cls_state`` agent come from ``env``, the environment it will act in, or
        are stand-ins with ``probe``, for checks that need only the agent's attributes)."""
        from kdenv.config import EnvConfig, from_dict
        from kdenv.decision.env import SpacesOnlyEnv
        from kdenv.decision.wrappers import MultiDiscreteOnOff

        try:
            config = from_dict(EnvConfig, self.record["env"])
        except (TypeError, ValueError, KeyError) as error:
            raise ValueError(f"the run record beside agent {self.path} holds no usable env section ({error}); pass an "
                             "agent.zip from a run folder of agents/train.py or train_table.py") from None
        cls_sizes = None
        if config.cls_state and probe and env is None:
            cls_sizes = (8, 8)
        elif config.cls_state:
            space = getattr(getattr(env, "unwrapped", env), "observation_space", None)
            if space is None or "teacher_cls" not in getattr(space, "spaces", {}):
                raise ValueError(f"agent {self.path} reads [CLS] vectors (cls_state); load it with the environment it "
                                 "will act in, which knows their sizes")
            cls_sizes = (space["teacher_cls"].shape[0], space["student_cls"].shape[0])
        spaces = SpacesOnlyEnv(config, cls_sizes)
        return MultiDiscreteOnOff(spaces) if self.algorithm.wrap_multidiscrete else spaces

    def load(self, allow_pickle: bool = False, spaces_from=None, **kwargs):
        """The agent, loaded without running any code from the file.

        A stable-baselines3 zip stores weights (loaded by torch with ``weights_only``) and a JSON
        ``data`` entry, some of whose items are cloudpickled objects: unpickling them would run
        whatever code the file holds. kdenv never unpickles those it can rebuild itself: it builds
        a fresh agent from the run record beside the zip (algorithm, hyperparameters, the env's
        spaces) and hands SB3 the fresh agent's policy class, spaces, policy keyword arguments,
        schedules and buffer classes in their place (``custom_objects``); training-time state
        (last observation, episode buffers) is dropped. A file that still holds a pickled item is
        refused, naming it, unless ``allow_pickle`` (``--unsafe-load-agents``) says the file is
        trusted. ``spaces_from`` (default: ``env=`` among ``kwargs``, which go to SB3's ``load``): the
        environment the agent will act in, for the [CLS] sizes of a ``cls_state`` agent."""

        custom = self.rebuilt_entries(self.spaces_env(spaces_from or kwargs.get("env")), allow_pickle)
        try:
            return self.algorithm.load_class().load(str(self.path), custom_objects=custom, **{"device": "cpu", **kwargs})
        except (ValueError, RuntimeError, KeyError, TypeError) as error:
            raise ValueError(f"agent {self.path} cannot be loaded for this environment ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''}); it must act in the environment its "
                             "config.yaml describes") from None


    def rebuilt_entries(self, spaces_env, allow_pickle: bool = False) -> dict[str, Any]:
        """In place of every pickled item of the zip, what a fresh agent built from the run record
        holds (``None`` for training-time state); refuses a zip with a pickled item beyond those,
        unless ``allow_pickle``."""
        import copy

        hyperparams = Hyperparams.from_dict(self.record["agent"].get("hyperparams") or {})
        try:
            fresh = self.algorithm.build(hyperparams.policy, spaces_env, seed=0, verbose=0,
                                         **copy.deepcopy(hyperparams.kwargs))
        except (TypeError, ValueError, KeyError, AssertionError, AttributeError) as error:
            raise ValueError(f"the run record beside agent {self.path} does not rebuild a {self.algorithm.name} agent "
                             f"({type(error).__name__}: {error})") from None
        return safe_custom_objects(self.path, fresh, allow_pickle)

    def check_safe(self, allow_pickle: bool = False) -> None:
        """Refuses now, before any expensive work, a file that :meth:`load` would refuse."""
        self.rebuilt_entries(self.spaces_env(probe=True), allow_pickle)


# Training-time state an agent zip may carry: not needed to act or to continue training (SB3 resets it).
RUNTIME_STATE = ("_last_obs", "_last_original_obs", "_last_episode_starts", "ep_info_buffer", "ep_success_buffer",
                 "_last_lstm_states")


def safe_custom_objects(path: str | Path, fresh, allow_pickle: bool = False) -> dict[str, Any]:
    """In place of every pickled item of the agent zip at ``path``, what ``fresh`` (a new agent of
    the same algorithm, hyperparameters and spaces) holds (``None`` for training-time state), for
    stable-baselines3's ``custom_objects``: with them, loading unpickles nothing. Refuses a zip with
    a pickled item beyond those, unless ``allow_pickle``."""
    pickled = pickled_entries(path)
    custom = {key: None if key in RUNTIME_STATE else getattr(fresh, key)
              for key in pickled if key in RUNTIME_STATE or key in vars(fresh)}
    unknown = [key for key in pickled if key not in custom]
    if unknown and not allow_pickle:
        raise ValueError(f"agent file {path} holds pickled entries {unknown} that kdenv cannot rebuild; "
                         "unpickling them would run any code the file holds, so it is refused. Use agent files "
                         "written by kdenv, or pass --unsafe-load-agents if you trust this file and its author")
    return custom


def pickled_entries(path: str | Path) -> list[str]:
    """The items of an agent zip's ``data`` that stable-baselines3 would unpickle."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        raise ValueError(f"agent file {path} is not a stable-baselines3 agent zip ({error}); pass an agent.zip saved "
                         "by kdenv") from None
    if not isinstance(data, dict):
        raise ValueError(f"agent file {path} is not a stable-baselines3 agent zip (its data is not a mapping)")
    return sorted(key for key, value in data.items() if isinstance(value, dict) and ":serialized:" in value)


def check_agent_fits(model, env, source: str) -> None:
    """An agent acts only in an environment with its own spaces; a mismatch is refused clearly
    instead of ending in a stable-baselines3 traceback."""
    for kind in ("observation_space", "action_space"):
        mine, theirs = getattr(model, kind), getattr(env, kind)
        if mine != theirs:
            raise ValueError(f"agent {source} was trained with {kind} {mine}, this environment has {theirs}; rebuild the "
                             "environment with the agent's env settings (knowledge, action space, cls_state)")
