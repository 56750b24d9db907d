"""The leaderboard of knowledge schedules on the shipped tables, with bootstrap 95% intervals.

    python agents/leaderboard.py                       # docs/leaderboard.{md,json,png} from tables + results (minutes)
    python agents/leaderboard.py --retrain --dry-run   # what retraining every agent row would cost
    python agents/leaderboard.py --retrain             # retrain the agent rows, then write the leaderboard
    python agents/leaderboard.py --verify              # replay every stored row against its table (seconds)

The protocol (kdenv/benchmark/protocol.py): k-fold over each table's seeds, every seed held out
once; whatever a row chooses (the best constant, the best open-loop schedule, an agent's training)
it chooses on the train folds. Rows: the oracle, the closed-loop bound of a seed-blind policy (over
all the table's seeds), the
best open-loop schedule and best constant (train folds), the random schedule (the exact mean over
all schedules: the knowledge-selection paper's Random-Hard), every constant, kd and gkd (and the
other named fixed policies), and the agents: A2C, PPO and DQN with the shipped default
hyperparameters; the same three tuned inside each fold (an Optuna search of --tune-trials trials
on the fold's train seeds only, kdenv/benchmark/tuning.py; the held-out seeds never steer it);
and A2C in the knowledge-selection paper's setting as closely as a table allows (actor-critic,
the loss-decrease reward, a count-based exploration bonus). Columns per table:
return, regret, normalised regret (0 at the oracle, 1 at the best constant), gain over the best
constant, probability of improving on it, the share of the closed-loop headroom captured (gain
over the constant divided by the closed-loop bound's); mean or IQM with two-level bootstrap 95%
intervals, and how many held-out seeds and agent seeds stand behind each.

Agent rows come from small result files (one per table and agent configuration, in
kdenv/results/leaderboard/: every held-out seed's return for every agent seed), written by
--retrain and committed, so that the leaderboard is rebuilt in minutes without training. A result
file is used only for the table it was trained on (its seed files' checksums are recorded).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kdenv.benchmark import board_report
from kdenv.benchmark.board import (
    AGENTS,
    BOARD_TABLES,
    BoardSettings,
    agents_to_train,
    build_board,
    default_tables,
    projected_cost,
    retrain_jobs,
    run_retrain_job,
    train_reward_on,
    verify_results,
)
from kdenv.benchmark.table import Table, resolve_table
from kdenv.cli import fail, run_main
from kdenv.config import ConfigError
from kdenv.decision.rewards import REWARDS
from kdenv.errors import KdenvError
from kdenv.io import write_all
from kdenv.jobs import JobRunner, add_job_arguments
from kdenv.paths import leaderboard_results_dir

DEFAULTS = BoardSettings()
OUTPUT = "docs/leaderboard"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--tables", default=None, metavar="A,B",
        help="tables to rank on (names or folders; default: the board's tables, " + ",".join(BOARD_TABLES) + ")")
    add("--k", type=int, default=DEFAULTS.k, help=f"folds over each table's seeds (default {DEFAULTS.k}; every seed "
        "held out once)")
    add("--retrain", action="store_true", help="train the agent rows afresh (resumable), then write the leaderboard")
    add("--dry-run", action="store_true", help="with --retrain: print the projected cost and stop")
    add("--verify", action="store_true",
        help="replay every stored agent row against its table (each agent's schedule on each seed must give the "
             "stored return) and stop: exit 0 when all agree, 1 naming each difference; writes nothing")
    add("--agents", default=",".join(AGENTS), help=f"agent rows to retrain, comma list of {', '.join(AGENTS)} "
        "(default: all)")
    add("--agent-seeds", type=int, default=DEFAULTS.agent_seeds,
        help=f"agent seeds per fold (default {DEFAULTS.agent_seeds})")
    add("--episodes", type=int, default=DEFAULTS.episodes, help=f"training episodes per agent (default "
        f"{DEFAULTS.episodes}: tables x folds x agent seeds x agents is many agents)")
    add("--tune-trials", type=int, default=DEFAULTS.tune_trials,
        help=f"tuned rows: Optuna trials per fold, each on the fold's train seeds only (default {DEFAULTS.tune_trials})")
    add("--tune-agents", type=int, default=DEFAULTS.tune_agents,
        help="tuned rows: agents per trial, of --episodes episodes each; their mean train-seed return is the "
             f"objective (default {DEFAULTS.tune_agents})")
    add("--train-reward", default=None, choices=sorted(REWARDS), metavar="REWARD",
        help="with --retrain: the reward the rows that train on metric_gain train on instead (the paper row keeps "
             "loss_decrease); every row is still scored in metric_gain and on dev, and the board names the reward "
             f"beside such a row. One of {', '.join(sorted(REWARDS))} (default: on a regime's table the reward "
             "measured for it, e.g. teacher_agreement on stsb_k2_u128 (kdenv/benchmark/regimes.py), else each row's "
             "own)")
    add("--results-dir", default=None, help="where agent result files live (default: the committed ones shipped "
        "with the package, kdenv/results/leaderboard/)")
    add("--output", default=OUTPUT, help=f"leaderboard files: <output>.md, .json, .png (default {OUTPUT})")
    add("--no-progress", action="store_true", help="hide progress output")
    add_job_arguments(add)  # --retrain's (table, agent row) jobs, one thread each: --ray uses every core
    args = parser.parse_args(argv)
    if args.k < 2 or min(args.agent_seeds, args.episodes, args.tune_trials, args.tune_agents) < 1:
        parser.error("--k must be >= 2; --agent-seeds, --episodes, --tune-trials and --tune-agents >= 1")
    return args


def settings_of(args: argparse.Namespace) -> BoardSettings:
    return BoardSettings(k=args.k, agent_seeds=args.agent_seeds, episodes=args.episodes, tune_trials=args.tune_trials,
                         tune_agents=args.tune_agents, progress=not args.no_progress, train_reward=args.train_reward,
                         results_dir=Path(args.results_dir) if args.results_dir else leaderboard_results_dir())


def remake_command(args: argparse.Namespace) -> str:
    """The command that rebuilds this board from the committed files: every flag that shapes it,
    where it differs from the default (the tables, the folds, where results are read and the board written)."""
    defaults = {"tables": None, "k": DEFAULTS.k, "results_dir": None, "output": OUTPUT}
    return " ".join(["python agents/leaderboard.py", *(f"--{flag.replace('_', '-')} {getattr(args, flag)}"
                                                       for flag, default in defaults.items()
                                                       if getattr(args, flag) != default)])


@run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.tables:
            tables = {name: resolve_table(name) for name in (t.strip() for t in args.tables.split(",")) if name}
        else:
            tables = default_tables()
        for name, table in tables.items():
            if len(table.seeds) < 2:
                raise ConfigError(f"table {name} has {len(table.seeds)} seed(s): a k-fold needs at least 2")
        agents = [a.strip().lower() for a in args.agents.split(",") if a.strip()]
        unknown = [a for a in agents if a not in AGENTS]
        if unknown or not agents:
            raise ConfigError(f"--agents {args.agents!r}: choose among {', '.join(AGENTS)}")
        if args.verify:
            return verify(tables, settings_of(args))
        return board_and_files(tables, agents, args)
    except KdenvError as error:  # a bad flag or table; a damaged result file, read while retraining or building
        return fail(error)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished agents are kept in {settings_of(args).results_dir}: run the same command "
              "to resume", file=sys.stderr)
        return 130


def verify(tables: dict[str, Table], settings: BoardSettings) -> int:
    replayed, problems = verify_results(tables, settings)
    for problem in problems:
        print(f"mismatch: {problem}", file=sys.stderr)
    print(f"verified {replayed} stored agent returns on {len(tables)} tables against their schedules in "
          f"{settings.results_dir}: " + (f"{len(problems)} problems" if problems else "every one replays exactly"))
    return 1 if problems else 0


def board_and_files(tables: dict[str, Table], agents: list[str], args: argparse.Namespace) -> int:
    """Retrains what ``--retrain`` asks for, then writes the board's three files, all or nothing."""
    settings = settings_of(args)
    if args.retrain:
        import torch

        runner = JobRunner.from_args(args)
        runner.check()
        torch.set_num_threads(max(1, int(args.cpus_per_job)))
        counts = agents_to_train(tables, agents, settings)
        cost = projected_cost(counts, next(iter(tables.values())), settings)
        print(f"retraining: {sum(counts.values())} agents still to train ({', '.join(f'{a} {n}' for a, n in counts.items())}; "
              f"{len(tables)} tables x {args.k} folds x {args.agent_seeds} agent seeds per row, plus the across-tasks "
              f"pairs; {args.episodes} episodes each; finished agents in {settings.results_dir} are reused): projected "
              f"{cost / 3600:.2f} h on one thread; {len(tables) * len(agents)} (table, row) jobs, which --ray runs "
              f"in parallel")
        for name in tables:  # where the rows that train on metric_gain train on another reward, say which
            reward = train_reward_on(settings, name)
            if reward and reward != "metric_gain":
                why = "--train-reward" if args.train_reward else "the reward measured for its regime"
                print(f"on {name} the rows that train on metric_gain train on {reward} ({why})")
        if args.dry_run:
            return 0
        start = time.perf_counter()
        jobs = retrain_jobs(tables, agents, settings)
        runner.map(run_retrain_job, jobs, on_result=lambda _, line: None if args.no_progress else print(line))
        print(f"retrained in {(time.perf_counter() - start) / 60:.1f} min")
    board = build_board(tables, settings, remake_command(args))
    for name, entry in board["tables"].items():  # the board is written either way; say what it could not resample
        resamples = entry.get("reward_to_dev_resamples") or "seeds"
        if resamples.startswith("seeds (examples not"):
            print(f"note: {name} keeps per-example outputs, but its intervals resample seeds only: "
                  f"{resamples.removeprefix('seeds (examples not: ').removesuffix(')')}", file=sys.stderr)
    output = Path(args.output)
    write_all({output.with_suffix(".md"): board_report.markdown_text(board).encode(),
               output.with_suffix(".json"): json.dumps(board, indent=2).encode(),
               output.with_suffix(".png"): board_report.figure_png(board)})
    print(f"leaderboard written to {output.with_suffix('.md')} (and .json, .png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
