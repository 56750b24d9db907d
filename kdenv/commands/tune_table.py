"""Hyperparameter search on a schedule table (Optuna, TPE), then default against tuned on held-out seeds.

    python agents/tune_table.py --algo ppo --table stsb
    python agents/tune_table.py --algo dqn --table mrpc --trials 40 --train-seeds 0,1,2 --test-seeds 3

Steps:
  1. Optuna samples hyperparameters (the algorithm's search space below) over the defaults in
     kdenv/decision/hyperparams/<algo>.yaml. A trial trains --trial-agents agents for --trial-episodes
     episodes on the train seeds and scores their deterministic policies on the same train seeds
     (mean return; the held-out seeds are never seen while tuning).
  2. The defaults and the best trial's hyperparameters are each trained for --episodes episodes
     with --agent-seeds agent seeds (the same seeds for both) and scored on the held-out seeds:
     regret against the per-seed oracle, gain over the best constant and open-loop schedules
     (chosen on the train seeds), mean ± std over agents, and the paired tuned − default difference.

Writes runs/tables/<task>/tune_<algo>_<time>/: study.db (resumable: rerun with the same
--output-dir to add trials), trials.csv, tuned.yaml (the tuned hyperparameter file), default/ and
tuned/ (as `agents/train_table.py` writes them), comparison.{md,json}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kdenv.benchmark.oracle import mean_std
from kdenv.benchmark.study import TableStudy, fmt_stats, table_and_split, write_report
from kdenv.benchmark.table import TableError
from kdenv.cli import fail, run_main
from kdenv.config import ConfigError
from kdenv.decision.algorithms import get_algorithm, load_hyperparams
from kdenv.decision.rewards import REWARDS
from kdenv.io import atomic_write, check_writable
from kdenv.paths import runs_dir

NETS = {"small": [32], "medium": [64, 64], "large": [128, 128]}


def _common(trial) -> dict[str, Any]:
    return {"learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True),
            "gamma": trial.suggest_categorical("gamma", [0.9, 0.99, 1.0]),
            "policy_kwargs": {"net_arch": NETS[trial.suggest_categorical("net", list(NETS))]}}


def sample_a2c(trial) -> dict[str, Any]:
    return {**_common(trial), "n_steps": trial.suggest_categorical("n_steps", [3, 6, 12, 24]),
            "ent_coef": trial.suggest_float("ent_coef", 1e-5, 0.1, log=True),
            "gae_lambda": trial.suggest_categorical("gae_lambda", [0.9, 0.95, 1.0]),
            "normalize_advantage": trial.suggest_categorical("normalize_advantage", [False, True])}


def sample_ppo(trial) -> dict[str, Any]:
    return {**_common(trial), "n_steps": trial.suggest_categorical("n_steps", [24, 48, 96, 192]),
            "batch_size": trial.suggest_categorical("batch_size", [8, 24]),
            "n_epochs": trial.suggest_categorical("n_epochs", [4, 10]),
            "ent_coef": trial.suggest_float("ent_coef", 1e-5, 0.1, log=True),
            "clip_range": trial.suggest_categorical("clip_range", [0.1, 0.2, 0.3]),
            "gae_lambda": trial.suggest_categorical("gae_lambda", [0.9, 0.95, 1.0])}


def sample_dqn(trial) -> dict[str, Any]:
    return {**_common(trial), "buffer_size": trial.suggest_categorical("buffer_size", [3000, 30000]),
            "learning_starts": trial.suggest_categorical("learning_starts", [100, 1000]),
            "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
            "target_update_interval": trial.suggest_categorical("target_update_interval", [100, 1000]),
            "train_freq": trial.suggest_categorical("train_freq", [1, 3]),
            "exploration_fraction": trial.suggest_float("exploration_fraction", 0.05, 0.5),
            "exploration_final_eps": trial.suggest_categorical("exploration_final_eps", [0.01, 0.05, 0.1])}


SEARCH_SPACES = {"a2c": sample_a2c, "ppo": sample_ppo, "dqn": sample_dqn}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", required=True, choices=sorted(SEARCH_SPACES), help="RL algorithm to tune")
    parser.add_argument("--table", required=True, metavar="NAME|PATH",
                        help="a shipped table's name (stsb, mrpc, stsb_h100_u8, ...: kdenv/tables/) or a table folder")
    parser.add_argument("--train-seeds", default=None, metavar="SEEDS",
                        help="table seeds to tune and train on, e.g. 0-2 (default: all but the test seeds)")
    parser.add_argument("--test-seeds", default=None, metavar="SEEDS",
                        help="held-out table seeds for the final scores (default: the table's last seed)")
    parser.add_argument("--trials", type=int, default=30, help="Optuna trials (in total, counting a resumed study's)")
    parser.add_argument("--trial-episodes", type=int, default=3000, help="training episodes per agent in a trial")
    parser.add_argument("--trial-agents", type=int, default=2, help="agents per trial (their mean return is the objective)")
    parser.add_argument("--episodes", type=int, default=10_000, help="training episodes per agent in the final comparison")
    parser.add_argument("--agent-seeds", type=int, default=5, help="agents in the final comparison, for each of default and tuned")
    parser.add_argument("--seed", type=int, default=0, help="first agent seed of the final comparison; the sampler's seed")
    parser.add_argument("--reward", default="metric_gain", choices=sorted(REWARDS), help="reward variant")
    parser.add_argument("--reward-scale", type=float, default=10.0, help="reward multiplier the agents see")
    parser.add_argument("--output-dir", default=None, help="default runs/tables/<task>/tune_<algo>_<time>; an existing one resumes")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    for name in ("trials", "trial_episodes", "trial_agents", "episodes", "agent_seeds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def tune(study_runner: TableStudy, defaults: dict[str, Any], args, run_dir: Path) -> dict[str, Any]:
    """The Optuna study on the train seeds; returns the best trial's full hyperparameters."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sample = SEARCH_SPACES[args.algo]
    trial_seeds = [10_000 + index for index in range(args.trial_agents)]  # never the final agents' seeds

    def objective(trial) -> float:
        params = {**defaults, **sample(trial)}
        scores = [study_runner.score(study_runner.fit(params, seed)[0], study_runner.train_seeds)
                  for seed in trial_seeds]
        trial.set_user_attr("regret", float(np.mean([s["regret"] for s in scores])))
        return float(np.mean([s["test_return"] for s in scores]))

    storage = f"sqlite:///{run_dir / 'study.db'}"
    study = optuna.create_study(study_name="tune", storage=storage, load_if_exists=True, direction="maximize")
    # A trial left RUNNING by a killed run never finishes: mark it failed (the sampler skips it).
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(stale.number, state=optuna.trial.TrialState.FAIL)
        print(f"trial {stale.number} was cut short by an earlier run: marked failed, not counted")
    # Seeded by --seed and by how many trials the study already holds, so that a rerun adding
    # trials continues the search instead of repeating the first run's trials exactly.
    study.sampler = optuna.samplers.TPESampler(seed=args.seed + 100_003 * len(study.trials))
    done = len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
    if done < args.trials:
        print(f"tuning {args.algo}: {args.trials - done} trials ({done} done), {args.trial_agents} agents x "
              f"{args.trial_episodes} episodes each, on train seeds {study_runner.train_seeds}")
        study.optimize(objective, n_trials=args.trials - done, show_progress_bar=not args.no_progress)
    frame = study.trials_dataframe()
    with atomic_write(run_dir / "trials.csv") as handle:
        frame.to_csv(handle, index=False)
    best = study.best_trial
    print(f"best trial {best.number}: train-seed return {best.value:+.4f}, regret {best.user_attrs['regret']:.4f}")
    return {**defaults, **sample(optuna.trial.FixedTrial(best.params))}


