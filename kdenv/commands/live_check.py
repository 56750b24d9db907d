"""Take a leaderboard agent row off the table and onto the real trainer, on episode seeds no table holds.

    python agents/live_check.py --table stsb_u8 --row ppo-tuned                 # 16 new seeds, 3 agents
    python agents/live_check.py --table stsb_u8 --row a2c --seeds 16 --agent-seeds 5 --dry-run

A table says what every schedule would have scored on its own seeds; whether what an agent learned
there holds on a new seed, where no table exists, only the live trainer can say. The check:

  1. The configuration is the leaderboard's (its result file in docs/leaderboard/results/ must
     exist: run `agents/leaderboard.py --retrain` first); a tuned row's hyperparameters are
     searched on all of the table's seeds (kept in that result file under "all").
  2. --agent-seeds agents of that configuration train on all of the table's seeds.
  3. The baseline is the best constant subset chosen on all of the table's seeds: what one would
     pick without learning. It is named before any live run (`evaluate.py --baseline`).
  4. The agents, the baseline and any --extra policies play on --seeds new episode seeds (by
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
from typing import Any

import numpy as np

from kdenv.benchmark.oracle import subset_names
from kdenv.benchmark.protocol import FoldView
from kdenv.benchmark.stats import improvement, summarise
from kdenv.benchmark.study import TableStudy
from kdenv.benchmark.table import Table, TableError, resolve_table
from kdenv.benchmark.validate import check_saved_teacher
from kdenv.cli import fail, run_main
from kdenv.commands import evaluate as evaluate_command
from kdenv.commands.leaderboard import (
    AGENTS,
    ALL_SEEDS,
    REPORT_REWARD,
    best_agent,
    ci_text,
    fold_hyperparams,
    load_result,
    result_path,
)
from kdenv.config import ConfigError, save_run_config
from kdenv.decision.algorithms import SavedAgent, get_algorithm, save_agent
from kdenv.decision.policies import check_policy
from kdenv.engine.tasks import get_task
from kdenv.io import atomic_write, check_writable
from kdenv.jobs import JobError, JobRunner, add_job_arguments, job_flags
from kdenv.paths import runs_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--table", required=True, metavar="NAME|PATH", help="the table the row was ranked on (a shipped name or a folder)")
    add("--row", required=True, choices=[*sorted(AGENTS), "best"],
        help="the leaderboard agent row to check; best: the row with the highest mean gain over the best constant "
             "on the table's held-out seeds, among those with a finished result file")
    add("--seeds", type=int, default=16, help="new episode seeds to play on (default 16)")
    add("--first-seed", type=int, default=None,
        help="first new episode seed (default: the table's last seed + 1; seeds the table holds are refused)")
    add("--agent-seeds", type=int, default=3, help="agents trained on the table, each played on every new seed "
        "(default 3)")
    add("--extra", default="", metavar="A,B",
        help="more fixed policies to play and compare with the baseline, e.g. only-gradient,kd (default none)")
    add("--k", type=int, default=4, help="the leaderboard's folds (to find its result file; default 4)")
    add("--results-dir", default="docs/leaderboard/results", help="the leaderboard's agent result files")
    add("--output-dir", default=None, help="default runs/live/<table>/<row>")
    add("--dry-run", action="store_true", help="print the plan (baseline, seeds, runs) and stop")
    add("--data-dir", default=None, help="local GLUE folder (download_glue_data.py layout); default $KDENV_GLUE_DIR")
    add("--no-progress", action="store_true", help="hide progress output")
    add_job_arguments(add)  # the live runs, as evaluate.py's jobs: --ray plays them on every core
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.agent_seeds < 1:
        parser.error("--seeds and --agent-seeds must be >= 1")
    return args


def constant_policy(table: Table, subset: int) -> str:
    """The fixed policy (evaluate.py's name) that plays one subset of the table's knowledge in every phase."""
    name = subset_names(table.knowledge)[subset]  # "-" for the empty subset, else "hidden+gradient", ...
    return "none" if name == "-" else f"only-{name}"


def table_flags(table: Table) -> list[str]:
    """evaluate.py's flags that rebuild the table's own trainer: data split, student, budget."""
    manifest, flags = table.manifest, []
    values = {**{name: manifest["data"].get(name) for name in evaluate_command.DATA_FLAGS},
              **{name: manifest["distill"].get(name) for name in evaluate_command.DISTILL_FLAGS}}
    for name, value in values.items():
        if value is None:
            continue
        flag = "--student-seed" if name == "seed" else "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return [*flags, "--knowledge", ",".join(table.knowledge), "--phases", str(table.phases),
            "--updates-per-phase", str(manifest["env"]["updates_per_phase"])]


def train_agents(table: Table, row: str, result: dict[str, Any], args, path: Path,
                 out: Path) -> tuple[TableStudy, list[Path]]:
    """The row's configuration trained on all of the table's seeds, one agent per agent seed
    (finished zips are reused); the run record beside them lets evaluate.py rebuild each agent.
    Returns the study they trained in and their zips."""
    spec, config = AGENTS[row], result["config"]
    study = TableStudy(table, get_algorithm(spec.algo), list(table.seeds), [], spec.reward, 10.0, config["episodes"],
                       exploration_bonus=spec.bonus)
    hyperparams = fold_hyperparams(result, ALL_SEEDS, study, row, path, not args.no_progress)
    zips = []
    for seed in range(args.agent_seeds):  # one folder each: evaluate.py names an agent by its folder
        folder = out / "agents" / f"seed{seed}"
        record = study.record(hyperparams, [seed])
        if not study.resumable(folder, record):
            folder.mkdir(parents=True, exist_ok=True)
            save_run_config(folder / "config.yaml", record.pop("seeds"), **record)
        zip_path = folder / "agent.zip"
        if not zip_path.is_file():
            model, seconds = study.fit(hyperparams, seed)
            save_agent(model, zip_path)
            if not args.no_progress:
                print(f"  agent seed {seed}: trained on seeds {table.seeds} in {seconds:.0f} s")
        zips.append(zip_path)
    return study, zips


def table_gains(study: TableStudy, zips: list[Path], view: FoldView, baseline_column: int) -> dict[str, Any]:
    """What the table says of the trained agents: each played on every seed it trained on, its return
    (in the report's reward) minus the baseline constant's; in-sample, so optimistic, to set beside
    the live differences."""
    seeds = study.train_seeds
    gains = np.array([[returns[seed] - view.value(seed, baseline_column) for seed in seeds]
                      for returns in (study.returns_on(SavedAgent.open(zip_path).load(), seeds, reward=REPORT_REWARD)
                                      for zip_path in zips)])  # [agents, seeds]
    return {**summarise(list(gains.T)), "per_agent": gains.mean(axis=1).tolist(), "seeds": len(seeds),
            "agent_seeds": len(zips)}


def paired_summary(runs: list[dict[str, Any]], policies: list[str], baseline: str, score) -> dict[str, Any]:
    """Policies (several labels: the agent seeds of one row) minus the baseline, seed by seed."""
    base = {run["seed"]: score(run) for run in runs if run["policy"] == baseline}
    per_seed = []
    for seed in sorted(base):
        values = [score(run) - base[seed] for run in runs if run["policy"] in policies and run["seed"] == seed]
        per_seed.append(np.array([v for v in values if not np.isnan(v)]))
    per_seed = [values for values in per_seed if len(values)]
    return {**summarise(per_seed), "improvement": improvement(per_seed) if per_seed else None, "seeds": len(per_seed),
            "agent_seeds": int(max((len(v) for v in per_seed), default=0))}


def report(table_name: str, row: str, baseline: str, agent_labels: list[str], extra: list[str], runs, metric: str,
           seeds: list[int]) -> tuple[dict[str, Any], str]:
    scores = {"dev": lambda run: run["dev"][metric],
              "reward split": lambda run: run.get("reward_split", {}).get("final", float("nan"))}
    rows = {AGENTS[row].row: agent_labels, **{name: [name] for name in extra}}
    result: dict[str, Any] = {"table": table_name, "row": row, "baseline": baseline, "seeds": seeds,
                              "metric": metric, "comparisons": {}}
    lines = [f"Live check of `{row}` ({AGENTS[row].row}), trained on every seed of `{table_name}`, on new episode "
             f"seeds {seeds[0]}-{seeds[-1]} ({len(seeds)}); baseline: `{baseline}`, the best constant chosen on the "
             f"table's seeds, named before any live run. Differences are final {metric} minus the baseline's on the "
             "same seed; mean and IQM with two-level bootstrap 95% intervals (seeds, then agent seeds); "
             "P(improve): share of (seed, agent) pairs above the baseline, ties one half.", "",
             "| policy | split | mean difference | IQM difference | P(improve) | n (seeds x agents) |",
             "|---|---|---|---|---|---|"]
    for name, labels in rows.items():
        for split, score in scores.items():
            summary = paired_summary(runs, labels, baseline, score)
            result["comparisons"].setdefault(name, {})[split] = summary
            if summary["mean"] is None:
                lines.append(f"| {name} | {split} | n/a | n/a | n/a | 0 |")
                continue
            chance = summary["improvement"]
            lines.append(f"| {name} | {split} | {ci_text(summary)} | {ci_text(summary, 'iqm')} | "
                         f"{chance['value']:.2f} [{chance['ci'][0]:.2f}, {chance['ci'][1]:.2f}] | "
                         f"{summary['seeds']} x {summary['agent_seeds']} |")
    means = {label: float(np.mean([run["dev"][metric] for run in runs if run["policy"] == label]))
             for label in [baseline, *agent_labels, *extra]}
    lines += ["", "Mean final dev " + metric + ": " + ", ".join(f"{label} {value:.4f}" for label, value in means.items())]
    return result, "\n".join(lines) + "\n"


@run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        table = resolve_table(args.table)
        table_name = Path(args.table).name
        k = min(args.k, len(table.seeds))
        if args.row == "best":
            args.row, scores = best_agent(table_name, table, Path(args.results_dir), k)
            print(f"the best agent row on {table_name}: {args.row} (gain over the best constant on held-out seeds "
                  f"{ci_text(scores['gain'])}, {scores['seeds']} seeds x {scores['agent_seeds']} agent seeds)")
        path = result_path(Path(args.results_dir), table_name, args.row)
        result = load_result(path, table, k)
        if result is None or any(str(seed) not in result["returns"] for seed in table.seeds):
            raise ConfigError(f"no finished leaderboard result for {args.row} on {table_name} in {path}; run: python "
                              f"agents/leaderboard.py --retrain --tables {args.table} --agents {args.row}")
        first = max(table.seeds) + 1 if args.first_seed is None else args.first_seed
        if first < 0:
            raise ConfigError(f"--first-seed {first}: episode seeds are whole numbers >= 0; pass --first-seed "
                              f"{max(table.seeds) + 1} or more")
        seeds = list(range(first, first + args.seeds))
        if set(seeds) & set(table.seeds):
            raise ConfigError(f"episode seeds {sorted(set(seeds) & set(table.seeds))} are in the table: a live check "
                              f"plays on new seeds only; pass --first-seed {max(table.seeds) + 1} or more")
        view = FoldView(table, REPORT_REWARD)
        baseline_column = view.best_constant(table.seeds)
        baseline = constant_policy(table, view.sequences[baseline_column][0])
        extra = [name.strip() for name in args.extra.split(",") if name.strip() and name.strip() != baseline]
        for name in extra:  # what evaluate.py would refuse after the agents train, refused now (dry runs too)
            check_policy(name, table.knowledge)
        out = Path(args.output_dir) if args.output_dir else runs_dir() / "live" / table_name / args.row
        check_writable(out)
        JobRunner.from_args(args).check()  # before any agent trains: Ray installed, the cluster reachable
    except (TableError, ConfigError, JobError, ValueError, OSError) as error:
        return fail(error)
    runs_count = len(seeds) * (args.agent_seeds + 1 + len(extra))
    print(f"live check of {args.row} on {table_name}: baseline {baseline} (best constant on seeds {table.seeds}), "
          f"{args.agent_seeds} agents, extra {extra or 'none'}; {runs_count} live runs on seeds {seeds[0]}-{seeds[-1]}")
    if args.dry_run:
        return 0
    try:
        # The table's teacher (the agents learned its outcomes), before training agents or any live run.
        check_saved_teacher(table, required=True)
    except (TableError, ValueError, OSError) as error:
        return fail(error)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # agents: a small MLP
    study, zips = train_agents(table, args.row, result, args, path, out)
    torch.set_num_threads(threads)
    policies = [baseline, *extra, *(f"agent:{zip_path}" for zip_path in zips)]
    argv_eval = ["--task", table.task, "--policies", ",".join(policies), "--baseline", baseline,
                 "--first-seed", str(first), "--seeds", str(args.seeds), *table_flags(table),
                 "--output-dir", str(out / "eval"), *(["--data-dir", args.data_dir] if args.data_dir else []),
                 *(["--no-progress"] if args.no_progress else []), *job_flags(args)]
    code = evaluate_command.main(argv_eval)
    if code:
        return code
    runs = json.loads((out / "eval" / "runs.json").read_text())
    agent_labels = sorted({run["policy"] for run in runs if run["policy"].startswith("agent:")})
    metric = get_task(table.task).primary_metric
    data, text = report(table_name, args.row, baseline, agent_labels, extra, runs, metric, seeds)
    data["agents"] = [str(zip_path) for zip_path in zips]
    data["on_the_table"] = on_table = table_gains(study, zips, view, baseline_column)
    text += (f"\nOn the table, the same agents on the {on_table['seeds']} seeds they trained on (in-sample), "
             f"reward split minus the baseline: {ci_text(on_table)} ({on_table['seeds']} x {on_table['agent_seeds']}); "
             "per agent " + ", ".join(f"{value:+.4f}" for value in on_table["per_agent"]) + ".\n")
    data["command"] = "python agents/live_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(text)
    with atomic_write(out / "live_check.md") as handle:
        handle.write(text)
    with atomic_write(out / "live_check.json") as handle:
        json.dump(data, handle, indent=2)
    print(f"live check written to {out / 'live_check.md'} (and .json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
