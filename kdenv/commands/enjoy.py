"""Replay an agent that rl_zoo3 trained on a kdenv environment, without running any code from its files.

    python agents/enjoy.py --algo ppo --env kdenv/KnowledgeSelectionTable-v0 -f runs/zoo --exp-id 1 \\
        --env-kwargs task:"'stsb'" -n 30 --deterministic

The arguments are rl_zoo3.enjoy's. Use this, not ``python -m rl_zoo3.enjoy``, for any agent you did
not train yourself: rl_zoo3 reads a run's ``args.yml`` and ``config.yml`` with PyYAML's unsafe loader
and stable-baselines3 unpickles items of the agent zip, so a crafted run folder or zip runs its
code there. Here:
  - ``config.yml`` is read with YAML's safe loader (plus the one tag rl_zoo3 writes, an ordered
    mapping); ``args.yml`` is not read; ``policy_kwargs`` is parsed as a literal ``dict(...)`` whose
    only names are torch activation functions (``nn.ReLU``, ``nn.Tanh``, ...);
  - the agent zip's pickled items are rebuilt from a fresh agent of the same algorithm,
    hyperparameters and environment, never unpickled; a zip holding a pickled item kdenv cannot
    rebuild is refused, naming it; the weights are read with ``weights_only`` (a payload there is
    refused; never load such a file otherwise);
  - ``--env-kwargs`` values are Python literals (``ast.literal_eval``), as rl_zoo3 parses them.
Prints each episode's return and schedule, and the mean.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Any

import yaml

from kdenv.cli import fail, run_main

KDENV_ENVS = ("kdenv/KnowledgeSelectionTable-v0", "kdenv/KnowledgeSelection-v0")
ACTIVATIONS = ("ReLU", "Tanh", "ELU", "LeakyReLU", "GELU", "SiLU", "Sigmoid", "Identity")


class _ZooConfigLoader(yaml.SafeLoader):
    """YAML's safe loader, and the one Python tag rl_zoo3's config.yml holds: an ordered mapping
    written as a list of [key, value] pairs (built here as a plain dict; nothing is called)."""


def _ordered_mapping(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    pairs = loader.construct_sequence(node.value[0], deep=True) if isinstance(node, yaml.SequenceNode) else []
    if not all(isinstance(pair, list) and len(pair) == 2 for pair in pairs):
        raise yaml.constructor.ConstructorError(None, None, "an ordered mapping must be a list of [key, value] pairs",
                                                node.start_mark)
    return {key: value for key, value in pairs}


_ZooConfigLoader.add_constructor("tag:yaml.org,2002:python/object/apply:collections.OrderedDict", _ordered_mapping)


def read_zoo_config(path: Path) -> dict[str, Any]:
    """A run's hyperparameters (``config.yml``), read without running anything; refuses other tags."""
    try:
        config = yaml.load(path.read_text(), Loader=_ZooConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not a plain rl_zoo3 config ({str(error).splitlines()[0]}); it may hold code, so it "
                         "is not read. Replay only agents whose run folder you trust, or retrain") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not an rl_zoo3 config (a mapping of hyperparameters)")
    return config


def literal_policy_kwargs(text: str | dict | None) -> dict[str, Any]:
    """rl_zoo3's ``policy_kwargs`` (``"dict(net_arch=[64, 64], activation_fn=nn.Tanh)"``), parsed
    without ``eval``: literals, ``dict(...)`` calls and the names ``nn.<activation>`` only."""
    import torch

    if text is None:
        return {}
    if isinstance(text, dict):
        return text

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
            return {keyword.arg: value(keyword.value) for keyword in node.keywords}
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "nn" \
                and node.attr in ACTIVATIONS:
            return getattr(torch.nn, node.attr)
        if isinstance(node, ast.Dict):
            return {value(k): value(v) for k, v in zip(node.keys, node.values)}
        if isinstance(node, ast.List | ast.Tuple):
            items = [value(item) for item in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        return ast.literal_eval(node)

    try:
        parsed = value(ast.parse(str(text), mode="eval").body)
    except (ValueError, SyntaxError, TypeError) as error:
        raise ValueError(f"policy_kwargs {text!r} is not a literal dict(...) of numbers, lists, strings and "
                         f"nn.{'/'.join(ACTIVATIONS)} ({error}); kdenv does not evaluate code from a config") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"policy_kwargs {text!r} is not a dict")
    return parsed