def compare(default: dict[str, Any], tuned: dict[str, Any], algo: str) -> tuple[dict[str, Any], str]:
    """Default against tuned on the held-out seeds: both summaries' statistics and the paired
    difference (tuned − default, agent by agent: the same agent seeds)."""
    keys = ("test_return", "regret", "gain_over_best_constant", "gain_over_open_loop")
    paired = {key: mean_std([t[key] - d[key] for t, d in zip(tuned["agents"], default["agents"])]) for key in keys}
    result = {"algo": algo, "default": {k: default[k] for k in keys}, "tuned": {k: tuned[k] for k in keys},
              "tuned_minus_default": paired, "oracle_test_return": default["oracle_test_return"],
              "best_constant": default["best_constant"], "open_loop": default["open_loop"],
              "train_seeds": default["train_seeds"], "test_seeds": default["test_seeds"]}

    train_keys = ("return", "regret", "gain_over_best_constant", "gain_over_open_loop")
    train_paired = {key: mean_std([t["train"][key] - d["train"][key] for t, d in zip(tuned["agents"], default["agents"])])
                    for key in train_keys}
    result["train"] = {"default": default["train"], "tuned": tuned["train"], "tuned_minus_default": train_paired}

    def arms_table(return_header: str, arms, keys) -> list[str]:
        return [f"| | {return_header} | regret | gain vs best constant | gain vs best open-loop |", "|---|---|---|---|---|",
                *(f"| {label} | " + " | ".join(fmt_stats(stats[k]) for k in keys) + " |"
                  for label, stats in zip(("default", "tuned", "tuned − default (paired)"), arms))]

    rows = [f"{algo}, held-out seeds {default['test_seeds']} ({len(default['agents'])} agents each; returns before "
            "scaling; paired = same agent seed)", "",
            *arms_table("held-out return", (default, tuned, paired), keys),
            "", f"The same agents on their train seeds {default['train_seeds']} (what the tuning optimised):", "",
            *arms_table("train-seed return", (default["train"], tuned["train"], train_paired), train_keys)]
    return result, "\n".join(rows) + "\n"


