"""The live check as a library (``agents/live_check.py`` is its program): a leaderboard agent row
trained on every seed of its table, played by the real trainer on episode seeds no table holds,
against the best constant chosen on the table's seeds, seed by seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kdenv.benchmark.board import AGENTS, ALL_SEEDS, REPORT_REWARD, fold_hyperparams
from kdenv.benchmark.oracle import subset_names
from kdenv.benchmark.protocol import FoldView
from kdenv.benchmark.study import TableStudy
from kdenv.benchmark.table import Table
from kdenv.benchmark.table_env import REWARD_SCALE
from kdenv.config import save_run_config
from kdenv.decision.algorithms import SavedAgent, get_algorithm, save_agent
from kdenv.engine.tasks import get_task
from kdenv.stats import ci_text, improvement, improvement_text, seeds_text, summarise


def constant_policy(table: Table, subset: int) -> str:
    """The fixed policy (evaluate.py's name) that plays one subset of the table's knowledge in every phase."""
    name = subset_names(table.knowledge)[subset]  # "-" for the empty subset, else "hidden+gradient", ...
    return "none" if name == "-" else f"only-{name}"


def schedule_policy(table: Table, sequence: tuple[int, ...]) -> str:
    """The fixed policy that plays ``sequence`` (one subset of the table's knowledge a phase): a constant as
    ``constant_policy`` names it, else schedule-<subset>/<subset>/... (``none`` for the empty subset)."""
    if len(set(sequence)) == 1:
        return constant_policy(table, sequence[0])
    names = subset_names(table.knowledge)
    return "schedule-" + "/".join("none" if names[action] == "-" else names[action] for action in sequence)


def run_seconds(table: Table) -> float | None:
    """What one live episode should cost on one thread, from the table's own measured node times: its
    phases at the median phase time, plus the median dev scoring of a leaf scaled from the table's dev
    subsample to the whole dev set (a live run scores all of it), on the seed that cost least (node
    times are wall times, so pauses and other work inflate the rest). A lower bound: loading the
    teacher's cache and the student is not in it. None without timings."""
    from kdenv.benchmark.build import seed_seconds

    cheapest = min(table.seeds, key=lambda seed: seed_seconds(table.nodes[seed]))
    records = list(table.nodes[cheapest].values())
    phases = [r["wall_time_s"] for r in records if r.get("wall_time_s")]
    if not phases:
        return None
    dev = [r["dev_wall_time_s"] for r in records if r.get("dev_wall_time_s")]
    scoring = table.manifest.get("dev_scoring") or {}
    whole = scoring.get("dev_size", 1) / max(scoring.get("examples") or scoring.get("dev_size", 1), 1)
    return table.phases * float(np.median(phases)) + (float(np.median(dev)) * whole if dev else 0.0)


def train_agents(table: Table, row: str, result: dict[str, Any], agent_seeds: int, path: Path,
                 out: Path, progress: bool = True) -> tuple[TableStudy, list[Path]]:
    """The row's configuration trained on all of the table's seeds, one agent per agent seed
    (finished zips are reused); the run record beside them lets evaluate.py rebuild each agent.
    Returns the study they trained in and their zips."""
    spec, config = AGENTS[row], result["config"]
    # the reward the row's result file was trained on (a board retrained with --train-reward)
    study = TableStudy(table, get_algorithm(spec.algo), list(table.seeds), [], config.get("reward", spec.reward),
                       REWARD_SCALE, config["episodes"],
                       exploration_bonus=spec.bonus)
    hyperparams = fold_hyperparams(result, ALL_SEEDS, study, row, path, progress)
    zips = []
    for seed in range(agent_seeds):  # one folder each: evaluate.py names an agent by its folder
        folder = out / "agents" / f"seed{seed}"
        record = study.record(hyperparams, [seed])
        if not study.resumable(folder, record):
            folder.mkdir(parents=True, exist_ok=True)
            save_run_config(folder / "config.yaml", record.pop("seeds"), **record)
        zip_path = folder / "agent.zip"
        if not zip_path.is_file():
            model, seconds = study.fit(hyperparams, seed)
            save_agent(model, zip_path)
            if progress:
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


def live_report(table: Table, table_name: str, row: str, baseline: str, extra: list[str], runs: list[dict[str, Any]],
                seeds: list[int], on_table: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The live check's report (Markdown) and its data: each agent row and extra policy minus the
    baseline seed by seed on dev and on the reward split, and ``on_table`` (:func:`table_gains`)."""
    metric = get_task(table.task).primary_metric
    agent_labels = sorted({run["policy"] for run in runs if run["policy"].startswith("agent:")})
    scores = {"dev": lambda run: run["dev"][metric],
              "reward split": lambda run: run.get("reward_split", {}).get("final", float("nan"))}
    rows = {AGENTS[row].row: agent_labels, **{name: [name] for name in extra}}
    result: dict[str, Any] = {"table": table_name, "row": row, "baseline": baseline, "seeds": seeds,
                              "metric": metric, "comparisons": {}}
    lines = [f"Live check of `{row}` ({AGENTS[row].row}), trained on every seed of `{table_name}`, on new episode "
             f"{seeds_text(seeds)} ({len(seeds)}); baseline: `{baseline}`, the best constant chosen on the "
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
                         f"{improvement_text(chance)} | "
                         f"{summary['seeds']} x {summary['agent_seeds']} |")
    means = {label: float(np.mean([run["dev"][metric] for run in runs if run["policy"] == label]))
             for label in [baseline, *agent_labels, *extra]}
    lines += ["", "Mean final dev " + metric + ": " + ", ".join(f"{label} {value:.4f}" for label, value in means.items()),
              "", f"On the table, the same agents on the {on_table['seeds']} seeds they trained on (in-sample), reward "
              f"split minus the baseline: {ci_text(on_table)} ({on_table['seeds']} x {on_table['agent_seeds']}); per "
              "agent " + ", ".join(f"{value:+.4f}" for value in on_table["per_agent"]) + "."]
    result["on_the_table"] = on_table
    return result, "\n".join(lines) + "\n"
