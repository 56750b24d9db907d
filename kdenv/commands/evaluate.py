"""Evaluate knowledge-selection policies against each other: every policy runs as a full
distillation (same teacher, same initial student, same budget, same seeds) and is scored on GLUE
dev, with teacher–student consistency metrics.

    python agents/evaluate.py --task rte --seeds 3 \
        --policies kd,gkd,gkd-cls,pkd,all,none,random-hard,random-soft,agent:runs/rte/a2c_default/agent.zip

Policies: fixed ones (all, none, random-hard, random-soft, linear-increase, linear-decrease,
only-<type>[+<type>...] (a constant subset, e.g. only-hidden+gradient), and the recipes kd, pkd,
gkd, gkd-cls) and agent:<path to agent.zip> (trained by agents/train.py or agents/train_table.py;
the agent may come from another task: it needs only the same knowledge set).
Each fixed policy gets an environment offering the types it needs (recipes: their own types;
others: --knowledge); agents get the knowledge set they were trained with.

Every policy is compared with one baseline (--baseline; default the best non-agent policy on dev)
seed by seed: the paired difference of the dev metric and of the reward-split metric, with its
bootstrap 95% interval over the seeds.

Writes runs/eval/<task>/<time>/: results.md and results.csv (mean ± std over seeds of the dev
metric, teacher score, student/teacher ratio, label / probability / saliency loyalty, wall time
per run, the paired differences), metric_by_policy.png, schedule_<agent>.png (mean learned schedule over seeds),
runs.json and TensorBoard events. Finished runs are kept under runs/eval/<task>/cache/ and reused
when the same policy, seed and configuration come again, so a killed evaluation resumes.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from kdenv.benchmark.stats import paired_difference
from kdenv.cli import add_common_arguments, add_config_arguments, config_from_args, fail, given_fields, run_main
from kdenv.config import (
    BUDGETS,
    ConfigError,
    DataConfig,
    DistillConfig,
    EnvConfig,
    budget_env_fields,
    budget_help_defaults,
    environment_record,
    from_dict,
    to_dict,
)
from kdenv.decision.algorithms import SavedAgent
from kdenv.decision.policies import check_policy, recipe_knowledge
from kdenv.decision.runs import EvaluationJob, release, run_evaluation_job
from kdenv.decision.schedules import heatmap_png, png_array
from kdenv.engine.data import DataError, load_raw_splits
from kdenv.engine.distillation import ensure_teacher, prepare_distillation
from kdenv.engine.knowledge import KnowledgeError
from kdenv.engine.models import ModelError
from kdenv.engine.recipes import RECIPES
from kdenv.engine.runtime import make_runtime, quiet_transformers
from kdenv.engine.tasks import TASKS, get_task
from kdenv.engine.teacher import load_teacher
from kdenv.io import atomic_write, check_writable
from kdenv.jobs import JobError, JobRunner, add_job_arguments
from kdenv.paths import runs_dir

DEFAULT_POLICIES = "kd,gkd,gkd-cls,pkd,all,none,random-hard,random-soft"
DATA_FLAGS = ("max_length", "reward_size", "max_reward_examples", "max_train_examples", "split_seed")
DISTILL_FLAGS = ("teacher_model", "student_layers", "student_init", "student_dropout", "fresh_head", "teacher_mode", "seed")
CLEAR_ERRORS = (DataError, ModelError, KnowledgeError, ConfigError, JobError, ValueError, OSError)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--task", required=True, help=f"GLUE task: {', '.join(TASKS)}")
    add("--policies", default=DEFAULT_POLICIES, help=f"comma list of policies (default {DEFAULT_POLICIES})")
    add("--seeds", type=int, default=3, help="seeds per policy (episode seeds FIRST..FIRST+N-1)")
    add("--first-seed", type=int, default=0,
        help="first episode seed (default 0); e.g. 4 to judge a table agent on seeds its table never held")
    add("--preset", choices=list(BUDGETS), default="cpu",
        help="run budget (the same definitions as agents/train.py); flags below override it")
    add("--baseline", default=None, metavar="POLICY",
        help="the policy every other is compared with seed by seed (paired differences with bootstrap 95%% "
             "intervals); one of --policies (default: the non-agent policy with the best mean dev metric, which "
             "is chosen on these very seeds: name it in advance for a fair test)")
    add("--output-dir", default=None, help="default runs/eval/<task>/<time>")
    add("--unsafe-load-agents", action="store_true",
        help="also unpickle what kdenv cannot rebuild from an agent zip. Unpickling runs any code the file holds: use "
             "only for agent files you trust. Without it such a file is refused (agent files written by kdenv never "
             "need it)")
    add_common_arguments(add)
    add_job_arguments(add)
    preset = budget_help_defaults()  # each --preset's value, shown in the help
    add_config_arguments(parser, EnvConfig, "env", "episode budget and knowledge of non-recipe fixed policies",
                         ("knowledge", "phases", "updates_per_phase"), defaults=preset)
    add_config_arguments(parser, DataConfig, "data", "data and splits", DATA_FLAGS,
                         defaults=preset)
    add_config_arguments(parser, DistillConfig, "distill", "student and teacher", DISTILL_FLAGS,
                         rename={"seed": "student-seed"},
                         defaults=preset)
    return parser.parse_args(argv)


def policy_knowledge(name: str, default: list[str]) -> list[str]:
    return recipe_knowledge(name) if name in RECIPES else default


def read_cached_run(path: Path, say) -> dict[str, Any] | None:
    """A finished run's cached result, or None to run it (again): a file a kill or a full disk cut
    short, or that is not a result, is named, removed and recomputed, never a reason to fail."""
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
        if not isinstance(result, dict) or not {"dev", "schedule", "seed"} <= set(result):
            raise ValueError("not a run's result")
    except (ValueError, UnicodeDecodeError) as error:
        say(f"cached run {path} is damaged ({error}): running it again")
        path.unlink(missing_ok=True)
        return None
    return result


def plan_policies(names: list[str], budget_fields: dict[str, Any], knowledge: list[str],
                  unsafe_load_agents: bool = False) -> list[dict[str, Any]]:
    """Every policy with the environment it runs in, checked before any run starts: fixed policies
    against the knowledge on offer, agents against the env spec they were trained with."""
    plans = []
    for name in names:
        if name.startswith("agent:"):
            path = name.removeprefix("agent:")
            saved = SavedAgent.open(path)
            saved.check_safe(unsafe_load_agents)  # a file that would run code is refused before any work
            env_fields = {**saved.record["env"], **budget_fields}
            env_config = from_dict(EnvConfig, env_fields)  # the agent's own knowledge, spaces and observation
            label = f"agent:{saved.algorithm.name}@{Path(path).parent.name}"
            plans.append({"name": name, "label": label, "env": env_config, "agent": saved,
                          "agent_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()})
        else:
            offered = policy_knowledge(name, knowledge)
            check_policy(name, offered)
            env_config = EnvConfig(knowledge=offered, action_space="box", **budget_fields)
            plans.append({"name": name, "label": name, "env": env_config, "agent": None})
    return plans


def run_identity(data_config: DataConfig, distill_config: DistillConfig, runtime, threads: int,
                 progress: bool) -> dict[str, Any]:
    """What changes a run besides its policy and configs: the teacher's weights, the data files'
    contents and the software, with the torch threads the run computes with (a Ray task's, not
    this driver's). Part of every cached run's key, so a re-fine-tuned teacher or changed data is
    never answered from the cache."""
    ensure_teacher(data_config, runtime, progress, base_model=distill_config.teacher_model)
    _, _, loaded = load_teacher(data_config.task)
    raw = load_raw_splits(get_task(data_config.task), data_config.data_dir)
    software = environment_record()
    return {"teacher": loaded["fingerprint"], "data": {name: split.fingerprint() for name, split in raw.items()},
            "software": {**{k: software[k] for k in ("python", "torch", "transformers")}, "torch_threads": str(threads)}}


def defined_mean(values: list[float]) -> float:
    """Mean of the defined (non-NaN) values; NaN, without numpy's empty-slice warning, when none is."""
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


@run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_transformers()
    try:
        return evaluate(args, sys.argv[1:] if argv is None else argv)
    except CLEAR_ERRORS as error:
        return fail(error)


def evaluate(args: argparse.Namespace, argv: list[str]) -> int:
    """Runs the evaluation; ``argv`` are the arguments it was given, which its report quotes as the
    command (the caller's own when another command, such as live_check, runs it in-process)."""
    task = get_task(args.task)
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, not {args.seeds}")
    if args.first_seed < 0:
        raise ConfigError(f"--first-seed must be >= 0, not {args.first_seed}")
    budget = BUDGETS[args.preset]
    data_config = config_from_args(DataConfig, args, "data", task=task.name, data_dir=args.data_dir,
                                   max_reward_examples=budget.max_reward_examples)
    distill_config = config_from_args(DistillConfig, args, "distill", student_layers=budget.student_layers,
                                      teacher_model=budget.teacher_model, device=args.device, precision=args.precision)
    budget_config = config_from_args(EnvConfig, args, "env", **budget_env_fields(budget, given_fields(args, "env")))
    budget_fields = {"phases": budget_config.phases, "updates_per_phase": budget_config.updates_per_phase,
                     "epochs": budget_config.epochs}
    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not names:
        raise ConfigError("--policies is empty; name at least one policy (e.g. kd,gkd,all)")
    plans = plan_policies(names, budget_fields, budget_config.knowledge, args.unsafe_load_agents)
    if args.baseline is not None:  # one of --policies, compared under its label (an agent's: agent:<algo>@<folder>)
        labels = [plan["label"] for plan in plans if args.baseline in (plan["name"], plan["label"])]
        if not labels:
            raise ConfigError(f"--baseline {args.baseline!r} is not one of --policies ({', '.join(names)}); add it there")
        args.baseline = labels[0]
    out = Path(args.output_dir) if args.output_dir else runs_dir() / "eval" / task.name / time.strftime("%Y%m%d-%H%M%S")
    cache = runs_dir() / "eval" / task.name / "cache"
    check_writable(out)
    check_writable(cache)
    runner = JobRunner.from_args(args)
    runner.check()
    runtime = make_runtime(args.device, args.precision)
    identity = run_identity(data_config, distill_config, runtime, runner.threads(), not args.no_progress)
    runs: dict[str, dict[str, Any]] = {}
    jobs: list[EvaluationJob] = []
    bar = tqdm(total=len(plans) * args.seeds, desc=f"evaluate {task.name}", unit="run", disable=args.no_progress)
    for plan in plans:
        env_config, label = plan["env"], plan["label"]
        key = {"policy": plan["name"], "task": task.name, "data": to_dict(data_config), "distill": to_dict(distill_config),
               "env": to_dict(env_config), **identity}
        if plan["agent"] is not None:
            key["agent_sha256"] = plan["agent_sha256"]
        tag = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            path = cache / f"{label.replace('/', '_').replace(':', '-')}_{tag}_seed{seed}.json"
            cached = read_cached_run(path, bar.write)
            if cached is not None:
                runs[str(path)] = cached
                bar.write(f"{label} seed {seed}: reused {path.name}")
                bar.update(1)
                continue
            runs[str(path)] = {}
            jobs.append(EvaluationJob(plan["name"], label, seed, tag, to_dict(data_config), to_dict(distill_config),
                                      to_dict(env_config), key, str(path), args.unsafe_load_agents))
    if jobs and runner.ray:
        # Shared inputs first: the teacher and every teacher-knowledge cache the jobs will read,
        # built once here; the workers find them valid in the shared runs folder.
        for env_fields in {json.dumps(job.env, sort_keys=True) for job in jobs}:
            env_config = EnvConfig(**json.loads(env_fields))
            names = list(dict.fromkeys([*env_config.base_weights, *env_config.knowledge]))
            prepare_distillation(data_config, distill_config, names, runtime, progress=not args.no_progress)

    def finished(job: EvaluationJob, result: dict[str, Any]) -> None:
        runs[job.path] = result
        bar.write(f"{job.label} seed {job.seed}: dev {task.primary_metric} {result['dev'][task.primary_metric]:.4f} "
                  f"({result['wall_time_s']:.0f} s)")
        bar.update(1)

    try:
        runner.map(run_evaluation_job, jobs, on_result=finished)
    finally:
        release()
    bar.close()
    write_report(out, task, list(runs.values()), args, budget_fields, argv)
    return 0


def interval_text(paired: dict[str, Any] | None) -> str:
    if not paired:
        return ""
    low, high = paired["ci"]
    return f"{paired['mean']:+.4f} [{low:+.4f}, {high:+.4f}] (n={paired['n']})"


def interval_fields(paired: dict[str, Any] | None) -> list[float | None]:
    return [paired["mean"], *paired["ci"]] if paired else [None, None, None]


def write_report(out: Path, task, runs: list[dict[str, Any]], args, budget: dict[str, Any],
                 argv: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    out.mkdir(parents=True, exist_ok=True)
    metric = task.primary_metric
    teacher = runs[0]["teacher_dev"][metric] if runs else float("nan")
    policies = list(dict.fromkeys(run["policy"] for run in runs))
    distill_seconds = np.mean([r["wall_time_s"] for r in runs]) if runs else float("nan")
    rows, csv_rows = [], [["policy", "seeds", f"{metric}_mean", f"{metric}_std", "teacher", "ratio", "label_loyalty",
                           "probability_loyalty", "saliency_loyalty", "wall_time_s", "agent_cost_in_runs", "baseline",
                           "dev_gain", "dev_gain_ci_low", "dev_gain_ci_high", "reward_split_gain",
                           "reward_split_gain_ci_low", "reward_split_gain_ci_high", "paired_seeds"]]
    writer = SummaryWriter(str(out))
    by_seed = {policy: {r["seed"]: r["dev"][metric] for r in runs if r["policy"] == policy} for policy in policies}
    # The reward split's final metric (runs cached before it was recorded have none: NaN, left out).
    reward_by_seed = {policy: {r["seed"]: r.get("reward_split", {}).get("final", float("nan"))
                               for r in runs if r["policy"] == policy} for policy in policies}
    baseline_means = {policy: float(np.mean(list(by_seed[policy].values())))
                      for policy in policies if not policy.startswith("agent:")}
    best_baseline = args.baseline or (max(baseline_means, key=baseline_means.get) if baseline_means else None)
    comparisons = {}
    means, stds = [], []
    for index, policy in enumerate(policies):
        group = [r for r in runs if r["policy"] == policy]
        values = np.array(list(by_seed[policy].values()))
        mean, std = float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
        means.append(mean)
        stds.append(std)
        loyalty = {k: defined_mean([r[k] for r in group]) for k in ("label_loyalty", "probability_loyalty", "saliency_loyalty")}
        wall = float(np.mean([r["wall_time_s"] for r in group]))
        cost = group[0].get("agent_training_s")
        cost_runs = cost / distill_seconds if cost else None
        # Against the baseline, seed by seed, on dev and on the reward split (bootstrap 95% intervals).
        paired = {}
        if best_baseline and policy != best_baseline and best_baseline in by_seed:
            paired["dev"] = paired_difference(by_seed[policy], by_seed[best_baseline])
            try:
                paired["reward_split"] = paired_difference(reward_by_seed[policy], reward_by_seed[best_baseline])
            except ValueError:  # no defined reward-split value in common (old cached runs)
                pass
            comparisons[policy] = paired
        shown = {k: "n/a" if np.isnan(v) else f"{v:.3f}" for k, v in loyalty.items()}  # n/a: regression has no distribution
        rows.append(f"| {policy} | {mean:.4f} ± {std:.4f} | {mean / teacher:.3f} | {shown['label_loyalty']} | "
                    f"{shown['probability_loyalty']} | {shown['saliency_loyalty']} | {wall:.0f} | "
                    f"{'' if cost_runs is None else f'{cost_runs:.1f}'} | {interval_text(paired.get('dev'))} | "
                    f"{interval_text(paired.get('reward_split'))} |")
        csv_rows.append([policy, len(group), mean, std, teacher, mean / teacher, loyalty["label_loyalty"],
                         loyalty["probability_loyalty"], loyalty["saliency_loyalty"], wall, cost_runs,
                         best_baseline if paired else None,
                         *interval_fields(paired.get("dev")), *interval_fields(paired.get("reward_split")),
                         paired["dev"]["n"] if paired else None])
        writer.add_scalar(f"dev_{metric}/mean", mean, index)
        for r in group:
            writer.add_scalar(f"dev_{metric}/{policy}", r["dev"][metric], r["seed"])
        if policy.startswith("agent:"):
            schedule = np.mean([np.array(r["schedule"]) for r in group], axis=0)
            png = heatmap_png(schedule, group[0]["knowledge"], f"{policy}: mean schedule over {len(group)} seeds")
            with atomic_write(out / f"schedule_{policy.replace(':', '-').replace('/', '_')}.png", "wb") as handle:
                handle.write(png)
            writer.add_image(f"schedule/{policy}", png_array(png), 0, dataformats="HWC")
    seeds = f"seeds {args.first_seed}-{args.first_seed + args.seeds - 1}" if args.seeds > 1 else f"seed {args.first_seed}"
    header = (f"| policy | dev {metric} (mean ± std, {seeds}) | / teacher | label loyalty | probability loyalty | "
              f"saliency loyalty | s per run | agent training (× one run) | dev {metric} − baseline (paired, 95% CI) | "
              f"reward-split {metric} − baseline (paired, 95% CI) |\n"
              f"|---|---|---|---|---|---|---|---|---|---|")
    command = "python agents/evaluate.py " + " ".join(argv)
    table = (f"Task {task.name}; teacher dev {metric} {teacher:.4f}; budget {budget['phases']} phases × "
             f"{budget['updates_per_phase']} updates; command: `{command}`\n\n{header}\n" + "\n".join(rows) + "\n")
    if best_baseline:
        chosen = ("named in advance (--baseline)" if args.baseline else
                  "the best non-agent policy on these very seeds (name one with --baseline for a fair test)")
        table += (f"\nBaseline: {best_baseline}, {chosen}. Each difference is the policy minus the baseline seed by "
                  f"seed (the same data order and dropout), mean and percentile bootstrap 95% interval over the seeds; "
                  f"n = seeds. Agent training: wall time divided by the mean of one distillation run here "
                  f"({distill_seconds:.1f} s).\n")
    print(table)
    with atomic_write(out / "results.md") as handle:
        handle.write(table)
    with atomic_write(out / "results.csv", newline="") as handle:
        csv.writer(handle).writerows(csv_rows)
    with atomic_write(out / "runs.json") as handle:
        json.dump(runs, handle, indent=2)
    with atomic_write(out / "paired.json") as handle:
        json.dump({"baseline": best_baseline, "baseline_named": bool(args.baseline), "metric": metric,
                   "comparisons": comparisons}, handle, indent=2)
    figure, axis = plt.subplots(figsize=(1.0 + 0.8 * len(policies), 3.5))
    axis.bar(range(len(policies)), means, yerr=stds, capsize=4, color="#4c72b0")
    axis.axhline(teacher, color="#c44e52", linestyle="--", label="teacher")
    axis.set_xticks(range(len(policies)), policies, rotation=40, ha="right", fontsize=8)
    axis.set_ylabel(f"dev {metric}")
    axis.set_title(f"{task.name}: mean ± std over {seeds}", fontsize=9)
    lower = min([m - s for m, s in zip(means, stds)] + [teacher]) if means else 0
    axis.set_ylim(max(0.0, lower - 0.05), None)
    axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_write(out / "metric_by_policy.png", "wb") as handle:
        figure.savefig(handle, dpi=100, format="png")
    plt.close(figure)
    writer.close()
    print(f"results in {out}")


if __name__ == "__main__":
    sys.exit(main())