def env_kwargs(pairs: list[str]) -> dict[str, Any]:
    """``key:value`` pairs, values Python literals (rl_zoo3's ``--env-kwargs``)."""
    result = {}
    for pair in pairs:
        key, sep, text = pair.partition(":")
        try:
            result[key] = ast.literal_eval(text) if sep else None
        except (ValueError, SyntaxError):
            raise ValueError(f"--env-kwargs {pair!r}: give key:value with a Python literal value, e.g. "
                             "task:\"'stsb'\"") from None
        if not sep or not key:
            raise ValueError(f"--env-kwargs {pair!r}: give key:value, e.g. task:\"'stsb'\"")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--algo", required=True, help="the algorithm the agent was trained with (a2c, ppo, dqn, ...)")
    add("--env", required=True, choices=KDENV_ENVS, help="the kdenv environment it was trained on")
    add("-f", "--folder", required=True, help="rl_zoo3's log folder (its -f)")
    add("--exp-id", type=int, default=0, help="the run's number (default 0: the latest)")
    add("--load-best", action="store_true", help="replay best_model.zip instead of the final agent")
    add("--env-kwargs", nargs="*", default=[], metavar="KEY:VALUE", help="the environment's arguments, as for rl_zoo3")
    add("-n", "--episodes", type=int, default=10, help="episodes to play (default 10)")
    add("--deterministic", action="store_true", help="act deterministically")
    add("--seed", type=int, default=0, help="seed of the first episode (default 0)")
    return parser.parse_args(argv)


def run_folder(folder: Path, algo: str, env_id: str, exp_id: int) -> Path:
    """rl_zoo3's folder of one run: ``<folder>/<algo>/<env name>_<exp id>`` (the latest when ``exp_id`` is 0)."""
    name = env_id.replace("/", "-")
    runs = sorted((folder / algo).glob(f"{name}_*"), key=lambda path: int(path.name.rpartition("_")[2] or 0)
                  if path.name.rpartition("_")[2].isdigit() else -1)
    if exp_id == 0 and runs:
        return runs[-1]
    path = folder / algo / f"{name}_{exp_id}"
    if not path.is_dir():
        raise ValueError(f"no run {path}; rl_zoo3 writes <folder>/<algo>/{name}_<exp id> (runs here: "
                         f"{', '.join(p.name for p in runs) or 'none'})")
    return path


def load_zoo_agent(algo_name: str, env, zip_path: Path, hyperparams: dict[str, Any]):
    """The agent in ``zip_path``, its pickled items rebuilt from a fresh agent (never unpickled)."""
    import pickle

    from kdenv.decision.algorithms import get_algorithm, safe_custom_objects

    algorithm = get_algorithm(algo_name)
    kwargs = {"policy_kwargs": literal_policy_kwargs(hyperparams.get("policy_kwargs"))}
    try:
        fresh = algorithm.build(str(hyperparams.get("policy", "MlpPolicy")), env, seed=0, verbose=0, **kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as error:
        raise ValueError(f"{algo_name} cannot be built for {zip_path} from its config ({type(error).__name__}: {error})") \
            from None
    custom = safe_custom_objects(zip_path, fresh)
    try:
        return algorithm.load_class().load(str(zip_path), env=env, custom_objects=custom, device="cpu")
    except pickle.UnpicklingError:
        raise ValueError(f"{zip_path}: its weights hold more than tensors (a pickled object that would run code); "
                         "refused. Do not load this file by other means") from None
    except (ValueError, RuntimeError, KeyError, TypeError) as error:
        raise ValueError(f"{zip_path} cannot be loaded for this environment ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None


@run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import gymnasium as gym

        import kdenv  # noqa: F401  (registers the environments)

        if args.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, not {args.episodes}")
        run = run_folder(Path(args.folder), args.algo, args.env, args.exp_id)
        name = args.env.replace("/", "-")
        zip_path = run / ("best_model.zip" if args.load_best else f"{name}.zip")
        config = run / name / "config.yml"
        if not zip_path.is_file() or not config.is_file():
            raise ValueError(f"{run} lacks {zip_path.name} or {name}/config.yml: not an rl_zoo3 run of {args.env}")
        hyperparams = read_zoo_config(config)
        env = gym.make(args.env, **env_kwargs(args.env_kwargs))
        model = load_zoo_agent(args.algo, env, zip_path, hyperparams)
    except (ValueError, OSError) as error:
        return fail(error)
    returns = []
    for episode in range(args.episodes):
        observation, _ = env.reset(seed=args.seed + episode)
        total, done, schedule = 0.0, False, []
        while not done:
            action, _ = model.predict(observation, deterministic=args.deterministic)
            observation, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            schedule.append(info.get("action_weights"))
            done = terminated or truncated
        returns.append(total)
        print(f"episode {episode}: return {total:+.4f}, schedule {schedule}")
    print(f"Mean reward: {sum(returns) / len(returns):+.4f} over {len(returns)} episodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
