"""Evaluate knowledge-selection policies against each other: every policy runs as a full
distillation (same teacher, same initial student, same budget, same seeds) and is scored on GLUE
dev, with teacher–student consistency metrics.

    python agents/evaluate.py --task rte --seeds 3 \
        --policies kd,gkd,gkd-cls,pkd,all,none,random-hard,random-soft,agent:runs/rte/a2c_default/agent.zip

Policies: fixed ones (all, none, random-hard, random-soft, linear-increase, linear-decrease,
only-<type>, and the recipes kd, pkd, gkd, gkd-cls) and agent:<path to agent.zip> (trained by
agents/train.py; the agent may come from another task: it needs only the same knowledge set).
Each fixed policy gets an environment offering the types it needs (recipes: their own types;
others: --knowledge); agents get the knowledge set they were trained with.

Writes runs/eval/<task>/<time>/: results.md and results.csv (mean ± std over seeds of the dev
metric, teacher score, student/teacher ratio, label / probability / saliency loyalty, wall time
per run), metric_by_policy.png, schedule_<agent>.png (mean learned schedule over seeds),
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
import yaml
from tqdm.auto import tqdm

from kdenv.algorithms import get_algorithm
from kdenv.cli import add_common_arguments
from kdenv.config import DataConfig, DistillConfig, EnvConfig, to_dict
from kdenv.env import make_env
from kdenv.evaluation import DevScorer, paired_difference
from kdenv.io import atomic_write
from kdenv.paths import runs_dir
from kdenv.policies import FixedPolicy
from kdenv.presets import PRESETS
from kdenv.runtime import quiet_transformers
from kdenv.schedules import heatmap_png, png_array, run_episode
from kdenv.tasks import TASKS, get_task
from kdenv.wrappers import MultiDiscreteOnOff

DEFAULT_POLICIES = "kd,gkd,gkd-cls,pkd,all,none,random-hard,random-soft"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--task", required=True, help=f"GLUE task: {', '.join(TASKS)}")
    add("--policies", default=DEFAULT_POLICIES, help=f"comma list of policies (default {DEFAULT_POLICIES})")
    add("--seeds", type=int, default=3, help="seeds per policy (episode seeds 0..N-1)")
    add("--knowledge", default="logits,hidden,gradient", help="types offered to non-recipe fixed policies")
    add("--phases", type=int, default=4, help="phases per distillation (default 4)")
    add("--updates-per-phase", type=int, default=16, help="student updates per phase (default 16)")
    add("--max-reward-examples", type=int, default=128, help="reward-split cap (phase rewards; dev is never capped)")
    add("--max-train-examples", type=int, default=None, help="cap the train split")
    add("--output-dir", default=None, help="default runs/eval/<task>/<time>")
    add_common_arguments(add)
    return parser.parse_args(argv)


def load_agent(path: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """An agent saved by agents/train.py, its env config and its run summary (if present)."""
    zip_path = Path(path)
    config_path = zip_path.parent / "config.yaml"
    if not zip_path.is_file() or not config_path.is_file():
        raise ValueError(f"agent {path!r}: expected agent.zip with config.yaml beside it (as agents/train.py saves)")
    record = yaml.safe_load(config_path.read_text())
    algorithm = get_algorithm(record["agent"]["algo"])
    model = algorithm.load_class().load(str(zip_path), device="cpu")
    summary_path = zip_path.parent / "comparison_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return model, record, summary


def policy_knowledge(name: str, default: list[str]) -> list[str]:
    if name in PRESETS:
        return [k for k, w in PRESETS[name].weights.items() if w > 0 and k != "ce"]
    return default


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_transformers()
    task = get_task(args.task)
    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    default_knowledge = [k.strip() for k in args.knowledge.split(",") if k.strip()]
    out = Path(args.output_dir) if args.output_dir else runs_dir() / "eval" / task.name / time.strftime("%Y%m%d-%H%M%S")
    cache = runs_dir() / "eval" / task.name / "cache"
    data_config = DataConfig(task=task.name, data_dir=args.data_dir, max_reward_examples=args.max_reward_examples,
                             max_train_examples=args.max_train_examples)
    distill_config = DistillConfig(device=args.device, precision=args.precision)
    envs: dict[tuple, Any] = {}
    scorer = None
    runs: list[dict[str, Any]] = []
    bar = tqdm(total=len(names) * args.seeds, desc=f"evaluate {task.name}", unit="run", disable=args.no_progress)
    for name in names:
        agent, agent_record, agent_summary = (None, None, {})
        if name.startswith("agent:"):
            try:
                agent, agent_record, agent_summary = load_agent(name.removeprefix("agent:"))
            except ValueError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
            env_fields = agent_record["env"]
            knowledge, action_space = env_fields["knowledge"], env_fields["action_space"]
            base = env_fields["base_weights"]
            label = f"agent:{agent_record['agent']['algo']}@{Path(name.removeprefix('agent:')).parent.name}"
        else:
            knowledge, action_space, base, label = policy_knowledge(name, default_knowledge), "box", {"ce": 1.0}, name
        env_config = EnvConfig(knowledge=knowledge, base_weights=base, action_space=action_space,
                               phases=args.phases, updates_per_phase=args.updates_per_phase)
        key = {"policy": name, "task": task.name, "data": to_dict(data_config), "distill": to_dict(distill_config),
               "env": to_dict(env_config)}
        if agent is not None:
            key["agent_sha256"] = hashlib.sha256(Path(name.removeprefix("agent:")).read_bytes()).hexdigest()
        tag = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
        for seed in range(args.seeds):
            path = cache / f"{label.replace('/', '_').replace(':', '-')}_{tag}_seed{seed}.json"
            if path.is_file():
                runs.append(json.loads(path.read_text()))
                bar.write(f"{label} seed {seed}: reused {path.name}")
                bar.update(1)
                continue
            env_key = (tuple(knowledge), action_space, tuple(sorted(base.items())))
            if env_key not in envs:
                envs[env_key] = make_env(task.name, env_config, data_config, distill_config, progress=not args.no_progress)
            env = envs[env_key]
            if scorer is None:
                scorer = DevScorer(env.distillation.teacher, env.trainer)
            if agent is not None:
                acting_env = MultiDiscreteOnOff(env) if get_algorithm(agent_record["agent"]["algo"]).wrap_multidiscrete else env
                policy = agent
            else:
                acting_env, policy = env, FixedPolicy(name, env, seed=seed)
            record = run_episode(acting_env, policy, seed, label)
            scores = scorer.score(env.trainer.student)
            result = {
                "policy": label, "seed": seed, "tag": tag, "knowledge": knowledge, "schedule": record.schedule,
                "return": record.episode_return, "status": record.status, "wall_time_s": record.wall_time_s,
                "dev": scores["metrics"], "label_loyalty": scores["label_loyalty"],
                "probability_loyalty": scores["probability_loyalty"], "saliency_loyalty": scores["saliency_loyalty"],
                "teacher_dev": scorer.teacher_metrics, "agent_training_s": agent_summary.get("agent_training_s"),
                "config": key,
            }
            with atomic_write(path) as handle:
                json.dump(result, handle, indent=2)
            runs.append(result)
            bar.write(f"{label} seed {seed}: dev {task.primary_metric} {scores['metrics'][task.primary_metric]:.4f} "
                      f"({record.wall_time_s:.0f} s)")
            bar.update(1)
    bar.close()
    write_report(out, task, runs, args)
    return 0


def write_report(out: Path, task, runs: list[dict[str, Any]], args) -> None:
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
                           "probability_loyalty", "saliency_loyalty", "wall_time_s", "agent_cost_in_runs",
                           "gain_vs_best_baseline", "gain_std"]]
    writer = SummaryWriter(str(out))
    by_seed = {policy: {r["seed"]: r["dev"][metric] for r in runs if r["policy"] == policy} for policy in policies}
    baseline_means = {policy: float(np.mean(list(by_seed[policy].values())))
                      for policy in policies if not policy.startswith("agent:")}
    best_baseline = max(baseline_means, key=baseline_means.get) if baseline_means else None
    means, stds = [], []
    for index, policy in enumerate(policies):
        group = [r for r in runs if r["policy"] == policy]
        values = np.array(list(by_seed[policy].values()))
        mean, std = float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
        means.append(mean)
        stds.append(std)
        loyalty = {k: float(np.nanmean([r[k] for r in group])) for k in ("label_loyalty", "probability_loyalty", "saliency_loyalty")}
        wall = float(np.mean([r["wall_time_s"] for r in group]))
        cost = group[0].get("agent_training_s")
        cost_runs = cost / distill_seconds if cost else None
        # What the agent's training bought: its score minus the best non-agent policy's, seed by seed.
        gain, gain_std = (paired_difference(by_seed[policy], by_seed[best_baseline])
                          if policy.startswith("agent:") and best_baseline else (None, None))
        shown = {k: "n/a" if np.isnan(v) else f"{v:.3f}" for k, v in loyalty.items()}  # n/a: regression has no distribution
        rows.append(f"| {policy} | {mean:.4f} ± {std:.4f} | {mean / teacher:.3f} | {shown['label_loyalty']} | "
                    f"{shown['probability_loyalty']} | {shown['saliency_loyalty']} | {wall:.0f} | "
                    f"{'' if cost_runs is None else f'{cost_runs:.1f}'} | "
                    f"{'' if gain is None else f'{gain:+.4f} ± {gain_std:.4f}'} |")
        csv_rows.append([policy, len(group), mean, std, teacher, mean / teacher, loyalty["label_loyalty"],
                         loyalty["probability_loyalty"], loyalty["saliency_loyalty"], wall, cost_runs, gain, gain_std])
        writer.add_scalar(f"dev_{metric}/mean", mean, index)
        for r in group:
            writer.add_scalar(f"dev_{metric}/{policy}", r["dev"][metric], r["seed"])
        if policy.startswith("agent:"):
            schedule = np.mean([np.array(r["schedule"]) for r in group], axis=0)
            png = heatmap_png(schedule, group[0]["knowledge"], f"{policy}: mean schedule over {len(group)} seeds")
            with atomic_write(out / f"schedule_{policy.replace(':', '-').replace('/', '_')}.png", "wb") as handle:
                handle.write(png)
            writer.add_image(f"schedule/{policy}", png_array(png), 0, dataformats="HWC")
    header = (f"| policy | dev {metric} (mean ± std, {args.seeds} seeds) | / teacher | label loyalty | probability loyalty | "
              f"saliency loyalty | s per run | agent training (× one run) | gain vs best baseline (paired) |\n"
              f"|---|---|---|---|---|---|---|---|---|")
    command = "python agents/evaluate.py " + " ".join(sys.argv[1:])
    table = (f"Task {task.name}; teacher dev {metric} {teacher:.4f}; budget {args.phases} phases × "
             f"{args.updates_per_phase} updates; command: `{command}`\n\n{header}\n" + "\n".join(rows) + "\n")
    if best_baseline:
        table += (f"\nAgent training: wall time divided by the mean of one distillation run here ({distill_seconds:.1f} s). "
                  f"Gain: agent minus the best non-agent policy ({best_baseline}, {baseline_means[best_baseline]:.4f}), "
                  f"mean ± std of the per-seed differences.\n")
    print(table)
    with atomic_write(out / "results.md") as handle:
        handle.write(table)
    with atomic_write(out / "results.csv", newline="") as handle:
        csv.writer(handle).writerows(csv_rows)
    with atomic_write(out / "runs.json") as handle:
        json.dump(runs, handle, indent=2)
    figure, axis = plt.subplots(figsize=(1.0 + 0.8 * len(policies), 3.5))
    axis.bar(range(len(policies)), means, yerr=stds, capsize=4, color="#4c72b0")
    axis.axhline(teacher, color="#c44e52", linestyle="--", label="teacher")
    axis.set_xticks(range(len(policies)), policies, rotation=40, ha="right", fontsize=8)
    axis.set_ylabel(f"dev {metric}")
    axis.set_title(f"{task.name}: mean ± std over {args.seeds} seeds", fontsize=9)
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
