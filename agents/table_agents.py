"""Agents on schedule tables: `python agents/train.py --algo ppo --table stsb`.

Each agent trains on the table's train seeds for thousands of episodes (microseconds a step: no
model, no data), then plays deterministically on the held-out seeds and is scored against what
the table knows exactly there:
  - regret: the per-seed oracle (hindsight-optimal schedule) minus the agent's return;
  - gain over the best constant action and over the best open-loop schedule, both chosen on the
    train seeds (what one could pick without learning) and played on the held-out ones.
A closed-loop agent reads the student's state; its gain over the best open-loop schedule says
whether adapting to that state helps at all. Mean ± std over --agent-seeds agents.

Writes runs/tables/<task>/<algo>_<time>/: config.yaml, agent_seed<N>.zip, results.json|md,
TensorBoard events (schedules and rewards of every 100th episode, SB3's own scalars).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from kdenv.benchmark.oracle import action_names, all_returns, mean_std
from kdenv.benchmark.table import Table, TableError, benchmarks_dir
from kdenv.benchmark.table_env import KnowledgeSelectionTableEnv
from kdenv.config import ConfigError, save_run_config
from kdenv.decision.algorithms import Algorithm, check_hyperparams, load_hyperparams, save_agent
from kdenv.decision.callbacks import ScheduleCallback
from kdenv.decision.wrappers import MultiDiscreteOnOff
from kdenv.io import atomic_write, check_writable
from kdenv.paths import runs_dir


def resolve_table(name: str) -> Table:
    path = Path(name)
    return Table.load(path if path.is_dir() else benchmarks_dir() / name)


def split_seeds(table: Table, train: str | None, test: str | None) -> tuple[list[int], list[int]]:
    """Train and held-out seeds (default: all but the last / the last); disjoint, in the table."""
    def parse(text):
        return [int(part) for part in text.split(",") if part.strip()]

    test_seeds = parse(test) if test else table.seeds[-1:]
    train_seeds = parse(train) if train else [s for s in table.seeds if s not in test_seeds]
    unknown = sorted(set(train_seeds + test_seeds) - set(table.seeds))
    if unknown:
        raise TableError(f"seeds {unknown} are not in the table (it has {table.seeds})")
    if not train_seeds or not test_seeds or set(train_seeds) & set(test_seeds):
        raise ConfigError(f"train seeds {train_seeds} and test seeds {test_seeds} must be non-empty and disjoint")
    return train_seeds, test_seeds


def play(model, env: KnowledgeSelectionTableEnv, wrapped, seed: int) -> tuple[float, list[int]]:
    """The deterministic policy's return (before scaling) and subset sequence on one seed, played
    through the wrapper it was trained with (RecurrentPPO's MultiDiscrete)."""
    observation, _ = wrapped.reset(options={"table_seed": seed})
    state, start, done, total, schedule = None, np.ones((1,), dtype=bool), False, 0.0, []
    while not done:
        action, state = model.predict(observation, state=state, episode_start=start, deterministic=True)
        start = np.zeros((1,), dtype=bool)
        schedule.append(env.action_index(wrapped.action(action) if wrapped is not env else action))
        observation, reward, done, _, _ = wrapped.step(action)
        total += reward / env.reward_scale
    return total, schedule


def train_on_table(args: argparse.Namespace, algorithm: Algorithm, hyperparams_dir: Path) -> int:
    table = resolve_table(args.table)
    train_seeds, test_seeds = split_seeds(table, args.train_seeds, args.test_seeds)
    if args.episodes < 1 or args.agent_seeds < 1:
        raise ConfigError("--episodes and --agent-seeds must be >= 1")
    hyperparams = load_hyperparams(algorithm.name, args.hp, hyperparams_dir)
    params = {k: v for k, v in hyperparams.items() if k != "policy"}
    check_hyperparams(algorithm, params)
    policy = hyperparams.get("policy", "MlpPolicy")
    reward = args.__dict__.get("env.reward", "metric_gain")
    scale = args.__dict__.get("env.reward_scale", 10.0)
    run_dir = Path(args.output_dir) if args.output_dir else (
        runs_dir() / "tables" / table.task / f"{algorithm.name}_{time.strftime('%Y%m%d-%H%M%S')}")
    check_writable(run_dir)

    def make_env(seeds):
        env = KnowledgeSelectionTableEnv(table, seeds=seeds, reward=reward, reward_scale=scale,
                                         action_space=algorithm.action_space)
        return env, (MultiDiscreteOnOff(env) if algorithm.wrap_multidiscrete else env)

    sequences, returns = all_returns(table, reward)
    index = {seed: row for row, seed in enumerate(table.seeds)}
    train_rows, test_rows = [index[s] for s in train_seeds], [index[s] for s in test_seeds]
    open_loop = int(returns[train_rows].mean(axis=0).argmax())
    constants = [sequences.index((a,) * table.phases) for a in range(table.num_actions)]
    best_constant = max(constants, key=lambda i: returns[train_rows, i].mean())
    oracle = {seed: float(returns[index[seed]].max()) for seed in test_seeds}
    total_timesteps = args.episodes * table.phases
    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_config(run_dir / "config.yaml", {"agents": list(range(args.seed, args.seed + args.agent_seeds))},
                    table={"directory": str(table.directory), "task": table.task, "knowledge": table.knowledge,
                           "phases": table.phases, "teacher": table.manifest.get("teacher", {}).get("fingerprint"),
                           "train_seeds": train_seeds, "test_seeds": test_seeds, "reward": reward, "reward_scale": scale},
                    agent={"algo": algorithm.name, "episodes": args.episodes, "total_timesteps": total_timesteps,
                           "hyperparams": {"policy": policy, **params}})
    names = action_names(table)
    print(f"{algorithm.name} on the {table.task} table: train seeds {train_seeds}, test seeds {test_seeds}, "
          f"{args.episodes} episodes x {args.agent_seeds} agents; reward {reward}")
    agents: list[dict[str, Any]] = []
    for agent_seed in range(args.seed, args.seed + args.agent_seeds):
        env, agent_env = make_env(train_seeds)
        start = time.perf_counter()
        model = algorithm.load_class()(policy, agent_env, seed=agent_seed, verbose=0, tensorboard_log=str(run_dir),
                                       **copy.deepcopy(params))
        callback = ScheduleCallback(run_dir / f"schedules_seed{agent_seed}", table.knowledge, save_every=1000,
                                    log_every=100)
        agent_env.reset(seed=agent_seed)
        model.learn(total_timesteps=total_timesteps, callback=callback, tb_log_name=f"sb3_seed{agent_seed}",
                    progress_bar=not args.no_progress)
        seconds = time.perf_counter() - start
        save_agent(model, run_dir / f"agent_seed{agent_seed}.zip")
        test_env, wrapped = make_env(test_seeds)
        played = {seed: play(model, test_env, wrapped, seed) for seed in test_seeds}
        agent_returns = np.array([played[s][0] for s in test_seeds])
        result = {
            "agent_seed": agent_seed, "train_seconds": seconds, "steps_per_second": total_timesteps / seconds,
            "test_return": float(agent_returns.mean()),
            "regret": float(np.mean([oracle[s] - played[s][0] for s in test_seeds])),
            "gain_over_best_constant": float(np.mean(agent_returns - returns[test_rows, best_constant])),
            "gain_over_open_loop": float(np.mean(agent_returns - returns[test_rows, open_loop])),
            "schedules": {str(s): played[s][1] for s in test_seeds},
        }
        agents.append(result)
        print(f"  agent seed {agent_seed}: test return {result['test_return']:+.4f}, regret {result['regret']:.4f}, "
              f"vs best constant {result['gain_over_best_constant']:+.4f}, vs open loop "
              f"{result['gain_over_open_loop']:+.4f} ({seconds:.0f} s, {result['steps_per_second']:.0f} steps/s)")
    summary = {
        "algo": algorithm.name, "table": str(table.directory), "reward": reward, "train_seeds": train_seeds,
        "test_seeds": test_seeds, "episodes": args.episodes,
        "oracle_test_return": mean_std([oracle[s] for s in test_seeds]),
        "best_constant": {"schedule": list(sequences[best_constant]),
                          "test_return": mean_std(returns[test_rows, best_constant])},
        "open_loop": {"schedule": list(sequences[open_loop]), "test_return": mean_std(returns[test_rows, open_loop])},
        **{key: mean_std([a[key] for a in agents]) for key in
           ("test_return", "regret", "gain_over_best_constant", "gain_over_open_loop")},
        "agents": agents,
    }
    write_results(run_dir, summary, names)
    return 0


def write_results(run_dir: Path, summary: dict[str, Any], names: list[str]) -> None:
    def fmt(stats):
        return f"{stats['mean']:+.4f} ± {stats['std']:.4f}"

    def text(schedule):
        return " → ".join(names[a] for a in schedule)

    lines = [
        f"{summary['algo']} on {summary['table']} ({summary['reward']}, returns before scaling): "
        f"{len(summary['agents'])} agents, {summary['episodes']} episodes each, train seeds {summary['train_seeds']}, "
        f"held-out seeds {summary['test_seeds']}", "",
        "| | held-out return | regret (oracle − agent) | gain vs best constant | gain vs best open-loop |",
        "|---|---|---|---|---|",
        f"| agents (mean ± std over agents) | {fmt(summary['test_return'])} | {fmt(summary['regret'])} | "
        f"{fmt(summary['gain_over_best_constant'])} | {fmt(summary['gain_over_open_loop'])} |",
        f"| oracle | {fmt(summary['oracle_test_return'])} | 0 | | |",
        f"| best constant (chosen on train seeds): {text(summary['best_constant']['schedule'])} | "
        f"{fmt(summary['best_constant']['test_return'])} | | | |",
        f"| best open-loop (chosen on train seeds): {text(summary['open_loop']['schedule'])} | "
        f"{fmt(summary['open_loop']['test_return'])} | | | |",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    with atomic_write(run_dir / "results.md") as handle:
        handle.write(table)
    with atomic_write(run_dir / "results.json") as handle:
        json.dump(summary, handle, indent=2)
    print(f"results in {run_dir}")
