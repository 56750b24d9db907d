"""Agents on schedule tables, trained and scored (``agents/train_table.py``, ``agents/tune_table.py``).

Each agent trains on the table's train seeds for thousands of episodes (microseconds a step: no
model, no data), then plays deterministically on the held-out seeds and is scored against what
the table knows exactly there:
  - regret: the per-seed oracle (hindsight-optimal schedule) minus the agent's return;
  - gain over the best constant action and over the best open-loop schedule, both chosen on the
    train seeds (what one could pick without learning) and played on the held-out ones.
A closed-loop agent reads the student's state; its gain over the best open-loop schedule says
whether adapting to that state helps at all. Mean ± std over --agent-seeds agents.

Writes runs/tables/<task>/<algo>_<time>/: config.yaml, agent_seed<N>.zip|json, results.json|md,
TensorBoard events (schedules and rewards of every 100th episode, the schedule heatmap of
every 1000th, SB3's own scalars). Rerun with the same --output-dir and settings, a run reuses its
finished agents; other settings are refused.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kdenv.benchmark.oracle import action_names, closed_loop
from kdenv.benchmark.protocol import FoldView
from kdenv.benchmark.table import Table, TableError, resolve_table
from kdenv.benchmark.table_env import KnowledgeSelectionTableEnv
from kdenv.cli import parse_seeds
from kdenv.config import ConfigError, save_run_config
from kdenv.decision.algorithms import Algorithm, Hyperparams, SavedAgent, save_agent
from kdenv.decision.callbacks import ScheduleCallback
from kdenv.decision.schedules import rollout
from kdenv.decision.wrappers import MultiDiscreteOnOff
from kdenv.io import atomic_write, write_all
from kdenv.stats import mean_std


def split_seeds(table: Table, train: list[int] | None, test: list[int] | None) -> tuple[list[int], list[int]]:
    """Train and held-out seeds (default: all but the last / the last); disjoint, in the table."""
    test_seeds = list(test) if test else table.seeds[-1:]
    train_seeds = list(train) if train else [s for s in table.seeds if s not in test_seeds]
    unknown = sorted(set(train_seeds + test_seeds) - set(table.seeds))
    if unknown:
        raise TableError(f"seeds {unknown} are not in the table (it has {table.seeds})")
    if not train_seeds or not test_seeds or set(train_seeds) & set(test_seeds):
        raise ConfigError(f"train seeds {train_seeds} and test seeds {test_seeds} must be non-empty and disjoint")
    return train_seeds, test_seeds


def table_and_split(table_name: str, train: str | None, test: str | None) -> tuple[Table, list[int], list[int]]:
    """The table a ``--table`` value names and its ``--train-seeds`` / ``--test-seeds`` (seed-list
    syntax, defaults as :func:`split_seeds`), checked: what every table program starts from."""
    table = resolve_table(table_name)
    return (table, *split_seeds(table, train and parse_seeds(train, "--train-seeds"),
                                test and parse_seeds(test, "--test-seeds")))


def play(model, env: KnowledgeSelectionTableEnv, wrapped, seed: int) -> tuple[float, list[int]]:
    """The deterministic policy's return (before scaling) and subset sequence on one seed, played
    through the wrapper it was trained with (RecurrentPPO's MultiDiscrete)."""
    steps = list(rollout(wrapped, model, options={"table_seed": seed}))
    # The task reward alone (an exploration bonus is for training, not a score); a crash's penalty as returned.
    return (sum(info.get("task_reward", reward) / env.reward_scale for _, reward, info in steps),
            list(steps[-1][2]["history"]))


class TableStudy:
    """Agents of one algorithm on one table: trained on the train seeds, scored on other seeds
    against the oracle, the best constant and the best open-loop schedule (both chosen on the train
    seeds: what one could pick without learning)."""

    def __init__(self, table: Table, algorithm: Algorithm, train_seeds: list[int], test_seeds: list[int],
                 reward: str, reward_scale: float, episodes: int, exploration_bonus: float = 0.0):
        self.table, self.algorithm, self.reward, self.reward_scale = table, algorithm, reward, reward_scale
        self.exploration_bonus = exploration_bonus  # in training only; scores never include it
        self.train_seeds, self.test_seeds, self.episodes = train_seeds, test_seeds, episodes
        view = FoldView(table, reward)  # every schedule's return on every seed, and the choices on train seeds
        self.sequences, self.returns, self.row = view.sequences, view.returns, view.row  # [seeds, sequences]
        self.open_loop = view.best_open_loop(train_seeds)
        self.best_constant = view.best_constant(train_seeds)

    def make_env(self, seeds, exploration_bonus: float = 0.0, reward: str | None = None):
        env = KnowledgeSelectionTableEnv(self.table, seeds=seeds, reward=reward or self.reward,
                                         reward_scale=self.reward_scale, action_space=self.algorithm.action_space,
                                         exploration_bonus=exploration_bonus)
        return env, (MultiDiscreteOnOff(env) if self.algorithm.wrap_multidiscrete else env)

    def returns_on(self, model, seeds: list[int], reward: str | None = None) -> dict[int, float]:
        """The deterministic policy's return on each of ``seeds``, before scaling, in ``reward``
        (default: the reward it trained on; a leaderboard scores every row in one reward)."""
        return {seed: value for seed, (value, _) in self.played_on(model, seeds, reward).items()}

    def played_on(self, model, seeds: list[int], reward: str | None = None) -> dict[int, tuple[float, list[int]]]:
        """The deterministic policy's return and schedule (its action per phase) on each of ``seeds``."""
        env, wrapped = self.make_env(seeds, reward=reward)
        return {seed: play(model, env, wrapped, seed) for seed in seeds}

    def check(self, hyperparams: Hyperparams) -> None:
        """Refuses hyperparameters the algorithm cannot be built with, before anything is written."""
        # A table steps in microseconds: a short training run also checks values that fail only in use.
        self.algorithm.check_build(hyperparams, self.make_env(self.train_seeds)[1], smoke_steps=64)

    def fit(self, hyperparams: dict[str, Any], agent_seed: int, run_dir: Path | None = None, progress: bool = False):
        """One agent trained for ``episodes`` episodes on the train seeds; (model, seconds)."""
        settings = Hyperparams.from_dict(hyperparams)
        _, agent_env = self.make_env(self.train_seeds, self.exploration_bonus)
        start = time.perf_counter()
        model = self.algorithm.build(settings.policy, agent_env, seed=agent_seed, verbose=0,
                                     tensorboard_log=str(run_dir) if run_dir else None, **copy.deepcopy(settings.kwargs))
        callback = None if run_dir is None else ScheduleCallback(
            run_dir / f"schedules_seed{agent_seed}", self.table.knowledge, save_every=1000, log_every=100,
            image_every=1000)  # a heatmap every 100 episodes took ~40% of an A2C agent's training time
        agent_env.reset(seed=agent_seed)
        model.learn(total_timesteps=self.episodes * self.table.phases, callback=callback,
                    tb_log_name=f"sb3_seed{agent_seed}", progress_bar=progress)
        return model, time.perf_counter() - start

    def score(self, model, seeds: list[int]) -> dict[str, Any]:
        """The deterministic policy's return on each of ``seeds``, its regret and its gains."""
        env, wrapped = self.make_env(seeds)
        played = {seed: play(model, env, wrapped, seed) for seed in seeds}
        rows = [self.row[s] for s in seeds]
        agent_returns = np.array([played[s][0] for s in seeds])
        return {
            "test_return": float(agent_returns.mean()),
            "regret": float(np.mean(self.returns[rows].max(axis=1) - agent_returns)),
            "gain_over_best_constant": float(np.mean(agent_returns - self.returns[rows, self.best_constant])),
            "gain_over_open_loop": float(np.mean(agent_returns - self.returns[rows, self.open_loop])),
            "schedules": {str(s): played[s][1] for s in seeds},
        }

    def train_score(self, model) -> dict[str, Any]:
        """The same scores on the seeds the agent trained on: what it learned there, before the
        question of whether it carries over to held-out seeds."""
        scores = self.score(model, self.train_seeds)
        return {"return": scores.pop("test_return"), **scores}

    def record(self, hyperparams: dict[str, Any], agent_seeds: list[int]) -> dict[str, Any]:
        """What decides this run's agents: the table (its files' checksums), the split, the reward,
        the live env they would act in, the algorithm, its hyperparameters and budget, the seeds."""
        table = self.table
        return {
            "table": {"directory": str(table.directory), "task": table.task, "knowledge": table.knowledge,
                      "phases": table.phases, "teacher": table.manifest.get("teacher", {}).get("fingerprint"),
                      "files": table.manifest.get("files", {}), "train_seeds": self.train_seeds,
                      "test_seeds": self.test_seeds, "reward": self.reward, "reward_scale": self.reward_scale},
            # The live environment this agent acts in, so that `agents/evaluate.py --policies
            # agent:<zip>` can take it to the real trainer.
            "env": {**table.manifest["env"], "action_space": self.algorithm.action_space, "reward": self.reward,
                    "reward_scale": self.reward_scale},
            "agent": {"algo": self.algorithm.name, "episodes": self.episodes,
                      "total_timesteps": self.episodes * table.phases, "hyperparams": hyperparams},
            "seeds": {"agents": agent_seeds},
        }

    def resumable(self, run_dir: Path, record: dict[str, Any]) -> bool:
        """Whether run_dir's finished agents may be reused: True when it holds this very run's config
        (software versions aside), False when it holds none; another run's config is refused."""
        path = run_dir / "config.yaml"
        if not path.is_file():
            return False
        saved = yaml.safe_load(path.read_text()) or {}
        # Round-trip through YAML so that tuples and numpy scalars compare as they were saved.
        wanted = yaml.safe_load(yaml.safe_dump(record, sort_keys=False))
        differing = sorted(key for key in wanted if saved.get(key) != wanted[key])
        if differing:
            raise ConfigError(f"{run_dir} holds agents of another run (different {', '.join(differing)} settings); "
                              f"pass another --output-dir, or delete that folder to start over")
        return True

    def run(self, hyperparams: dict[str, Any], agent_seeds, run_dir: Path, progress: bool = False) -> dict[str, Any]:
        """Trains one agent per seed, scores each on the held-out seeds, and writes run_dir's
        config.yaml, agent_seed<N>.zip|json, TensorBoard events and results.{json,md}. Rerun on the
        same run_dir with the same settings, it reuses the agents already finished there."""
        table, test_seeds, agent_seeds = self.table, self.test_seeds, list(agent_seeds)
        test_rows, train_rows = [self.row[s] for s in test_seeds], [self.row[s] for s in self.train_seeds]
        record = self.record(hyperparams, agent_seeds)
        resume = self.resumable(run_dir, record)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            save_run_config(run_dir / "config.yaml", record.pop("seeds"), **record)
        print(f"{self.algorithm.name} on the {table.task} table: train seeds {self.train_seeds}, test seeds "
              f"{test_seeds}, {self.episodes} episodes x {len(agent_seeds)} agents; reward {self.reward}")
        agents: list[dict[str, Any]] = []
        for agent_seed in agent_seeds:
            done, zip_path = run_dir / f"agent_seed{agent_seed}.json", run_dir / f"agent_seed{agent_seed}.zip"
            if resume and done.is_file() and zip_path.is_file():
                result = json.loads(done.read_text())
                if "train" not in result:  # an agent saved before train-seed scores were recorded
                    result["train"] = self.train_score(SavedAgent.open(zip_path).load())
                    with atomic_write(done) as handle:
                        json.dump(result, handle, indent=2)
                agents.append(result)
                print(f"  agent seed {agent_seed}: reused ({done.name}), regret {result['regret']:.4f}")
                continue
            model, seconds = self.fit(hyperparams, agent_seed, run_dir, progress)
            save_agent(model, zip_path)
            steps = self.episodes * table.phases
            result = {"agent_seed": agent_seed, "train_seconds": seconds, "steps_per_second": steps / seconds,
                      **self.score(model, test_seeds), "train": self.train_score(model)}
            with atomic_write(done) as handle:
                json.dump(result, handle, indent=2)
            agents.append(result)
            print(f"  agent seed {agent_seed}: test return {result['test_return']:+.4f}, regret {result['regret']:.4f}, "
                  f"vs best constant {result['gain_over_best_constant']:+.4f}, vs open loop "
                  f"{result['gain_over_open_loop']:+.4f} ({seconds:.0f} s, {result['steps_per_second']:.0f} steps/s)")
        train_oracle = self.returns[train_rows].max(axis=1)
        summary = {
            "algo": self.algorithm.name, "table": str(table.directory), "reward": self.reward,
            "train_seeds": self.train_seeds, "test_seeds": test_seeds, "episodes": self.episodes,
            "oracle_test_return": mean_std(self.returns[test_rows].max(axis=1)),
            "best_constant": {"schedule": list(self.sequences[self.best_constant]),
                              "test_return": mean_std(self.returns[test_rows, self.best_constant])},
            "open_loop": {"schedule": list(self.sequences[self.open_loop]),
                          "test_return": mean_std(self.returns[test_rows, self.open_loop])},
            **{key: mean_std([a[key] for a in agents]) for key in
               ("test_return", "regret", "gain_over_best_constant", "gain_over_open_loop")},
            "train": {"oracle_return": mean_std(train_oracle),
                      "best_constant_regret": mean_std(train_oracle - self.returns[train_rows, self.best_constant]),
                      "closed_loop_regret": mean_std(train_oracle - np.array(
                          closed_loop(table, self.sequences, self.returns, train_rows)["per_seed"])),
                      **{key: mean_std([a["train"][key] for a in agents]) for key in
                         ("return", "regret", "gain_over_best_constant", "gain_over_open_loop")}},
            "agents": agents,
        }
        write_results(run_dir, summary, action_names(table))
        return summary


def fmt_stats(stats: dict[str, float]) -> str:
    return f"{stats['mean']:+.4f} ± {stats['std']:.4f}"


def write_report(run_dir: Path, name: str, text: str, data: dict[str, Any]) -> None:
    """Prints ``text`` and writes it to ``run_dir/<name>.md``, and ``data`` to ``<name>.json``, both or neither."""
    print(text)
    write_all({run_dir / f"{name}.md": text.encode(), run_dir / f"{name}.json": json.dumps(data, indent=2).encode()})


def write_results(run_dir: Path, summary: dict[str, Any], names: list[str]) -> None:
    fmt = fmt_stats

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
        "", f"The same agents on their train seeds {summary['train_seeds']} (mean over those seeds, then mean ± std "
        f"over agents; the best constant's regret there is {fmt(summary['train']['best_constant_regret'])}, and the "
        f"least any seed-blind policy that reads the observation can have is "
        f"{fmt(summary['train']['closed_loop_regret'])}):", "",
        "| | train-seed return | regret | gain vs best constant | gain vs best open-loop |", "|---|---|---|---|---|",
        f"| agents | {fmt(summary['train']['return'])} | {fmt(summary['train']['regret'])} | "
        f"{fmt(summary['train']['gain_over_best_constant'])} | {fmt(summary['train']['gain_over_open_loop'])} |",
    ]
    write_report(run_dir, "results", "\n".join(lines) + "\n", summary)
    print(f"results in {run_dir}")
