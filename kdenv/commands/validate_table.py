"""Replay schedules of a table on the live trainer and check every recorded observation and
reward. On the CPU, with the table's teacher, software and thread count, the match is exact.

    python agents/validate_table.py --table stsb                      # the oracle schedule of each seed
    python agents/validate_table.py --table stsb --seed 2 --schedule 7,0,3

Needs what the table itself does not: the task's teacher (its fingerprint must be the table's)
and the GLUE files (--data-dir or $KDENV_GLUE_DIR).
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from kdenv import numerics
from kdenv.benchmark.oracle import all_returns
from kdenv.benchmark.table import TableError, resolve_table
from kdenv.benchmark.tree import parse_prefix
from kdenv.benchmark.validate import (
    build_caches_in,
    caches_by_seed,
    check_before_replay,
    check_teacher,
    plan_text,
    replay_context,
    replayable_seeds,
    saved_teacher_refusal,
    statistical_replay,
    table_setup,
    validate,
)
from kdenv.cli import CLEAR_ERRORS, add_common_arguments, fail, parse_seeds, run_main
from kdenv.engine.runtime import quiet_transformers
from kdenv.engine.teacher import teacher_metadata


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", required=True, metavar="NAME|PATH",
                        help="a shipped table's name (stsb, mrpc, stsb_h100_u8, ...: kdenv/tables/) or a table folder")
    parser.add_argument("--seed", default=None, metavar="SEEDS",
                        help="replay on these seeds only, e.g. 2 or 7-15 (default: every seed this machine can replay "
                             "exactly: those of its replay class and teacher, docs/numerics.md; the others are named)")
    parser.add_argument("--schedule", default=None, help="subset indices, e.g. 7,0,3 (default: each seed's oracle schedule)")
    parser.add_argument("--statistical", type=int, default=0, metavar="N",
                        help="where an exact replay is impossible (another CPU in native numerics, other software, "
                             "a rebuilt teacher): play N random schedules per seed live and report the largest "
                             "difference and the rank correlation of their returns with the table's (default 0: "
                             "exact replay)")
    add_common_arguments(parser.add_argument)
    return parser.parse_args(argv)


@run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_transformers()
    try:
        table = resolve_table(args.table)
        if args.statistical < 0:
            raise ValueError(f"--statistical must be >= 0, not {args.statistical}")
        # A replay needs the table's teacher on this machine: refused now, with the command that makes
        # it, rather than fine-tuned with defaults after minutes of preparation (another teacher).
        if teacher_metadata(table.task) is None:
            raise TableError(saved_teacher_refusal(table, None, None, required=True))
        if args.seed is not None:
            seeds = parse_seeds(args.seed, "--seed")
            unknown = [seed for seed in seeds if seed not in table.seeds]
            if unknown:
                raise ValueError(f"--seed: seeds {unknown} are not in the table (it has {table.seeds})")
        elif args.statistical:
            seeds = list(table.seeds)
        else:
            seeds, elsewhere = replayable_seeds(table, args.device)
            if elsewhere:
                print(f"seeds {sorted(elsewhere)} left out (not replayable exactly here): {next(iter(elsewhere.values()))}")
        if args.schedule:
            schedules = {seed: list(parse_prefix(args.schedule)) for seed in seeds}
        else:  # each seed's oracle schedule
            sequences, returns = all_returns(table, "metric_gain")
            schedules = {seed: list(sequences[int(returns[row].argmax())]) for row, seed in enumerate(table.seeds)}
        if not args.statistical:
            check_before_replay(table, args.device, seeds)  # the teacher and the numerics, before minutes of preparation
        if args.statistical:
            environment = table_setup(table, args.data_dir, args.device).build_env(progress=not args.no_progress)
            for seed in seeds:
                found = statistical_replay(table, seed, environment, args.statistical)
                print(f"seed {seed}: {args.statistical} random schedules live vs table: largest |difference| "
                      f"{found['max_abs_difference']:.5f}, rank correlation {found['rank_correlation']:+.3f}")
            return 0
        results = []
        # Seeds whose teacher caches were computed in other numerics than this process's (native ones,
        # on the Intel Xeon the first tables were built on) replay on caches computed in those, here
        # in a subprocess.
        for plan, group in caches_by_seed(table, seeds, replay_context(table, args.device)[1]):
            setup = table_setup(table, args.data_dir, args.device)
            caches = contextlib.nullcontext() if plan is None else numerics.caches_computed_in(plan)
            if plan is not None:
                print(f"seeds {group}: teacher caches computed in {plan_text(plan)} (a subprocess in those numerics)")
                build_caches_in(plan, setup)
            with caches:
                environment = setup.build_env(progress=not args.no_progress)
            check_teacher(table, environment, group)
            results += [validate(table, schedules[seed], seed, environment) for seed in group]
    except (*CLEAR_ERRORS, KeyError) as error:
        return fail(error)
    for result in results:
        verdict = "exact match" if result.ok else f"{len(result.mismatches)} mismatches: " + "; ".join(result.mismatches[:3])
        print(f"seed {result.seed}, schedule {result.schedule}: {verdict}")
    return 0 if all(result.ok for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
