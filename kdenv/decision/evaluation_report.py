"""The report of an evaluation (:func:`kdenv.decision.evaluation.evaluate_policies`): per policy the
dev metric (mean ± std over seeds), its ratio to the teacher, the loyalty metrics, the wall time,
and the paired difference from the baseline on dev and on the reward split with its bootstrap 95%
interval over seeds. Written as results.md, results.csv, runs.json, paired.json and
metric_by_policy.png (all or nothing), a schedule heatmap per agent, and TensorBoard events."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdenv.decision.evaluation import EvaluationResult
from kdenv.decision.schedules import heatmap_png, png_array
from kdenv.io import write_all
from kdenv.stats import paired_difference, seeds_text, with_interval

LOYALTY = ("label_loyalty", "probability_loyalty", "saliency_loyalty")


@dataclass
class PolicyScores:
    """One policy's figures over the seeds it ran on."""

    policy: str
    runs: list[dict[str, Any]]
    mean: float
    std: float
    loyalty: dict[str, float]
    wall_s: float
    cost_in_runs: float | None  # an agent's training time, in distillation runs
    paired: dict[str, dict[str, Any]]  # "dev" / "reward_split": the paired difference from the baseline


def defined_mean(values: list[float]) -> float:
    """Mean of the defined (non-NaN) values; NaN, without numpy's empty-slice warning, when none is."""
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def chosen_baseline(result: EvaluationResult, metric: str) -> str | None:
    """The baseline's label: named in the request, else the non-agent policy with the best mean dev metric."""
    if result.baseline:
        return result.baseline
    means = {}
    for run in result.runs:
        if not run["policy"].startswith("agent:"):
            means.setdefault(run["policy"], []).append(run["dev"][metric])
    return max(means, key=lambda policy: np.mean(means[policy])) if means else None


def policy_scores(result: EvaluationResult, metric: str, baseline: str | None) -> list[PolicyScores]:
    runs = result.runs
    policies = list(dict.fromkeys(run["policy"] for run in runs))
    by_seed = {p: {r["seed"]: r["dev"][metric] for r in runs if r["policy"] == p} for p in policies}
    # The reward split's final metric (runs cached before it was recorded have none: NaN, left out).
    reward_by_seed = {p: {r["seed"]: r.get("reward_split", {}).get("final", float("nan")) for r in runs
                          if r["policy"] == p} for p in policies}
    distill_seconds = np.mean([r["wall_time_s"] for r in runs]) if runs else float("nan")
    scores = []
    for policy in policies:
        group = [r for r in runs if r["policy"] == policy]
        values = np.array(list(by_seed[policy].values()))
        paired = {}
        if baseline and policy != baseline and baseline in by_seed:
            paired["dev"] = paired_difference(by_seed[policy], by_seed[baseline])
            try:
                paired["reward_split"] = paired_difference(reward_by_seed[policy], reward_by_seed[baseline])
            except ValueError:  # no defined reward-split value in common (old cached runs)
                pass
        cost = group[0].get("agent_training_s")
        scores.append(PolicyScores(policy, group, float(values.mean()),
                                   float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                                   {k: defined_mean([r[k] for r in group]) for k in LOYALTY},
                                   float(np.mean([r["wall_time_s"] for r in group])),
                                   cost / distill_seconds if cost else None, paired))
    return scores


def paired_text(paired: dict[str, Any] | None) -> str:
    return f"{with_interval(paired['mean'], paired['ci'])} (n={paired['n']})" if paired else ""


def paired_fields(paired: dict[str, Any] | None) -> list[float | None]:
    return [paired["mean"], *paired["ci"]] if paired else [None, None, None]


def markdown(result: EvaluationResult, scores: list[PolicyScores], teacher: float, baseline: str | None,
             command: str) -> str:
    task, request = result.request.task, result.request
    metric = task.primary_metric
    rows = []
    for s in scores:
        shown = {k: "n/a" if np.isnan(v) else f"{v:.3f}" for k, v in s.loyalty.items()}  # n/a: regression
        rows.append(f"| {s.policy} | {s.mean:.4f} ± {s.std:.4f} | {s.mean / teacher:.3f} | {shown['label_loyalty']} | "
                    f"{shown['probability_loyalty']} | {shown['saliency_loyalty']} | {s.wall_s:.0f} | "
                    f"{'' if s.cost_in_runs is None else f'{s.cost_in_runs:.1f}'} | {paired_text(s.paired.get('dev'))} | "
                    f"{paired_text(s.paired.get('reward_split'))} |")
    header = (f"| policy | dev {metric} (mean ± std, {seeds_text(request.seeds)}) | / teacher | label loyalty | "
              "probability loyalty | saliency loyalty | s per run | agent training (× one run) | "
              f"dev {metric} − baseline (paired, 95% CI) | reward-split {metric} − baseline (paired, 95% CI) |\n"
              "|---|---|---|---|---|---|---|---|---|---|")
    text = (f"Task {task.name}; teacher dev {metric} {teacher:.4f}; budget {request.budget['phases']} phases × "
            f"{request.budget['updates_per_phase']} updates; command: `{command}`\n\n{header}\n" + "\n".join(rows) + "\n")
    if baseline:
        distill_seconds = np.mean([r["wall_time_s"] for r in result.runs])
        chosen = ("named in advance (--baseline)" if result.baseline else
                  "the best non-agent policy on these very seeds (name one with --baseline for a fair test)")
        text += (f"\nBaseline: {baseline}, {chosen}. Each difference is the policy minus the baseline seed by "
                 f"seed (the same data order and dropout), mean and percentile bootstrap 95% interval over the seeds; "
                 f"n = seeds. Agent training: wall time divided by the mean of one distillation run here "
                 f"({distill_seconds:.1f} s).\n")
    return text


