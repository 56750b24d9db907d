"""The regime built to scale (issue 34, section 5): its headline figures as the table grew, seed by
seed (docs/history.md), and docs/benchmark.md's paragraph and table on it, written by
``agents/regimes.py --docs`` from the survey (kdenv.benchmark.regimes) and the leaderboard's protocol
(kdenv.benchmark.board)."""

from __future__ import annotations

from typing import Any

from kdenv.benchmark.board import REPORT_REWARD, rows_on_dev
from kdenv.benchmark.oracle import subset_names
from kdenv.benchmark.outofsample import read_outputs, reward_to_dev
from kdenv.benchmark.protocol import FoldView, fold_splits
from kdenv.benchmark.regimes import GLANCE_REWARDS, SURVEY_KEYS, figure_at, switch_sentence
from kdenv.benchmark.table import Table
from kdenv.stats import ci_text

# The regime built to scale (issue 34, section 5): the one whose figures docs/history.md follows seed by seed.
AT_SCALE = "stsb_k2_u128"
FIRST_ROW = 4  # the seed-by-seed table starts where the survey's 4 seeds ended


def seed_by_seed(table: Table, first: int = FIRST_ROW, k: int = 4, data_dir: str | None = None) -> list[dict[str, Any]]:
    """The headline figures as the table grew: for n = ``first`` ... all its seeds, computed on its first
    n seeds as if it held no others (``Table.with_seeds``): per reward of GLANCE_REWARDS, the oracle's
    schedule minus the constant the same reward picks, both chosen on the reward split and scored on
    dev; and the fixed schedule the train folds choose (k folds, the board's reward) scored on dev on
    the held-out seeds, with the schedules the folds chose by either reward and how many seeds it is
    better on. The figures are those the leaderboard and the survey print for a table of n seeds."""
    rows = []
    names = subset_names(list(table.knowledge))
    for n in range(first, len(table.seeds) + 1):
        part = table.with_seeds(table.seeds[:n])
        read = read_outputs(part, data_dir)
        row: dict[str, Any] = {"seeds": n, "resamples": read.resamples}
        for reward in GLANCE_REWARDS:
            figures, _ = reward_to_dev(part, reward, read)
            row[reward] = None if not figures else figures["oracle"]
        splits = fold_splits(part.seeds, k)
        views = {reward: FoldView(part, reward) for reward in {*GLANCE_REWARDS, REPORT_REWARD}}
        on_dev = rows_on_dev(views[REPORT_REWARD], splits, [], {}, None, read) or {}
        fixed = on_dev.get("best open-loop (train folds)")
        row["fixed"] = None if fixed is None else {**fixed["gain"], "better": fixed["improvement"]["value"],
                                                    "seeds": fixed["seeds"]}
        row["fixed_choices"] = sorted({" → ".join(names[a] for a in view.sequences[view.best_open_loop(train)])
                                       for view in (views[reward] for reward in GLANCE_REWARDS)
                                       for train, _ in splits})
        rows.append(row)
    return rows


def seed_by_seed_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| seeds | oracle, `metric_gain` → dev | oracle, `teacher_agreement` → dev | "
             "best fixed schedule, train folds → dev (seeds better) |", "|---|---|---|---|"]
    for row in rows:
        fixed = row["fixed"]
        better = "" if fixed is None else f" ({round(fixed['better'] * fixed['seeds'])} of {fixed['seeds']})"
        lines.append(f"| {row['seeds']} | {ci_text(row['metric_gain'])} | {ci_text(row['teacher_agreement'])} | "
                     f"{ci_text(fixed)}{better} |")
    choices = sorted({choice for row in rows for choice in row["fixed_choices"]})
    return "\n".join(lines) + (f"\n\nThe fixed schedules the folds chose, by either reward, over these rows: {' or '.join(choices)}. "
                               f"Intervals resample {rows[-1]['resamples']}.\n" if rows else "\n")


def side_of_zero(interval) -> str:
    """Where a 95% interval lies as printed (4 decimals: +0.0000 is not above 0): "above", "below" or "holds"."""
    low, high = (round(float(end), 4) for end in interval)
    return "above" if low > 0 else "below" if high < 0 else "holds"


def clears_zero(figure: dict[str, Any] | None) -> bool:
    """Whether an interval's lower end is above 0 as printed (4 decimals: +0.0000 does not clear it)."""
    return figure is not None and figure.get("ci") is not None and side_of_zero(figure["ci"]) == "above"


def adaptive_sentence(row: dict[str, Any]) -> str:
    """What adapting to the seed adds over the best fixed schedule on a surveyed regime (``out_of_sample``'s
    ``over_open_loop``, metric_gain), in words that follow the intervals."""
    over = (row.get("out_of_sample") or {}).get("over_open_loop") or {}
    to_dev, halves = (over.get(figure, {}).get("oracle") for figure in ("reward_to_dev", "dev_halves"))
    if to_dev is None or halves is None:
        return ""

    def verdict(figure: dict[str, Any]) -> str:
        return {"above": "adds", "below": "loses", "holds": "adds nothing measurable"}[side_of_zero(figure["ci"])]

    return (f" Adapting the schedule to the seed {verdict(to_dev)} over one fixed schedule: the oracle's per-seed "
            f"choice minus the best open-loop schedule, both chosen by `metric_gain` on the reward split and scored "
            f"on dev, {ci_text(to_dev)} (paired; {to_dev['n']} seeds); chosen per seed on "
            f"half of dev and scored on the other half (a hindsight choice no policy can make), "
            f"{ci_text(halves)}.")


