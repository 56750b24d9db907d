"""Train RL agents on a schedule table and score them on held-out seeds.

    python agents/train_table.py --algo ppo --table stsb
    python agents/train_table.py --algo dqn --table mrpc --train-seeds 0-2 --test-seeds 3 --episodes 5000
    python agents/train_table.py --algo ppo --table stsb_h100_u8 --hp-file docs/tuned/stsb_h100_u8_ppo.yaml

A table holds every schedule's outcome, so an episode costs microseconds: no model, no data, no
teacher. Each of --agent-seeds agents trains for --episodes episodes on the train seeds, then
plays deterministically on the held-out seeds, where it is scored against what the table knows
exactly: regret (the per-seed oracle minus the agent's return) and the gain over the best
constant and the best open-loop schedule, both chosen on the train seeds. The same scores on the
train seeds say what the agent learned there, before the question of whether it carries over.

Writes runs/tables/<task>/<algo>_<time>/ (or --output-dir): config.yaml, agent_seed<N>.zip|json,
results.{md,json}, TensorBoard events. Rerun with the same --output-dir and settings to reuse the
agents finished there (a killed run resumes); other settings are refused.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kdenv.benchmark.study import TableStudy, table_and_split
from kdenv.cli import CLEAR_ERRORS, fail, run_main
from kdenv.config import ConfigError, EnvConfig
from kdenv.decision.algorithms import ALGORITHMS, get_algorithm, load_hyperparams
from kdenv.decision.rewards import REWARDS
from kdenv.io import check_writable
from kdenv.paths import runs_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--algo", required=True, choices=list(ALGORITHMS), help="RL algorithm")
    add("--table", required=True, metavar="NAME|PATH",
        help="a shipped table's name (stsb, mrpc, stsb_h100_u8, ...: kdenv/tables/) or a table folder")
    add("--train-seeds", default=None, metavar="SEEDS", help="table seeds to train on, e.g. 0-2 or 0,1,2 (default: all but the test seeds)")
    add("--test-seeds", default=None, metavar="SEEDS", help="held-out table seeds to score on (default: the table's last seed)")
    add("--episodes", type=int, default=10_000, help="training episodes per agent (default 10000)")
    add("--agent-seeds", type=int, default=5, help="agents trained, one per seed --seed, --seed+1, ... (default 5)")
    add("--seed", type=int, default=0, help="the first agent's seed (default 0)")
    add("--reward", default="metric_gain", choices=sorted(REWARDS), help="reward variant (default metric_gain)")
    add("--reward-scale", type=float, default=EnvConfig().reward_scale,
        help=f"multiplier on the rewards the agent sees (default {EnvConfig().reward_scale:g}, the environment's)")
    add("--hp", nargs="*", default=[], metavar="KEY=VALUE", help="hyperparameter overrides (YAML values), e.g. learning_rate=1e-3")
    add("--hp-file", default=None, metavar="PATH",
        help="hyperparameter YAML instead of the defaults (kdenv/decision/hyperparams/<algo>.yaml), e.g. a tuned.yaml")
    add("--output-dir", default=None, help="run folder (default runs/tables/<task>/<algo>_<time>); an existing one resumes")
    add("--no-progress", action="store_true", help="hide progress bars")
    return parser.parse_args(argv)


@run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # 1. Check everything before anything is written.
    try:
        algorithm = get_algorithm(args.algo)
        table, train_seeds, test_seeds = table_and_split(args.table, args.train_seeds, args.test_seeds)
        if args.episodes < 1 or args.agent_seeds < 1:
            raise ConfigError("--episodes and --agent-seeds must be >= 1")
        if args.reward_scale <= 0:
            raise ConfigError(f"--reward-scale must be > 0, not {args.reward_scale}")
        hyperparams = load_hyperparams(algorithm.name, args.hp, args.hp_file)
        study = TableStudy(table, algorithm, train_seeds, test_seeds, args.reward, args.reward_scale, args.episodes)
        study.check(hyperparams)
        run_dir = Path(args.output_dir) if args.output_dir else (
            runs_dir() / "tables" / table.task / f"{algorithm.name}_{time.strftime('%Y%m%d-%H%M%S')}")
        check_writable(run_dir)
    except CLEAR_ERRORS as error:
        return fail(error)
    import torch

    torch.set_num_threads(1)  # a 64-unit MLP gains nothing from more threads
    # 2. Train and score one agent per seed (run() reuses this run's finished agents in run_dir,
    # and refuses another run's before any training).
    try:
        study.run(hyperparams.as_dict(), range(args.seed, args.seed + args.agent_seeds), run_dir,
                  progress=not args.no_progress)
    except ConfigError as error:
        return fail(error)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished agents are kept in {run_dir}. Continue with:\n  "
              f"python agents/train_table.py {' '.join(sys.argv[1:] if argv is None else argv)}"
              f"{'' if args.output_dir else f' --output-dir {run_dir}'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