def csv_text(scores: list[PolicyScores], teacher: float, baseline: str | None, metric: str) -> str:
    rows = [["policy", "seeds", f"{metric}_mean", f"{metric}_std", "teacher", "ratio", *LOYALTY, "wall_time_s",
             "agent_cost_in_runs", "baseline", "dev_gain", "dev_gain_ci_low", "dev_gain_ci_high", "reward_split_gain",
             "reward_split_gain_ci_low", "reward_split_gain_ci_high", "paired_seeds"]]
    for s in scores:
        rows.append([s.policy, len(s.runs), s.mean, s.std, teacher, s.mean / teacher, *s.loyalty.values(), s.wall_s,
                     s.cost_in_runs, baseline if s.paired else None, *paired_fields(s.paired.get("dev")),
                     *paired_fields(s.paired.get("reward_split")), s.paired["dev"]["n"] if s.paired else None])
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def figure_png(scores: list[PolicyScores], teacher: float, metric: str, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means, stds = [s.mean for s in scores], [s.std for s in scores]
    figure, axis = plt.subplots(figsize=(1.0 + 0.8 * len(scores), 3.5))
    axis.bar(range(len(scores)), means, yerr=stds, capsize=4, color="#4c72b0")
    axis.axhline(teacher, color="#c44e52", linestyle="--", label="teacher")
    axis.set_xticks(range(len(scores)), [s.policy for s in scores], rotation=40, ha="right", fontsize=8)
    axis.set_ylabel(f"dev {metric}")
    axis.set_title(title, fontsize=9)
    axis.set_ylim(max(0.0, min([m - s for m, s in zip(means, stds)] + [teacher]) - 0.05), None)
    axis.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=100, format="png")
    plt.close(figure)
    return buffer.getvalue()


def schedule_files(scores: list[PolicyScores], out: Path) -> dict[Path, bytes]:
    """Each agent's mean learned schedule over its seeds, as a heatmap."""
    files = {}
    for s in scores:
        if s.policy.startswith("agent:"):
            schedule = np.mean([np.array(r["schedule"]) for r in s.runs], axis=0)
            png = heatmap_png(schedule, s.runs[0]["knowledge"], f"{s.policy}: mean schedule over {len(s.runs)} seeds")
            files[out / f"schedule_{s.policy.replace(':', '-').replace('/', '_')}.png"] = png
    return files


def write_report(result: EvaluationResult, command: str) -> str:
    """Writes the report's files (all or nothing) and TensorBoard events; returns the Markdown."""
    from torch.utils.tensorboard import SummaryWriter

    out, task = result.request.out, result.request.task
    metric = task.primary_metric
    teacher = result.runs[0]["teacher_dev"][metric] if result.runs else float("nan")
    baseline = chosen_baseline(result, metric)
    scores = policy_scores(result, metric, baseline)
    text = markdown(result, scores, teacher, baseline, command)
    paired = {"baseline": baseline, "baseline_named": bool(result.baseline), "metric": metric,
              "comparisons": {s.policy: s.paired for s in scores if s.paired}}
    title = f"{task.name}: mean ± std over {seeds_text(result.request.seeds)}"
    schedules = schedule_files(scores, out)
    write_all({out / "results.md": text.encode(), out / "results.csv": csv_text(scores, teacher, baseline, metric).encode(),
               out / "runs.json": json.dumps(result.runs, indent=2).encode(),
               out / "paired.json": json.dumps(paired, indent=2).encode(),
               out / "metric_by_policy.png": figure_png(scores, teacher, metric, title), **schedules})
    writer = SummaryWriter(str(out))
    for index, s in enumerate(scores):
        writer.add_scalar(f"dev_{metric}/mean", s.mean, index)
        for run in s.runs:
            writer.add_scalar(f"dev_{metric}/{s.policy}", run["dev"][metric], run["seed"])
    for path, png in schedules.items():
        writer.add_image(f"schedule/{path.stem.removeprefix('schedule_')}", png_array(png), 0, dataformats="HWC")
    writer.close()
    return text
