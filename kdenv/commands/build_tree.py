"""Build a schedule table: every knowledge schedule of a short distillation, run from the same
initial student on the real trainer, for several episode seeds.

    python agents/build_tree.py --task stsb --seeds 0-3 --phases 3 --updates-per-phase 4
    python agents/build_tree.py --task stsb --seeds 0-3 --estimate      # the projected cost, split, before building

With K offered types there are 2^K subsets per phase: for K = 3 and P = 3 phases, 8 + 64 + 512 =
584 phases per seed. Each child restores its parent's snapshot, so siblings share batches and
dropout draws (common random numbers) and differ only by the action. Leaves are also scored on
GLUE dev (for analysis only; no reward reads dev).

Work is split into jobs by prefix (--job-depth) and kept under runs/trees/<task>/<setup hash>/: a
killed build resumes where it stopped (rerun the same command), and --job SEED:PREFIX runs one job
(for several processes or machines sharing that folder). When every job is done the table is
written to kdenv/tables/<task>/ (or $KDENV_BENCHMARKS_DIR/<task>; --output names another folder): one gzipped JSONL per seed and a manifest with the
configs, the teacher's fingerprint, the reward split's hash, software versions and checksums.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kdenv import numerics
from kdenv.benchmark.build import (
    TreeSetup,
    check_work_provenance,
    kept_seeds,
    replay_promise,
    run_jobs,
    table_manifest,
    write_table,
)
from kdenv.benchmark.oracle import subset_names
from kdenv.benchmark.tree import DevScoring, collect_seed, parse_prefix, tree_size
from kdenv.cli import (
    CLEAR_ERRORS,
    add_common_arguments,
    add_config_arguments,
    config_from_args,
    fail,
    parse_seeds,
    run_main,
)
from kdenv.config import BUDGETS, ConfigError, DataConfig, DistillConfig, EnvConfig
from kdenv.engine.runtime import quiet_transformers
from kdenv.engine.tasks import TASKS, get_task
from kdenv.io import check_writable
from kdenv.jobs import JobRunner, add_job_arguments
from kdenv.paths import tables_dir

DATA_FLAGS = ("max_length", "reward_size", "max_reward_examples", "max_train_examples", "split_seed")
DISTILL_FLAGS = ("teacher_model", "student_layers", "student_init", "student_model", "seed")
TREE = {"phases": 3, "updates_per_phase": 4}  # the tree's default episode: 3 phases x 4 updates


def parse_count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--dev-examples {text!r}: give a whole number of examples, or all") from None


def parse_job(text: str, setup: TreeSetup) -> tuple[int, tuple[int, ...]]:
    """``--job SEED:PREFIX`` (``0:3``, ``2:1,5``, ``1:`` for a seed's whole tree), checked against the tree."""
    seed_text, sep, prefix_text = text.partition(":")
    try:
        seed, prefix = int(seed_text), parse_prefix(prefix_text)
    except ValueError:
        seed, prefix = -1, ()
    if not sep or seed < 0 or len(prefix) > setup.env.phases or any(not 0 <= a < setup.num_actions for a in prefix):
        raise ConfigError(f"--job {text!r}: give SEED:PREFIX, a seed >= 0 and at most {setup.env.phases} actions in "
                          f"0..{setup.num_actions - 1}, e.g. 0:3 or 2:1,5 (0: for seed 0's whole tree)")
    return seed, prefix


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--task", required=True, help=f"GLUE task ({', '.join(TASKS)}) or a task file, path/to/task.yaml (docs/own_task.md)")
    add("--seeds", default="0-3", help="episode seeds, one tree each: 0-3 or 0,2,5 (default 0-3)")
    add("--job-depth", type=int, default=1, help="jobs are the subtrees below prefixes of this many actions (default 1)")
    add("--job", default=None, metavar="SEED:PREFIX", help="run this one job only, e.g. 0:3 or 2:1,5 (no table written)")
    add("--work-dir", action="store_true",
        help="print the work folder these flags build in (runs/trees/<task>/<key>, where a rerun resumes) and stop; "
             "bench/regime_builds.sh carry leaves shipped seeds' folders out with it")
    add("--estimate", action="store_true",
        help="time one phase of every action and one dev scoring from seed 0's initial student (writing nothing), "
             "print the projected cost of the build split into phases and dev scoring, and stop")
    add("--finished", action="store_true",
        help="compute nothing: write the table with those of --seeds whose trees are complete in the work folder "
             "(a build still running elsewhere keeps going), and name the others; to ship finished seeds mid-build")
    add("--output", default=None, help="table folder (default kdenv/tables/<task>, or $KDENV_BENCHMARKS_DIR/<task>)")
    add("--dev-examples", default="all", metavar="N|all",
        help="score leaves on a fixed subsample of N GLUE dev examples (drawn with --dev-seed), or on all of them "
             "(default all); dev is for analysis only, no reward reads it, and scoring is most of a seed's time")
    add("--dev-leaves", type=float, default=1.0, metavar="SHARE",
        help="share of leaves scored on dev, chosen by a hash of seed and schedule (default 1: every leaf; 0: none)")
    add("--dev-seed", type=int, default=0, help="seed of the dev subsample (default 0)")
    add("--no-outputs", action="store_true",
        help="keep no per-example outputs (the default keeps the student's outputs on the reward split at every "
             "node and on the scored dev examples at every leaf, float16, in seed<N>.outputs.npz beside each seed "
             "file, so that other metrics and out-of-sample figures come from the table; docs/tables.md). Builds "
             "begun before outputs were kept resume only with this flag"),
    add("--threads", type=int, default=None,
        help="torch threads of an in-process build (default: torch's default); with --ray: --cpus-per-job")
    add_common_arguments(add)
    add_job_arguments(add)
    preset = BUDGETS["cpu"]
    add_config_arguments(parser, EnvConfig, "env", "the tree: knowledge on offer and episode length",
                         ("knowledge", "phases", "updates_per_phase"),
                         defaults=TREE)
    add_config_arguments(parser, DataConfig, "data", "data and splits", DATA_FLAGS,
                         defaults={"max_reward_examples": preset.max_reward_examples})
    add_config_arguments(parser, DistillConfig, "distill", "student and teacher", DISTILL_FLAGS,
                         rename={"seed": "student-seed"})
    return parser.parse_args(argv)


@run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_transformers()
    try:
        task = get_task(args.task)
        seeds = parse_seeds(args.seeds)
        env_config = config_from_args(EnvConfig, args, "env", **TREE, episode_epochs=None)
        data_config = config_from_args(DataConfig, args, "data", task=task.ref, data_dir=args.data_dir,
                                       max_reward_examples=BUDGETS["cpu"].max_reward_examples)
        distill_config = config_from_args(DistillConfig, args, "distill", device=args.device, precision=args.precision)
        runner = JobRunner.from_args(args)
        runner.check()
        import torch

        # Records are exact for one torch thread count: the Ray tasks' CPUs, or this process's threads.
        if args.threads is not None and args.threads < 1:
            raise ConfigError(f"--threads {args.threads}: give a whole number of torch threads >= 1 (or leave it out)")
        threads = int(runner.num_cpus) if runner.ray else args.threads or torch.get_num_threads()
        dev = DevScoring(None if args.dev_examples.strip().lower() == "all" else parse_count(args.dev_examples),
                         args.dev_leaves, args.dev_seed)
        setup = TreeSetup(data_config, distill_config, env_config, threads, dev, outputs=not args.no_outputs)
        if args.work_dir:
            print(setup.work_dir())
            return 0
        if not runner.ray:  # the preparation and --estimate run with the build's threads, too: more would
            torch.set_num_threads(threads)  # contend with other builds and time another setup than the build's
        job = None if args.job is None else parse_job(args.job, setup)
        if args.finished and (job is not None or args.estimate):
            raise ConfigError("--finished writes the table from finished seeds: it does not go with --job or --estimate")
        if args.job_depth < 0:
            raise ConfigError(f"--job-depth must be >= 0, not {args.job_depth}")
        output = Path(args.output) if args.output else tables_dir() / task.name
        check_writable(setup.work_dir())
        check_writable(output)
        nodes = tree_size(setup.num_actions, setup.env.phases) * len(seeds)
        print(f"tree for {task.name}: {len(setup.env.knowledge)} types {setup.env.knowledge} -> {setup.num_actions} actions, "
              f"{setup.env.phases} phases x {setup.env.updates_per_phase} updates; {nodes} phases over {len(seeds)} "
              f"seeds; records in {setup.work_dir()}")
        if setup.runtime().device.type == "cpu":
            numerics.require_portable("a tree build")
        environment = setup.build_env(progress=not args.no_progress)
        if not args.estimate:  # resumed records must be the same bits this process computes
            check_work_provenance(setup, environment)
        print(f"numerics: {replay_promise(numerics.describe())}")
        if job is None and not args.estimate:  # a table will be written: may it keep the seeds already there?
            kept, _, _ = kept_seeds(output, table_manifest(setup, environment, seeds), seeds)
            if kept:
                print(f"{output} already holds seeds {kept} of this setup: the table will keep them")
    except CLEAR_ERRORS as error:
        return fail(error)
    if args.estimate:
        return estimate(setup, environment, seeds)
    if args.finished:
        return write_finished(setup, environment, seeds, output)
    start = time.perf_counter()
    jobs = [job] if job is not None else None
    try:
        run_jobs(setup, seeds, args.job_depth, not args.no_progress, environment, jobs, runner)
    except KeyboardInterrupt:
        print(f"\ninterrupted; records are kept in {setup.work_dir()}: run the same command to resume", file=sys.stderr)
        return 130
    print(f"jobs done in {(time.perf_counter() - start) / 60:.1f} min (this run)")
    if job is not None:
        return 0
    manifest = write_table(setup, environment, seeds, output)
    print(f"table written to {output} ({manifest.name} + {len(seeds)} seed files)")
    return 0


def write_finished(setup: TreeSetup, environment, seeds: list[int], output: Path) -> int:
    """Writes the table with the seeds whose trees are complete (computing nothing); the table
    keeps the seeds it already holds of this setup."""
    finished: dict[int, list] = {}  # seed -> its records, collected (and checked) once
    started, waiting = [], []
    for seed in seeds:
        if not any((setup.work_dir() / f"seed{seed}").glob("prefix-*.jsonl")):
            waiting.append(seed)
            continue
        try:
            finished[seed] = collect_seed(setup.work_dir(), seed, setup.num_actions, setup.env.phases)
        except ValueError:  # an incomplete tree
            started.append(seed)
    if started or waiting:
        print(f"not finished, left out: {started or 'none'} part-built, {waiting or 'none'} not started")
    if not finished:
        print(f"no seed of {seeds} is finished in {setup.work_dir()}: nothing written")
        return 1
    manifest = write_table(setup, environment, list(finished), output, records=finished)
    print(f"table written to {output} ({manifest.name} + the seed files of {list(finished)} and any it already "
          "held)")
    return 0


def estimate(setup: TreeSetup, environment, seeds: list[int]) -> int:
    """Times one phase of every action and one dev scoring (writing no records) and projects the
    whole build from them, split into phases and dev scoring."""
    builder = setup.builder(environment)
    cost = builder.time_nodes(seeds[0])
    names = subset_names(list(setup.env.knowledge))
    per_action = ", ".join(f"{name} {seconds:.1f}" for name, seconds in zip(names, cost["phase_seconds"]))
    phases = tree_size(builder.num_actions, builder.phases)
    phase_seconds = float(sum(cost["phase_seconds"]) / len(cost["phase_seconds"])) * phases
    dev_seconds = cost["dev_seconds"] * cost["scored_leaves"]
    per_seed = cost["seed_seconds"]
    print(f"one phase ({setup.env.updates_per_phase} updates + reward-split evaluation), s: {per_action}; "
          f"dev scoring of a leaf ({setup.dev.describe(len(environment.distillation.data['dev']))}): "
          f"{cost['dev_seconds']:.1f} s")
    print(f"per seed: {phases} phases ~{phase_seconds / 60:.0f} min + {cost['scored_leaves']:.0f} dev-scored leaves "
          f"~{dev_seconds / 60:.0f} min = ~{per_seed / 60:.0f} min; ~{per_seed * len(seeds) / 3600:.1f} h for "
          f"{len(seeds)} seeds on {environment.distillation.runtime.describe()} with {setup.threads} torch thread(s), "
          "if nothing else runs (bench/tree_cost.py measures one process x 2 threads against 2 x 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
