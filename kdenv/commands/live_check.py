"""Take a leaderboard agent row off the table and onto the real trainer, on episode seeds no table holds.

    python agents/live_check.py --table stsb_u8 --row ppo-tuned                 # 16 new seeds, 3 agents
    python agents/live_check.py --table stsb_u8 --row a2c --seeds 16-31 --agent-seeds 5 --dry-run

A table says what every schedule would have scored on its own seeds; whether what an agent learned
there holds on a new seed, where no table exists, only the live trainer can say. The check:

  1. The configuration is the leaderboard's (its result file in kdenv/results/leaderboard/ must
     exist: run `agents/leaderboard.py --retrain` first); a tuned row's hyperparameters are
     searched on all of the table's seeds (kept in that result file under "all").
  2. --agent-seeds agents of that configuration train on all of the table's seeds.
  3. The baseline is the best constant subset chosen on all of the table's seeds: what one would
     pick without learning. It is named before any live run (`evaluate.py --baseline`).
  4. The agents, the baseline and any --extra policies (open-loop: the best fixed schedule chosen
     on all of the table's seeds, as the baseline is) play on --seeds new episode seeds (by
     default those right after the table's last), through `agents/evaluate.py` with the table's
     own data, student and budget settings; every run is cached and resumes (--ray: the runs as
     one-thread Ray jobs on every core).
  5. Per new seed, each agent's final metric minus the baseline's on the same seed (the same data
     order and dropout), on GLUE dev and on the reward split: the mean and IQM with two-level
     bootstrap 95% intervals (new seeds resampled, then agent seeds within each), and the
     probability of improving on the baseline.

Writes runs/live/<table>/<row>/: agents/seed<N>/ (each zip and its record), eval/ (evaluate's report and
runs), live_check.{md,json}. Needs the table's teacher (its fingerprint is checked) and the GLUE
files (--data-dir or $KDENV_GLUE_DIR).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kdenv.benchmark.board import AGENTS, REPORT_REWARD, best_agent, load_result, result_path
from kdenv.benchmark.live import (
    constant_policy,
    live_report,
    run_seconds,
    schedule_policy,
    table_gains,
    train_agents,
)
from kdenv.benchmark.protocol import FoldView
from kdenv.benchmark.table import resolve_table, table_configs
from kdenv.benchmark.validate import check_saved_teacher
from kdenv.cli import CLEAR_ERRORS, add_seed_arguments, chosen_seeds, fail, run_main
from kdenv.config import ConfigError
from kdenv.decision.evaluation import EvaluationRequest, evaluate_policies
from kdenv.decision.evaluation_report import write_report
from kdenv.decision.policies import check_policy
from kdenv.io import check_writable, write_all
from kdenv.jobs import JobRunner, add_job_arguments
from kdenv.paths import leaderboard_results_dir, runs_dir
from kdenv.stats import ci_text, seeds_text


def planned_seeds(table_name: str) -> list[int]:
    """The seeds a regime's table is planned to hold (kdenv.benchmark.regimes), none for another table."""
    from kdenv.benchmark.regimes import find_regime
    from kdenv.cli import parse_seeds

    entry = find_regime(Path(table_name).name)
    return [] if entry is None else parse_seeds(entry.seeds)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--table", required=True, metavar="NAME|PATH", help="the table the row was ranked on (a shipped name or a folder)")
    add("--row", required=True, choices=[*sorted(AGENTS), "best"],
        help="the leaderboard agent row to check; best: the row with the highest mean gain over the best constant "
             "on the table's held-out seeds, among those with a finished result file")
    add_seed_arguments(add, 16, "new episode seeds to play on",
                       "first new episode seed of --num-seeds (default: the table's last seed + 1; seeds the table "
                       "holds are refused)")
    add("--agent-seeds", type=int, default=3, help="agents trained on the table, each played on every new seed "
        "(default 3)")
    add("--extra", default="", metavar="A,B",
        help="more fixed policies to play and compare with the baseline, e.g. only-gradient,kd or "
             "schedule-hidden+gradient/gradient/hidden; open-loop: the best fixed schedule chosen on all of the "
             "table's seeds by the same reward as the baseline (default none)")
    add("--k", type=int, default=4, help="the leaderboard's folds (to find its result file; default 4)")
    add("--results-dir", default=None, help="the leaderboard's agent result files (default: the committed ones, "
        "kdenv/results/leaderboard/)")
    add("--output-dir", default=None, help="default runs/live/<table>/<row>")
    add("--dry-run", action="store_true", help="print the plan (baseline, seeds, runs) and stop")
    add("--data-dir", default=None, help="local GLUE folder (download_glue_data.py layout); default $KDENV_GLUE_DIR")
    add("--no-progress", action="store_true", help="hide progress output")
    add("--no-share-prefixes", action="store_true",
        help="train every run's phases in full (default: a seed's runs go to one process, and a phase an earlier "
             "run of the seed trained with the same actions is restored instead of trained again: bit-exact on the "
             "CPU; each result counts its reused_phases)")
    add_job_arguments(add)  # the live runs, as evaluate.py's jobs: --ray plays them on every core
    args = parser.parse_args(argv)
    if args.agent_seeds < 1 or args.k < 2:
        parser.error("--agent-seeds must be >= 1 and --k >= 2 (the leaderboard's folds)")
    return args