def scale_figures_markdown(row: dict[str, Any]) -> str:
    """docs/benchmark.md's table of the regime at scale (a survey row): per reward, each choice made on
    the reward split and scored on dev, minus the constant the same reward picks; the oracle cross-fitted
    on the reward split's halves; what adapting to the seed adds; then the student, how the rewards rank
    and what dev itself prefers."""
    first = row.get("out_of_sample") or {}
    if "reward_to_dev" not in first:
        return f"`{row['table']}` keeps no dev outputs at its leaves: nothing to score on dev.\n"

    lines = [f"| reward ({first['reward_examples']} examples) → dev ({first['dev_examples']}) | oracle (per seed) | "
             "closed-loop bound | best open-loop | oracle, cross-fitted on halves of the reward split "
             f"({first['half_size']}) | oracle − best open-loop (paired) |", "|---|---|---|---|---|---|"]
    for reward, key in SURVEY_KEYS.items():
        oos = row.get(key) or {}
        to_dev = oos.get("reward_to_dev") or {}
        lines.append(f"| `{reward}` | {ci_text(to_dev.get('oracle'))} | {ci_text(to_dev.get('closed_loop'))} | "
                     f"{ci_text(to_dev.get('open_loop'))} | {ci_text((oos.get('crossfit') or {}).get('oracle'))} | "
                     f"{ci_text(figure_at(oos, ('over_open_loop', 'reward_to_dev', 'oracle')))} |")
    versus, prefers, spearman = row.get("student_vs_teacher"), row.get("dev_prefers"), row.get("reward_dev_spearman")
    n = len(row["seeds"])
    notes = [f"n = {n} seeds; intervals resample seeds, reward examples and dev examples."]
    if versus and versus.get("teacher"):
        notes.append(f"The constant `metric_gain` picks reaches dev {versus['metric']} {ci_text(versus['student'])} (its "
                     f"teacher {versus['teacher']:.4f}; {versus['ratio']:.2f} of it).")
    if spearman:
        notes.append("Reward and dev rank a seed's schedules alike: Spearman " + ", ".join(
            f"`{reward}` {value:+.2f}" for reward, value in spearman.items() if value is not None) + " (mean over seeds).")
    halves = figure_at(first, ("dev_halves", "oracle"))
    if prefers and halves:
        notes.append(f"Dev's own best schedule is {prefers['named']} on {prefers['seeds']} of {n} seeds; chosen per seed "
                     f"on half of dev and scored on the other half, the oracle gains {ci_text(halves)} over the constant "
                     "(analysis only: nothing may choose by dev).")
    if row.get("switches"):
        notes.append(switch_sentence(row["switches"]))
    return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"


def scale_markdown(name: str, planned: int, rows: list[dict[str, Any]], surveyed: dict[str, Any] | None = None) -> str:
    """docs/benchmark.md's paragraph on the regime at scale, from its seed-by-seed rows (and, with its
    survey row ``surveyed``, what adapting to the seed adds over the fixed schedule)."""
    if not rows:
        return f"`{name}` holds fewer than {FIRST_ROW} seeds.\n"
    last, first = rows[-1], rows[0]

    def cleared(row: dict[str, Any]) -> str:
        which = [reward for reward in GLANCE_REWARDS if clears_zero(row[reward])]
        return {0: "neither", 1: f"only `{which[0]}`'s" if which else "", 2: "both"}[len(which)]

    runs: list[list[Any]] = []  # consecutive rows alike: [first seeds, last seeds, what cleared]
    for row in rows:
        what = cleared(row)
        if runs and runs[-1][2] == what:
            runs[-1][1] = row["seeds"]
        else:
            runs.append([row["seeds"], row["seeds"], what])
    story = ", ".join(f"at {a}{'' if a == b else f'–{b}'} {what}" for a, b, what in runs)
    fixed, at_first = last["fixed"], first["fixed"]
    choices = last["fixed_choices"]
    chosen = (f"{choices[0]}, in every fold, by either reward" if len(choices) == 1
              else f"the folds chose {' or '.join(choices)}")
    better = "n/a" if fixed is None else f"{round(fixed['better'] * fixed['seeds'])} of {fixed['seeds']}"
    def versus(figure: dict[str, Any] | None, key: str = "ci") -> str:  # the verb follows the interval
        interval = None if figure is None else figure.get(key)
        if interval is None:
            return "is scored against the constant at n/a"
        verb = {"above": "beats", "below": "loses to", "holds": "does not measurably beat"}[side_of_zero(interval)]
        return f"{verb} the constant"

    return (f"At {last['seeds']} of its {planned} planned seeds, the per-seed schedule that `teacher_agreement` (a reward "
            f"that reads no label) picks {versus(last['teacher_agreement'])} it picks on dev, "
            f"{ci_text(last['teacher_agreement'])}, and `metric_gain`'s pick {versus(last['metric_gain'])} it picks, "
            f"{ci_text(last['metric_gain'])}. Whether the lower ends clear 0 has moved as seeds "
            f"landed ({story}; [history.md](history.md), *seed by seed*). The best fixed schedule chosen by the reward "
            f"on other seeds ({chosen}) {versus(fixed, 'mean_ci')} "
            f"(better on {better} held-out seeds' dev), {ci_text(fixed)} ({last['seeds']} seeds, 4 folds; "
            f"{ci_text(at_first)} at {first['seeds']}), an interval that holds the choice fixed (it resamples "
            "seeds and dev examples, not the reward examples behind the choice)."
            + (adaptive_sentence(surveyed) if surveyed else "") + "\n")
