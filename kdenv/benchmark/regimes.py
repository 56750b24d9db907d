"""The regime survey (docs/benchmark.md, "Regimes"): where might time-varying knowledge selection
pay? Each regime is a schedule table built with per-example outputs; the survey reports, per regime,
the headroom over the best constant chosen on one set of examples and scored on another (kdenv.benchmark
.outofsample), the student against its teacher, and the build's cost.

The regimes are defined here once: ``bench/regime_builds.sh`` reads their build flags and seeds from
this module (``python -m kdenv.benchmark.regimes flags NAME``), and ``agents/regimes.py`` surveys the
ones that are shipped."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from kdenv.benchmark.oracle import (
    all_dev_metrics,
    all_returns,
    constant_columns,
    dev_metric_name,
    rank_correlation,
    subset_names,
)
from kdenv.benchmark.outofsample import ReadOutputs, StackedOutputs, TableLabels, out_of_sample, table_labels
from kdenv.benchmark.table import Table
from kdenv.cli import parse_seeds
from kdenv.paths import tables_dir
from kdenv.stats import ci_text, over_seeds, seeds_text, with_interval

# Every regime keeps outputs (build_tree's default), scores dev on all of it or on 1,000 examples where
# it is larger, and keeps a reward split of up to 512 examples, so that the reward's size can be studied
# below it.
COMMON_FLAGS = "--threads 1 --max-reward-examples 512"


@dataclass(frozen=True)
class Regime:
    name: str  # the table's name (kdenv/tables/<name>)
    question: str  # what it gives time-varying selection a chance at
    flags: str  # build_tree flags besides COMMON_FLAGS and --output
    seeds: str  # the seeds it is built to
    # the reward measured to rank this regime's schedules as dev does (the survey's reward curve): agents
    # on its table train on it (the leaderboard's rows that train on metric_gain); None: each row's own
    train_reward: str | None = None

    def build_flags(self) -> str:
        return f"{self.flags} {COMMON_FLAGS} --output kdenv/tables/{self.name}"


REGIMES: tuple[Regime, ...] = (
    Regime("stsb_u8_o", "the control: stsb_u8's regime (3 types, 3 phases x 8 updates) with outputs",
           "--task stsb --phases 3 --updates-per-phase 8 --dev-examples 1000", "0-3"),
    Regime("rte_u8", "a low-resource task (RTE, 2,490 train examples): the teacher may help early, hurt late",
           "--task rte --phases 3 --updates-per-phase 8", "0-3"),
    # At 4 seeds the one regime whose out-of-sample headroom has an interval above 0 (teacher_agreement's
    # choice scored on dev), so it is built to 16 seeds (the "best regime at scale"), first, while
    # the builds run on the replay class its seeds 0-3 were built on.
    Regime("stsb_k2_u128", "a longer horizon: 2 types, 3 phases x 128 updates (0.4 epoch of STS-B a phase)",
           "--task stsb --knowledge hidden,gradient --phases 3 --updates-per-phase 128 --dev-examples 1000", "0-15",
           # What agents learn from (open_loop_signals, the reward split alone, 9 seeds): metric_gain separates its
           # best open-loop schedule from its best constant by +0.0018, 1.6 standard deviations over seeds, on 9 of
           # 9; teacher_agreement by +0.0005, 0.7, on 7 of 9 (both rank like dev, Spearman +0.92). A probe (A2C and
           # DQN, k = 4 x 5 agent seeds) agreed: DQN on metric_gain +0.0048 on dev, on teacher_agreement +0.0022.
           train_reward="metric_gain"),
    # At U = 8 a 1-layer student learns nothing in 24 updates (dev Pearson 0.03, every schedule alike),
    # so the capacity gap is surveyed at U = 64; the U = 8 seed stays as the record of that.
    Regime("stsb_l1_u8", "a larger capacity gap at U = 8 (one seed: the student learns nothing)",
           "--task stsb --student-layers 1 --phases 3 --updates-per-phase 8 --dev-examples 1000", "0"),
    Regime("stsb_l1_u64", "a larger capacity gap: a 1-layer student of the 6-layer teacher, 3 phases x 64 updates",
           "--task stsb --student-layers 1 --phases 3 --updates-per-phase 64 --dev-examples 1000", "0-3"),
    # More decisions, in full: with one type the tree of 6 phases has 64 schedules (every switch time
    # included), where 6 phases over 2 or 3 types would need 4,096 or 262,144. Whether and when to use
    # soft logits at all: early-stopped KD beats KD throughout where the gap is large (Cho & Hariharan,
    # ICCV 2019), a schedule no constant can express.
    Regime("stsb_logits_p6_u64", "more decisions: KD's soft logits on or off in each of 6 phases x 64 updates "
           "(1.1 epochs of STS-B in all; every one-switch schedule included)",
           "--task stsb --knowledge logits --phases 6 --updates-per-phase 64 --dev-examples 1000", "0-3"),
)


def find_regime(name: str) -> Regime | None:
    """The regime whose table is named ``name`` (a table's folder name), None for another table."""
    return next((entry for entry in REGIMES if entry.name == name), None)


def measured_train_reward(table_name: str) -> str | None:
    """The reward agents train on in a regime's table (``Regime.train_reward``), None for another table."""
    entry = find_regime(table_name)
    return None if entry is None else entry.train_reward


def regime(name: str) -> Regime:
    entry = find_regime(name)
    if entry is not None:
        return entry
    raise KeyError(f"no regime {name!r}; regimes: {', '.join(r.name for r in REGIMES)}")


def student_and_teacher(table: Table, chosen: int, dev: np.ndarray | None) -> dict[str, Any] | None:
    """The dev metric of the constant schedule the reward chooses (column ``chosen`` of ``dev``, the
    table's dev metrics [seeds, schedules]), against the teacher's."""
    if dev is None:
        return None
    teacher = table.manifest.get("teacher", {}).get(f"dev_{dev_metric_name(table)}")
    student = over_seeds(dev[:, chosen])
    return {"metric": dev_metric_name(table), "student": student, "teacher": teacher,
            "ratio": None if not teacher else float(np.nanmean(dev[:, chosen]) / teacher)}


def dev_preference(table: Table, sequences: list[tuple[int, ...]], dev: np.ndarray) -> dict[str, Any]:
    """The schedule dev itself ranks first (analysis only: no agent sees dev), the one most seeds share,
    named, with how many seeds share it and whether it is a constant."""
    best = [tuple(sequences[i]) for i in np.nanargmax(dev, axis=1)]
    schedule = max(set(best), key=lambda s: (best.count(s), -best.index(s)))
    names = subset_names(list(table.knowledge))
    return {"schedule": list(schedule), "named": " → ".join(names[a] for a in schedule),
            "seeds": best.count(schedule), "constant": len(set(schedule)) == 1}


REWARD_RANKINGS = ("metric_gain", "teacher_agreement")


def reward_rankings(table: Table, dev: np.ndarray, known: dict[str, np.ndarray] | None = None) -> dict[str, float | None]:
    """Per reward, Spearman's correlation over a seed's schedules between the reward's return (on the
    whole reward split) and the dev metric, averaged over seeds: how faithfully the reward ranks.
    ``known``: returns already computed, by reward ([seeds, schedules])."""
    result: dict[str, float | None] = {}
    for reward in REWARD_RANKINGS:
        returns = (known or {}).get(reward)
        if returns is None:
            _, returns = all_returns(table, reward)
        values = [rank_correlation(list(returns[row]), list(dev[row])) for row in range(len(table.seeds))]
        defined = [value for value in values if value is not None]
        result[reward] = float(np.mean(defined)) if defined else None
    return result


def seed_hours(table: Table) -> dict[str, float]:
    """What a seed cost to build, in hours on one thread: each seed's measured node times (phases and dev
    scoring) summed, the least and the median over seeds. Node times are wall times, so a seed built
    beside other work or paused (SIGSTOP, for the test suite) counts those too: the least is the
    closest to the cost alone."""
    from kdenv.benchmark.build import seed_seconds

    hours = [seed_seconds(table.nodes[seed]) / 3600 for seed in table.seeds]
    return {"least": round(float(np.min(hours)), 2), "median": round(float(np.median(hours)), 2)}


def shipped_kb_per_seed(table: Table) -> dict[str, float]:
    """What a seed weighs in the repository, in KB (mean over seeds): its seed file and its outputs file."""
    seed_kb = sum((table.directory / name).stat().st_size for name in table.manifest["files"]) / 1000
    outputs_kb = sum((table.directory / name).stat().st_size for name in table.manifest.get("outputs_files") or {}) / 1000
    seeds = len(table.seeds)
    return {"total": round((seed_kb + outputs_kb) / seeds, 1), "seed_file": round(seed_kb / seeds, 1),
            "outputs": round(outputs_kb / seeds, 1)}


def open_loop_signals(table: Table) -> dict[str, dict[str, Any]]:
    """Per reward, what an agent trained on it has to learn from, read on the reward split alone: the
    reward's own best open-loop schedule minus its own best constant, per seed on the reward's returns
    (both chosen over all seeds, as ``FoldView`` chooses them; an in-sample figure, by design), with its
    mean, interval, the standardised paired effect (mean / std over seeds) and how many seeds it is above 0
    on. A reward that ranks like dev but separates its schedules by less than their noise gives agents
    little to learn."""
    from kdenv.benchmark.protocol import FoldView

    result = {}
    for reward in REWARD_RANKINGS:
        view = FoldView(table, reward)
        constant, open_loop = view.best_constant(table.seeds), view.best_open_loop(table.seeds)
        difference = view.returns[:, open_loop] - view.returns[:, constant]
        spread = float(difference.std(ddof=1)) if len(difference) > 1 else 0.0
        result[reward] = {**over_seeds(difference), "effect": float(difference.mean() / spread) if spread > 0 else None,
                          "seeds_above": int((difference > 0).sum()), "open_loop": list(view.sequences[open_loop]),
                          "constant": list(view.sequences[constant])}
    return result


def survey_table(table: Table, data_dir: str | None = None, halvings: int = 50, resamples: int = 200,
                 labels: TableLabels | None = None) -> dict[str, Any]:
    """One regime's figures: out-of-sample headroom (metric_gain reward), the student against its teacher,
    and the cost per seed. ``labels``: the reward and dev labels (default: read from the task's data)."""
    sequences, returns = all_returns(table, "metric_gain")
    constants = constant_columns(table, sequences)
    chosen = constants[int(np.argmax([returns[:, i].mean() for i in constants]))]  # by the reward
    dev = all_dev_metrics(table, sequences)
    figures: dict[str, Any] = {
        "table": table.name, "manifest_sha256": table.manifest.get("manifest_sha256"),
        "seeds": list(table.seeds), "knowledge": list(table.knowledge),
        "phases": table.phases, "updates_per_phase": table.manifest.get("updates_per_phase"),
        "student_layers": table.manifest.get("distill", {}).get("student_layers"),
        "hours_per_seed": seed_hours(table),
        "kb_per_seed": shipped_kb_per_seed(table),
        "schedules": len(sequences),
        "student_vs_teacher": student_and_teacher(table, chosen, dev),
        "reward_examples": (table.manifest.get("outputs") or {}).get("examples", {}).get("reward"),
    }
    if dev is not None:
        figures["dev_prefers"] = dev_preference(table, sequences, dev)
        figures["reward_dev_spearman"] = reward_rankings(table, dev, {"metric_gain": returns})
    figures["open_loop_signal"] = open_loop_signals(table)
    if table.manifest.get("outputs"):
        labels = labels or table_labels(table.manifest, data_dir)
        stacked = StackedOutputs.of(table)  # once, for both rewards
        figures["out_of_sample"] = out_of_sample(table, labels, "metric_gain", halvings, resamples, stacked=stacked)
        figures["out_of_sample_teacher_agreement"] = out_of_sample(table, labels, "teacher_agreement", halvings,
                                                                   resamples, stacked=stacked)
        figures["switches"] = switch_effects(table, ReadOutputs(labels, stacked, "seeds, examples"))
    elif dev is not None:
        figures["switches"] = switch_effects(table)
    return figures


def survey(names: list[str] | None = None, data_dir: str | None = None, halvings: int = 50,
           resamples: int = 200, progress=None) -> list[dict[str, Any]]:
    """Every named (default: every) regime whose table is shipped, surveyed; the others listed as not built."""
    rows = []
    for entry in [regime(name) for name in names] if names else REGIMES:
        folder = tables_dir() / entry.name
        if not (folder / "manifest.json").is_file():
            rows.append({"table": entry.name, "question": entry.question, "built": False,
                         "seeds_planned": parse_seeds(entry.seeds)})
            continue
        if progress is not None:
            progress(entry.name)
        figures = survey_table(Table.load(folder), data_dir, halvings, resamples)
        rows.append({**figures, "question": entry.question, "built": True, "seeds_planned": parse_seeds(entry.seeds)})
    return rows


def _cell(figures: dict[str, Any] | None, name: str) -> str:
    if not figures or name not in figures:
        return "n/a"
    entry = figures[name]
    return f"{with_interval(entry['mean'], entry['ci'])} (n={entry['n']})"


def _preference(row: dict[str, Any]) -> str:
    prefers = row.get("dev_prefers")
    if not prefers:
        return "n/a"
    kind = "a constant" if prefers["constant"] else "time-varying"
    return f"{prefers['named']} ({prefers['seeds']} of {len(row['seeds'])}; {kind})"


def _rankings(row: dict[str, Any]) -> str:
    rankings = row.get("reward_dev_spearman")
    if not rankings:
        return "n/a"
    cells = " / ".join("n/a" if rankings.get(r) is None else f"{rankings[r]:+.2f}" for r in REWARD_RANKINGS)
    return cells + (f" ({row['reward_examples']})" if row.get("reward_examples") else "")


def _signals(row: dict[str, Any]) -> str:
    signals = row.get("open_loop_signal")
    if not signals:
        return "n/a"
    cells = []
    for reward in REWARD_RANKINGS:
        entry = signals.get(reward)
        effect = "n/a" if entry is None or entry["effect"] is None else f"{entry['effect']:.1f}"
        cells.append("n/a" if entry is None else
                     f"{entry['mean']:+.4f} ({effect}; {entry['seeds_above']} of {entry['n']})")
    return " / ".join(cells)


def _adaptive(oos: dict[str, Any]) -> str:
    """The oracle's gain over the best open-loop schedule, reward → dev and on dev's halves (paired)."""
    over = oos.get("over_open_loop") or {}
    cells = [(over.get(figure) or {}).get("oracle") for figure in ("reward_to_dev", "dev_halves")]
    if not any(cells):
        return "n/a"
    return " / ".join("n/a" if cell is None else with_interval(cell["mean"], cell["ci"]) for cell in cells)


def survey_markdown(rows: list[dict[str, Any]]) -> str:
    """The survey as a page: one row per regime, every headroom out of sample with its 95% interval
    (seeds and examples resampled) and the number of seeds behind it."""
    lines = [
        "| regime | what it tests | seeds | schedules (types x phases x updates) | oracle, reward → dev | "
        "best open-loop, reward → dev | oracle, cross-fitted on the reward split | "
        "best open-loop, teacher_agreement → dev | oracle, dev halves | "
        "adapting to the seed: oracle − best open-loop, reward → dev / dev halves | dev's own best schedule (seeds) | "
        "Spearman with dev: metric_gain / teacher_agreement (reward examples) | "
        "what agents learn from: best open-loop − best constant on the reward split, metric_gain / "
        "teacher_agreement (mean / std over seeds; seeds above 0) | student / teacher (dev) | "
        "hours a seed on one thread: least / median over seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if not row["built"]:
            lines.append(f"| {row['table']} | {row['question']} | 0 of {len(row['seeds_planned'])} | not built yet "
                         "| | | | | | | | | | | |")
            continue
        oos = row.get("out_of_sample") or {}
        agreement = row.get("out_of_sample_teacher_agreement") or {}
        versus = row.get("student_vs_teacher")
        ratio = (f"{versus['student']['mean']:.4f} / {versus['teacher']:.4f} ({versus['ratio']:.3f})"
                 if versus and versus.get("teacher") else "n/a")
        shape = (f"{row['schedules']} ({len(row['knowledge'])} x {row['phases']} x {row['updates_per_phase']}"
                 f"{', 1-layer student' if row.get('student_layers') == 1 else ''})")
        lines.append(f"| {row['table']} | {row['question']} | {len(row['seeds'])} of {len(row['seeds_planned'])} | "
                     f"{shape} | {_cell(oos.get('reward_to_dev'), 'oracle')} | "
                     f"{_cell(oos.get('reward_to_dev'), 'open_loop')} | {_cell(oos.get('crossfit'), 'oracle')} | "
                     f"{_cell(agreement.get('reward_to_dev'), 'open_loop')} | {_cell(oos.get('dev_halves'), 'oracle')} | "
                     f"{_adaptive(oos)} | {_preference(row)} | {_rankings(row)} | {_signals(row)} | {ratio} | {row['hours_per_seed']['least']} / {row['hours_per_seed']['median']} |")
    return "\n".join(lines) + "\n"


def builds_markdown(rows: list[dict[str, Any]]) -> str:
    """Where each regime's build stands: the seeds shipped of those planned, what a seed cost on one
    thread (measured) and what it weighs in the repository."""
    lines = ["| regime | what it tests | seeds shipped | hours a seed on one thread: least / median over seeds "
             "(measured) | shipped size a seed: seed file + outputs |", "|---|---|---|---|---|"]
    for row in rows:
        planned = len(row["seeds_planned"])
        if not row["built"]:
            lines.append(f"| `{row['table']}` | {row['question']} | 0 of {planned} | not built yet | |")
            continue
        hours, kb = row["hours_per_seed"], row["kb_per_seed"]
        lines.append(f"| `{row['table']}` | {row['question']} | {len(row['seeds'])} of {planned} "
                     f"({seeds_text(row['seeds'])}) | {hours['least']} / {hours['median']} | {kb['total']:,.0f} KB "
                     f"({kb['seed_file']:,.0f} + {kb['outputs']:,.0f}) |")
    return "\n".join(lines) + "\n"


# The survey's figure: each built regime's out-of-sample headrooms, as (label, key of survey_table, choice).
FIGURE_ENTRIES = (  # (legend, where the figure lies in a survey row)
    ("oracle, metric_gain → dev", ("out_of_sample", "reward_to_dev", "oracle")),
    ("oracle, teacher_agreement → dev", ("out_of_sample_teacher_agreement", "reward_to_dev", "oracle")),
    ("best open-loop, metric_gain → dev", ("out_of_sample", "reward_to_dev", "open_loop")),
    ("oracle, cross-fitted on the reward split", ("out_of_sample", "crossfit", "oracle")),
    ("oracle, dev halves (analysis only)", ("out_of_sample", "dev_halves", "oracle")),
    ("adapting to the seed: oracle − best open-loop, metric_gain → dev (paired)",
     ("out_of_sample", "over_open_loop", "reward_to_dev", "oracle")),
)


def figure_at(row: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    """The figure at ``path`` in a survey row, None where any step is missing."""
    value: Any = row
    for key in path:
        value = (value or {}).get(key)
    return value


def survey_png(rows: list[dict[str, Any]]) -> bytes | None:
    """The survey as a forest plot: per built regime, each out-of-sample figure of FIGURE_ENTRIES (gains
    over the best constant, and the oracle's over the best open-loop schedule), its mean and 95% interval (seeds and examples resampled), n in the label.
    None where no regime keeps outputs yet."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []  # (regime label, entry index, figure)
    for row in rows:
        if not row.get("built"):
            continue
        for index, (_, path) in enumerate(FIGURE_ENTRIES):
            figure = figure_at(row, path)
            if figure is not None:
                points.append((f"{row['table']} (n={figure['n']})", index, figure))
    if not points:
        return None
    regimes = list(dict.fromkeys(label for label, _, _ in points))
    fig, axis = plt.subplots(figsize=(10.5, 1.2 + 0.9 * len(regimes)))
    colours = plt.get_cmap("tab10").colors
    step = 0.8 / len(FIGURE_ENTRIES)
    for label, index, figure in points:
        y = regimes.index(label) + (index - (len(FIGURE_ENTRIES) - 1) / 2) * step
        low, high = figure["ci"]
        axis.errorbar(figure["mean"], y, xerr=[[figure["mean"] - low], [high - figure["mean"]]], fmt="o", ms=4,
                      capsize=2, color=colours[index % len(colours)])
    for index, (name, _) in enumerate(FIGURE_ENTRIES):
        axis.plot([], [], "o", color=colours[index % len(colours)], label=name)
    axis.set_yticks(range(len(regimes)), regimes, fontsize=8)
    axis.invert_yaxis()
    axis.axvline(0.0, color="grey", lw=0.8)
    axis.set_xlabel("gain on held-out examples over the best constant (the last: over the best open-loop "
                    "schedule); mean, 95% CI", fontsize=8)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


# The tables of the at-a-glance answer besides the built regimes: the board's, and the H100 U = 16 table.
GLANCE_TABLES = ("stsb_u8", "sst2_u8", "stsb", "stsb_h100_u8", "stsb_h100_u16", "mrpc")
GLANCE_REWARDS = ("metric_gain", "teacher_agreement")
# where survey_table keeps each glance reward's out-of-sample figures
SURVEY_KEYS = {"metric_gain": "out_of_sample", "teacher_agreement": "out_of_sample_teacher_agreement"}


def glance(names: list[str], surveyed: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Per table, the hindsight oracle's schedule per seed minus the constant the same reward picks,
    both chosen on the reward split and scored on GLUE dev, for each reward of GLANCE_REWARDS, and
    (metric_gain) minus the best open-loop schedule instead (what adapting to the seed adds), with
    its interval and what the interval resamples (kdenv.benchmark.outofsample.reward_to_dev; each table's
    outputs read once). ``surveyed``: rows of ``survey``, whose reward → dev figures are taken as they
    stand instead of computed again."""
    from kdenv.benchmark.outofsample import read_outputs, reward_to_dev, with_adapting
    from kdenv.benchmark.table import resolve_table

    known = {row["table"]: row for row in surveyed or [] if row.get("built")}
    rows = []
    for name in names:
        table = resolve_table(name)
        row: dict[str, Any] = {"table": name, "seeds": len(table.seeds), "knowledge": list(table.knowledge),
                               "phases": table.phases, "updates_per_phase": table.manifest["env"]["updates_per_phase"],
                               "student_layers": table.manifest.get("distill", {}).get("student_layers"),
                               "device": (table.manifest.get("device") or "cpu")}
        survey_row, read = known.get(name, {}), None
        for reward in GLANCE_REWARDS:
            surveyed = survey_row.get(SURVEY_KEYS[reward]) or {}
            figures = with_adapting(surveyed) if "reward_to_dev" in surveyed else None
            if figures is not None:
                row["resamples"] = "seeds, examples"
            else:
                read = read or read_outputs(table)
                figures, row["resamples"] = reward_to_dev(table, reward, read)
            row[reward] = None if not figures else figures["oracle"]
            if reward == "metric_gain":
                row["adapting"] = None if not figures else figures.get("adapting")
        rows.append(row)
    return rows


def glance_markdown(rows: list[dict[str, Any]]) -> str:
    def cell(figure: dict[str, Any] | None) -> str:
        return "n/a" if figure is None else with_interval(figure["mean"], figure["ci"])

    lines = ["| table | seeds | K types x P phases x U updates | chosen by metric_gain → dev | "
             "chosen by teacher_agreement → dev | adapting to the seed: oracle − best open-loop, metric_gain → dev | "
             "intervals resample |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        device = str(row["device"])
        where = "" if device.startswith("cpu") else f", {device.partition('(')[2].partition(')')[0] or device}"
        layers = f", {row['student_layers']}-layer student" if row.get("student_layers") else ""
        lines.append(f"| `{row['table']}` | {row['seeds']} | {len(row['knowledge'])} x {row['phases']} x "
                     f"{row['updates_per_phase']}{layers}{where} | {cell(row['metric_gain'])} | "
                     f"{cell(row['teacher_agreement'])} | {cell(row.get('adapting'))} | {row['resamples']} |")
    return "\n".join(lines) + "\n"


def switch_effects(table: Table, read: Any | None = None, reward: str = "metric_gain") -> dict[str, Any] | None:
    """Which of the best open-loop schedule's departures from the best constant pays (both chosen by
    ``reward`` on the reward split over all seeds, as ``FoldView`` chooses them), scored on dev, paired by
    seed: per phase where they differ, the schedule minus the same schedule with that phase set back to
    the constant's action (what the switch adds given the rest), and the constant with only that phase
    switched minus the constant (the switch alone). Intervals resample seeds and, where the table keeps dev
    outputs (``read``: ``outofsample.read_outputs``), dev examples. None without dev at every leaf."""
    from kdenv.benchmark.outofsample import dev_metric_draws
    from kdenv.benchmark.protocol import FoldView
    from kdenv.stats import bootstrap_interval, bootstrap_interval_with_examples

    view = FoldView(table, reward)
    dev = all_dev_metrics(table, view.sequences)
    if dev is None or np.isnan(dev).any():
        return None
    draws = (dev_metric_draws(table, read.labels, stacked=read.stacked)
             if read is not None and read.stacked is not None and read.stacked.dev is not None else None)
    column = {tuple(sequence): index for index, sequence in enumerate(view.sequences)}
    schedule = tuple(view.sequences[view.best_open_loop(table.seeds)])
    constant = tuple(view.sequences[view.best_constant(table.seeds)])
    names = subset_names(list(table.knowledge))

    def paired(a: tuple[int, ...], b: tuple[int, ...]) -> dict[str, Any]:
        values = dev[:, column[a]] - dev[:, column[b]]
        interval = (bootstrap_interval_with_examples([[np.array([d[row, column[a]] - d[row, column[b]]])
                                                       for row in range(len(table.seeds))] for d in draws])
                    if draws else bootstrap_interval([[value] for value in values]))
        return {"mean": float(values.mean()), "ci": interval, "n": len(values)}

    phases = []
    for phase, (action, base) in enumerate(zip(schedule, constant)):
        if action == base:
            continue
        back = schedule[:phase] + (base,) + schedule[phase + 1:]
        alone = constant[:phase] + (action,) + constant[phase + 1:]
        phases.append({"phase": phase + 1, "switch": f"{names[base]} → {names[action]}",
                       "given_the_rest": paired(schedule, back), "alone": paired(alone, constant)})
    return {"schedule": " → ".join(names[a] for a in schedule), "constant": " → ".join(names[a] for a in constant),
            "whole": paired(schedule, constant), "phases": phases,
            "resamples": "seeds, dev examples" if draws else "seeds"}


def switch_sentence(effects: dict[str, Any] | None) -> str:
    if not effects or not effects["phases"]:
        return ""

    parts = [f"phase {entry['phase']}'s {entry['switch']} adds {ci_text(entry['given_the_rest'])} given the rest "
             f"(alone: {ci_text(entry['alone'])})" for entry in effects["phases"]]
    return (f"Which switch pays, on dev (the best open-loop schedule, {effects['schedule']}, against the best constant, "
            f"{effects['constant']}: {ci_text(effects['whole'])}; paired by seed, intervals over "
            f"{effects['resamples']}, n = {effects['whole']['n']}): " + "; ".join(parts) + ".")


def _main(argv: list[str]) -> int:
    """For bench/regime_builds.sh: ``names``, ``flags NAME`` or ``seeds NAME``, printed."""
    if argv == ["names"]:
        print(" ".join(entry.name for entry in REGIMES))
    elif len(argv) == 2 and argv[0] in ("flags", "seeds"):
        try:
            entry = regime(argv[1])
        except KeyError as error:
            print(f"error: {error.args[0]}", file=sys.stderr)
            return 2
        print(entry.build_flags() if argv[0] == "flags" else entry.seeds)
    else:
        print("usage: python -m kdenv.benchmark.regimes names | flags NAME | seeds NAME", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
