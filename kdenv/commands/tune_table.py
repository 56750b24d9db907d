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

import yaml

from kdenv.benchmark import tuning
from kdenv.benchmark.study import TableStudy, fmt_stats, table_and_split, write_report
from kdenv.cli import CLEAR_ERRORS, fail, run_main
from kdenv.config import ConfigError, EnvConfig
from kdenv.decision.algorithms import get_algorithm, load_hyperparams
from kdenv.decision.rewards import REWARDS
from kdenv.io import atomic_write, check_writable, read_checked_record, write_checked_record
from kdenv.paths import runs_dir
from kdenv.stats import mean_std


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", required=True, choices=sorted(tuning.SEARCH_SPACES), help="RL algorithm to tune")
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
    parser.add_argument("--reward-scale", type=float, default=EnvConfig().reward_scale,
                        help=f"reward multiplier the agents see (default {EnvConfig().reward_scale:g}, the environment's)")
    parser.add_argument("--output-dir", default=None, help="default runs/tables/<task>/tune_<algo>_<time>; an existing one resumes")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    for name in ("trials", "trial_episodes", "trial_agents", "episodes", "agent_seeds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def tune(study_runner: TableStudy, defaults: dict[str, Any], args, run_dir: Path) -> dict[str, Any]:
    """The Optuna study on the train seeds, kept in run_dir/study.db (a rerun adds trials), and its
    trials.csv; returns the best trial's full hyperparameters."""
    import optuna

    storage = f"sqlite:///{run_dir / 'study.db'}"
    tuned, record = tuning.tune(study_runner, defaults, args.algo, args.trials, args.trial_agents, seed=args.seed,
                                storage=storage, progress=not args.no_progress)
    frame = optuna.load_study(study_name="tune", storage=storage).trials_dataframe()
    with atomic_write(run_dir / "trials.csv") as handle:
        frame.to_csv(handle, index=False)
    print(f"best trial {record['best_trial']}: train-seed return {record['train_return']:+.4f}, "
          f"regret {record['train_regret']:.4f}")
    return tuned


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
        check_study_folder(run_dir, study_identity(args, runner))
    except CLEAR_ERRORS as error:
        return fail(error)
    import torch

    torch.set_num_threads(1)  # a 64-unit MLP gains nothing from more threads
    try:
        return run_study(args, runner, defaults, run_dir)
    except KeyboardInterrupt:
        given = sys.argv[1:] if argv is None else list(argv)
        again = given if args.output_dir else [*given, "--output-dir", str(run_dir)]
        print(f"\ninterrupted; the study and finished agents are kept in {run_dir}; resume with:\n"
              f"  python agents/tune_table.py {' '.join(again)}", file=sys.stderr)
        return 130


STUDY_RECORD = "study.json"


def study_identity(args, runner: TableStudy) -> dict[str, Any]:
    """What a study's trials depend on: the table (its files), the split, the reward and the trial
    budget. A study folder keeps it, and a rerun with another refuses to add its trials there."""
    table = runner.table
    return {"table": table.name, "table_files": table.manifest.get("files", {}), "algo": args.algo,
            "train_seeds": runner.train_seeds, "test_seeds": runner.test_seeds, "reward": args.reward,
            "reward_scale": args.reward_scale, "trial_episodes": args.trial_episodes,
            "trial_agents": args.trial_agents, "seed": args.seed}


def check_study_folder(run_dir: Path, identity: dict[str, Any]) -> None:
    """Refuses a study folder made for another table, split, reward or budget (its trials would be
    mixed with these), or whose record is damaged; a new folder gets the record."""
    recorded, damage = read_checked_record(run_dir / STUDY_RECORD)
    if damage is not None or (recorded is None and (run_dir / "study.db").exists()):
        why = damage or "it holds trials but no record of what they were run on"
        raise ConfigError(f"{run_dir / STUDY_RECORD} cannot be trusted ({why}): its trials may be another study's. "
                          "Pass another --output-dir, or delete that folder to start over")
    if recorded is not None:
        differing = [key for key in identity if recorded.get(key) != identity[key]]
        if differing:
            raise ConfigError(f"{run_dir} holds a study of another {', '.join(differing)} "
                              f"({', '.join(f'{key} {recorded.get(key)!r}' for key in differing if key != 'table_files')}); "
                              "pass another --output-dir for this one")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    write_checked_record(run_dir / STUDY_RECORD, identity)


def run_study(args, runner: TableStudy, defaults: dict[str, Any], run_dir: Path) -> int:
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
    result, text = compare(summaries["default"], summaries["tuned"], args.algo)
    result["tuned_hyperparams"] = tuned
    write_report(run_dir, "comparison", text, result)
    print(f"tuned hyperparameters in {run_dir / 'tuned.yaml'}; results in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