@run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        algorithm = get_algorithm(args.algo)
        table, train_seeds, test_seeds = table_and_split(args.table, args.train_seeds, args.test_seeds)
        if args.reward_scale <= 0:
            raise ConfigError(f"--reward-scale must be > 0, not {args.reward_scale}")
        defaults = load_hyperparams(algorithm.name)
        runner = TableStudy(table, algorithm, train_seeds, test_seeds, args.reward, args.reward_scale,
                            args.trial_episodes)
        runner.check(defaults)
        defaults = defaults.as_dict()
        run_dir = Path(args.output_dir) if args.output_dir else (
            runs_dir() / "tables" / table.task / f"tune_{algorithm.name}_{time.strftime('%Y%m%d-%H%M%S')}")
        check_writable(run_dir)
    except (ConfigError, TableError, ValueError, OSError) as error:
        return fail(error)
    import torch

    torch.set_num_threads(1)  # a 64-unit MLP gains nothing from more threads
    run_dir.mkdir(parents=True, exist_ok=True)
    tuned = tune(runner, defaults, args, run_dir)
    with atomic_write(run_dir / "tuned.yaml") as handle:
        yaml.safe_dump(tuned, handle, sort_keys=True)
    runner.episodes = args.episodes
    agent_seeds = range(args.seed, args.seed + args.agent_seeds)
    summaries = {}
    for label, params in (("default", defaults), ("tuned", tuned)):
        try:  # agents finished by an earlier, killed run are reused...
            runner.resumable(run_dir / label, runner.record(params, list(agent_seeds)))
        except ConfigError as reason:  # ...unless they are another run's (e.g. more trials found another best)
            aside = run_dir / f"{label}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
            (run_dir / label).rename(aside)
            print(f"{reason}: moved to {aside.name}, training afresh")
        summaries[label] = runner.run(params, agent_seeds, run_dir / label, progress=not args.no_progress)
    result, text = compare(summaries["default"], summaries["tuned"], algorithm.name)
    result["tuned_hyperparams"] = tuned
    write_report(run_dir, "comparison", text, result)
    print(f"tuned hyperparameters in {run_dir / 'tuned.yaml'}; results in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