@run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        table = resolve_table(args.table)
        table_name = Path(args.table).name
        if len(table.seeds) < 2:
            raise ConfigError(f"table {table_name} has {len(table.seeds)} seed: the leaderboard ranks agent rows by a "
                              "k-fold over at least 2 seeds, so no row exists to check here; build more seeds first "
                              "(python agents/build_tree.py ... --seeds 1-3 with the table's settings)")
        k = min(args.k, len(table.seeds))
        results_dir = Path(args.results_dir) if args.results_dir else leaderboard_results_dir()
        if args.row == "best":
            args.row, scores = best_agent(table_name, table, results_dir, k)
            print(f"the best agent row on {table_name}: {args.row} (gain over the best constant on held-out seeds "
                  f"{ci_text(scores['gain'])}, {scores['seeds']} seeds x {scores['agent_seeds']} agent seeds)")
        path = result_path(results_dir, table_name, args.row)
        result = load_result(path, table, k)
        if result is None or any(str(seed) not in result["returns"] for seed in table.seeds):
            raise ConfigError(f"no finished leaderboard result for {args.row} on {table_name} in {path}; run: python "
                              f"agents/leaderboard.py --retrain --tables {args.table} --agents {args.row}"
                              + (f" --k {args.k}" if args.k != 4 else ""))
        # a regime's table is still being built to its planned seeds: those are not new either
        reserved = sorted({*table.seeds, *planned_seeds(table_name)})
        seeds = chosen_seeds(args, max(reserved) + 1)
        if set(seeds) & set(reserved):
            raise ConfigError(f"episode seeds {sorted(set(seeds) & set(reserved))} are in the table or planned for it "
                              f"(kdenv/benchmark/regimes.py): a live check plays on new seeds only; pass --first-seed "
                              f"{max(reserved) + 1} or more")
        view = FoldView(table, REPORT_REWARD)
        baseline_column = view.best_constant(table.seeds)
        baseline = constant_policy(table, view.sequences[baseline_column][0])
        open_loop = schedule_policy(table, view.sequences[view.best_open_loop(table.seeds)])
        named = [open_loop if name.strip() == "open-loop" else name.strip() for name in args.extra.split(",")]
        extra = list(dict.fromkeys(name for name in named if name and name != baseline))
        for name in extra:  # what evaluate.py would refuse after the agents train, refused now (dry runs too)
            check_policy(name, table.knowledge, table.phases)
        out = Path(args.output_dir) if args.output_dir else runs_dir() / "live" / table_name / args.row
        check_writable(out)
        JobRunner.from_args(args).check()  # before any agent trains: Ray installed, the cluster reachable
    except CLEAR_ERRORS as error:
        return fail(error)
    runs_count = len(seeds) * (args.agent_seeds + 1 + len(extra))
    per_run = run_seconds(table)
    cost = ""
    if per_run:
        sharing = "" if args.no_share_prefixes else ("; runs of a seed that open alike train their common phases "
                                                     "once, which saves a part of it")
        cost = (f"; projected {runs_count * per_run / 3600:.1f} h on one thread as independent runs ({per_run / 60:.1f} "
                f"min a run, from the table's measured node times, setup not counted; --ray shares them over its "
                f"workers{sharing})")
    print(f"live check of {args.row} on {table_name}: baseline {baseline} (best constant on seeds {table.seeds}), "
          f"{args.agent_seeds} agents, extra {extra or 'none'}; {runs_count} live runs on {seeds_text(seeds)}{cost}")
    if args.dry_run:
        return 0
    import torch

    try:
        check_saved_teacher(table, required=True)  # the table's teacher (the agents learned its outcomes), first
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # agents: a small MLP
        study, zips = train_agents(table, args.row, result, args.agent_seeds, path, out, not args.no_progress)
        torch.set_num_threads(threads)
        data, distill, env = table_configs(table, args.data_dir, device="auto")  # the table's own trainer
        request = EvaluationRequest(
            policies=[baseline, *extra, *(f"agent:{zip_path}" for zip_path in zips)], seeds=seeds, data=data,
            distill=distill, knowledge=table.knowledge, out=out / "eval", baseline=baseline,
            budget={"phases": env.phases, "updates_per_phase": env.updates_per_phase, "episode_epochs": env.episode_epochs},
            progress=not args.no_progress, share_prefixes=not args.no_share_prefixes)
        evaluation = evaluate_policies(request, JobRunner.from_args(args), device="auto", precision=distill.precision)
    except CLEAR_ERRORS as error:
        return fail(error)
    command = "python agents/live_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(evaluation, command)
    report, text = live_report(table, table_name, args.row, baseline, extra, evaluation.runs, seeds,
                               table_gains(study, zips, view, baseline_column))
    report.update(agents=[str(zip_path) for zip_path in zips], command=command)
    print(text)
    write_all({out / "live_check.md": text.encode(), out / "live_check.json": json.dumps(report, indent=2).encode()})
    print(f"live check written to {out / 'live_check.md'} (and .json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
