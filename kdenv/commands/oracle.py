"""The exact answers a schedule table holds: is there anything for an agent to learn?

    python agents/oracle.py --table stsb
    python agents/oracle.py --table mrpc --rewards metric_gain,loss_decrease
    python agents/oracle.py --table path/to/a/table/folder

First, the headroom out of sample (every choice made on one set of examples and scored on
another): the reward's choices scored on GLUE dev; with a table that keeps per-example outputs
(kdenv.benchmark.outofsample), also cross-fitted on halves of the reward split (choose on one half,
score on the other), dev's own halves, and the winner's curse of the in-sample figure, with
intervals that resample seeds and examples (labels read from the GLUE files: --data-dir or
$KDENV_GLUE_DIR).

Then, for each reward variant, from the table alone (no model, no data):
  - the hindsight-optimal schedule of each seed (the oracle);
  - the closed loop: the best a policy that reads the observation but cannot see the seed can do
    (every seed starts from the same student, so the first action is one choice for all seeds);
  - the best open-loop schedule: one fixed sequence, best on average over seeds;
  - the best constant action, and every named fixed policy (kd, gkd, all, none, only-*, ramps);
  - the in-sample headroom: oracle minus best constant, chosen and scored on the same reward
    examples (an upper bound), mean with its bootstrap 95% interval over seeds (and the
    closed-loop and open-loop headroom);
  - whether the reward measures what we care about: Spearman's rank correlation over leaves
    between the final reward-split metric and the GLUE dev metric;
  - each schedule's GLUE dev metric, and the headroom measured on dev itself (hindsight-best
    schedule per seed by dev against the constant best on dev): analysis only, never a reward.

Returns are in reward units before scaling (metric_gain: final minus initial reward-split metric).
Writes runs/oracle/<table name>/: oracle.md, oracle.json and schedule heatmaps (oracle per seed,
open-loop, best constant).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from kdenv.benchmark.oracle import action_names, dev_headroom, reward_dev_correlation, solve
from kdenv.benchmark.outofsample import (
    HALVINGS,
    RESAMPLES,
    SCORED_REWARDS,
    ReadOutputs,
    StackedOutputs,
    out_of_sample,
    reward_curve,
    table_labels,
)
from kdenv.benchmark.outputs import OutputsError
from kdenv.benchmark.regimes import switch_effects, switch_sentence
from kdenv.benchmark.table import Table, resolve_table
from kdenv.cli import CLEAR_ERRORS, fail, run_main
from kdenv.decision.rewards import REWARDS
from kdenv.decision.schedules import heatmap_png
from kdenv.engine.data import DataError
from kdenv.io import check_writable, write_all
from kdenv.paths import runs_dir
from kdenv.stats import with_interval


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", required=True, metavar="NAME|PATH",
                        help="a shipped table's name (stsb, mrpc, stsb_h100_u8, ...: kdenv/tables/) or a table folder")
    parser.add_argument("--rewards", default=",".join(REWARDS), help=f"reward variants (default: all: {','.join(REWARDS)})")
    parser.add_argument("--output-dir", default=None, help="default runs/oracle/<table name>")
    parser.add_argument("--data-dir", default=None,
                        help="GLUE folder with the labels of a table that keeps outputs (default $KDENV_GLUE_DIR)")
    parser.add_argument("--halvings", type=int, default=HALVINGS,
                        help=f"random halvings of the examples for the cross-fitted figures (default {HALVINGS})")
    parser.add_argument("--reward-curve", action="store_true",
                        help="for a table that keeps outputs, also measure each reward as an instrument: how it ranks "
                             "a seed's schedules against GLUE dev, its split-half reliability and the dev gain of its "
                             "choice, as the reward split grows (reward_curve.md / .json; docs/benchmark.md)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES,
                        help=f"bootstrap resamples of seeds and examples for their intervals (default {RESAMPLES})")
    return parser.parse_args(argv)


def fmt(stats: dict[str, float]) -> str:
    return f"{stats['mean']:+.4f} ± {stats['std']:.4f}"


def fmt_ci(stats: dict[str, Any]) -> str:
    """A mean with its bootstrap 95% interval over seeds (and the spread, and how many seeds)."""
    return f"{with_interval(stats['mean'], stats['ci'])} (95% CI; std {stats['std']:.4f}, {stats['n']} seeds)"


def rho_text(value: float | None, constant_reward: bool = True) -> str:
    if value is not None:
        return f"{value:+.3f}"
    return f"undefined (the {'reward' if constant_reward else 'dev metric'} is constant over the leaves)"


def loop_kind(loop: dict) -> str:
    return "exact" if loop["exact"] else "upper bound: two seeds would need two actions on one observation"


def schedule_text(schedule, names) -> str:
    return " → ".join(names[a] for a in schedule)


def ci_cell(stats: dict[str, Any] | None) -> str:
    return with_interval(stats["mean"], stats["ci"]) if stats else "n/a"


CHOICE_COLUMNS = ("oracle", "closed_loop", "open_loop")


def out_of_sample_lines(table: Table, results: dict[str, dict], crossfit: dict[str, dict],
                        why_not: str | None) -> list[str]:
    """The headline: headroom over the best constant, each choice made on one set of examples and
    scored on another, with the in-sample figure below it, labelled as such."""
    lines = ["## Headroom out of sample", "",
             "Gain over the best constant of the oracle's schedule per seed, the closed loop's and the best open-loop "
             "schedule, each chosen on one set of examples and scored on another (mean over seeds [bootstrap 95% "
             f"interval], {len(table.seeds)} seeds). The in-sample rows choose and score on the same reward examples: "
             "an upper bound that includes the winner's curse, not a headroom.", "",
             "| reward | chosen on → scored on | intervals resample | oracle | closed loop | best open-loop |",
             "|---|---|---|---|---|---|"]

    def row(reward: str, label: str, resampled: str, figures: dict | None) -> None:
        if figures:
            lines.append(f"| {reward} | {label} | {resampled} | " +
                         " | ".join(ci_cell(figures.get(name)) for name in CHOICE_COLUMNS) + " |")

    for reward, result in results.items():
        fitted = crossfit.get(reward)
        if fitted and "reward_to_dev" in fitted:
            row(reward, f"reward split ({fitted['reward_examples']}) → dev ({fitted['dev_examples']}, from outputs)",
                "seeds, examples", fitted["reward_to_dev"])
            row(reward, "the same, minus the best open-loop schedule (paired): what adapting to the seed adds",
                "seeds, examples", fitted["over_open_loop"]["reward_to_dev"])
        else:
            row(reward, "reward split → dev (records)", "seeds", result.get("reward_to_dev"))
            if result.get("reward_to_dev"):
                row(reward, "the same, minus the best open-loop schedule (paired): what adapting to the seed adds",
                    "seeds", {"oracle": result["reward_to_dev"]["adapting"]})
        if fitted:
            row(reward, f"half the reward split ({fitted['half_size']}) → the other half; {fitted['halvings']} "
                "halvings", "seeds, examples", fitted["crossfit"])
            row(reward, f"in sample on a half ({fitted['half_size']}) (upper bound)", "seeds, examples",
                fitted["in_sample_half"])
            row(reward, "winner's curse: in sample on a half − cross-fitted", "seeds, examples",
                fitted["winners_curse"])
        row(reward, f"in sample: the whole reward split ({table.manifest.get('reward_split', {}).get('examples', '?')}) "
            "(upper bound)", "seeds",
            {"oracle": result["headroom"], "closed_loop": result["closed_loop_headroom"],
             "open_loop": result["open_loop_headroom"]})
    dev_halves = next((fitted["dev_halves"] for fitted in crossfit.values() if "dev_halves" in fitted), None)
    if dev_halves:
        lines += ["", "Do schedules differ on dev at all, whatever chooses them? Chosen on half of dev, scored on the "
                  "other half (analysis only; nothing may choose by dev): oracle " + ci_cell(dev_halves["oracle"]) +
                  ", closed loop " + ci_cell(dev_halves["closed_loop"]) + ", best open-loop " +
                  ci_cell(dev_halves["open_loop"]) + "; the oracle minus the best open-loop schedule (paired), " +
                  ci_cell(next(fitted["over_open_loop"]["dev_halves"]["oracle"] for fitted in crossfit.values()
                               if "dev_halves" in fitted)) + "."]
    if why_not:
        lines += ["", f"Cross-fitted figures: {why_not}"]
    return [*lines, ""]


def report(table: Table, results: dict[str, dict], correlation: dict, on_dev: dict | None,
           crossfit: dict[str, dict] | None = None, why_not: str | None = None, switches: dict | None = None) -> str:
    names = action_names(table)
    lines = [f"# Oracle: {table.task}, {len(table.seeds)} seeds, {table.phases} phases × "
             f"{table.manifest['env']['updates_per_phase']} updates, knowledge {table.knowledge}", "",
             f"Dev figures cover {dev_coverage(table)}; rewards and returns never read dev.", ""]
    lines += out_of_sample_lines(table, results, crossfit or {}, why_not)
    if switch_sentence(switches):
        lines += ["## Which switch pays", "", switch_sentence(switches), ""]
    lines += ["## In sample, and the schedules", ""]
    lines.append(f"Reward split vs GLUE dev ({correlation['dev_metric']}): Spearman over leaves, pooled "
                 f"{rho_text(correlation['pooled'])}; per seed " +
                 ", ".join(f"{seed}: {rho_text(value, seed in correlation['constant'])}"
                           for seed, value in correlation["per_seed"].items()) + ".")
    if correlation["constant"]:
        lines.append(f"Undefined on seed(s) {', '.join(map(str, correlation['constant']))}: every leaf ends with the same "
                     "reward-split metric there, so the reward cannot rank their schedules at all (a coarse metric "
                     "on a small reward split); read the continuous rewards (loss_decrease, log_loss) beside it.")
    if on_dev is not None:
        lines += ["", f"On GLUE dev itself (analysis only; {on_dev['dev_metric']} after the last phase): the "
                  f"hindsight-best schedule per seed reaches {fmt(on_dev['oracle']['value'])}, the constant best "
                  f"on dev on average ({schedule_text(on_dev['best_constant']['schedule'], names)}) "
                  f"{fmt(on_dev['best_constant']['value'])}: dev headroom {fmt_ci(on_dev['headroom'])}; best − worst "
                  f"schedule per seed {fmt(on_dev['spread'])}."]
    dev_name = correlation["dev_metric"] or "metric"

    def dev_cell(entry):
        return fmt(entry["dev"]) if entry.get("dev") else "n/a"

    for reward, result in results.items():
        lines += ["", f"## Reward `{reward}` (returns before scaling)", "",
                  f"| schedule | return (mean ± std over seeds) | dev {dev_name} | schedule (phase by phase) |",
                  "|---|---|---|---|",
                  f"| oracle (per seed, hindsight) | {fmt(result['oracle']['return'])} | {dev_cell(result['oracle'])} | "
                  "per seed below |",
                  f"| closed loop (seed-blind, reads the observation; {loop_kind(result['closed_loop'])}) | "
                  f"{fmt(result['closed_loop']['return'])} | | first "
                  f"{' / '.join(names[a] for a in result['closed_loop']['first_actions'])}, then per seed below |",
                  f"| best open-loop | {fmt(result['open_loop']['return'])} | {dev_cell(result['open_loop'])} | "
                  f"{schedule_text(result['open_loop']['schedule'], names)} |",
                  f"| best constant | {fmt(result['best_constant']['return'])} | {dev_cell(result['best_constant'])} | "
                  f"{schedule_text(result['best_constant']['schedule'], names)} |"]
        for name, policy in result["policies"].items():
            lines.append(f"| {name} | {fmt(policy['return'])} | {dev_cell(policy)} | "
                         f"{schedule_text(policy['schedule'], names)} |")
        lines += ["", f"In-sample headroom (oracle − best constant, chosen and scored on the same reward examples: an "
                  f"upper bound): {fmt_ci(result['headroom'])}; "
                  f"closed loop − best constant: {fmt_ci(result['closed_loop_headroom'])}; "
                  f"open-loop − best constant: {fmt_ci(result['open_loop_headroom'])}. The best constant here is "
                  "chosen on these same seeds (the leaderboard chooses it on train folds)."
                  + (f" On GLUE dev (analysis only), the oracle's schedules minus the best constant, both chosen by "
                     f"this reward: {fmt_ci(result['headroom_on_dev'])}." if result.get("headroom_on_dev") else ""), "",
                  "Closed-loop schedule per seed: " + "; ".join(
                      f"seed {seed}: {schedule_text(schedule, names)} ({value:+.4f})"
                      for seed, schedule, value in zip(result["seeds"], result["closed_loop"]["schedules"],
                                                       result["closed_loop"]["per_seed"])) + ".", "",
                  "Oracle schedule per seed: " + "; ".join(
                      f"seed {seed}: {schedule_text(schedule, names)} ({value:+.4f})"
                      for seed, schedule, value in zip(result["seeds"], result["oracle"]["schedules"],
                                                       result["oracle"]["per_seed"])) + "."]
    return "\n".join(lines) + "\n"


def signed(value: float | None) -> str:
    return "undefined" if value is None else f"{value:+.3f}"


def curve_text(curve: dict[str, Any]) -> str:
    """The reward curve (kdenv.benchmark.outofsample.reward_curve) as a markdown section."""
    lines = ["## The reward as an instrument", "",
             f"Per reward and reward-split size n: Spearman's correlation over a seed's schedules between the reward's "
             f"return on n random reward examples and the dev metric on all {curve['dev_examples']} dev examples "
             "(agreement), between the returns on two disjoint draws of n (reliability), and the dev gain of the "
             f"schedule the reward picks per seed over the constant it picks; means over {curve['seeds']} seeds and "
             f"{curve['draws']} draws [2.5%, 97.5% of the draws]; undefined where every schedule ties. Dev's own "
             f"split-half reliability, the ceiling: {signed(curve['dev_reliability'])}.", "",
             "| reward | n | agreement with dev | reliability | dev gain of its choice |", "|---|---|---|---|---|"]
    for row in curve["rows"]:
        agreement = "undefined" if row["agreement"] is None else (
            with_interval(row['agreement'], row['agreement_ci'], digits=3))
        reliability = "n/a (2n > split, or ties)" if row["reliability"] is None else f"{row['reliability']:+.3f}"
        lines.append(f"| {row['reward']} | {row['examples']} | {agreement} | {reliability} | "
                     f"{with_interval(row['to_dev'], row['to_dev_ci'])} |")
    return "\n".join(lines) + "\n"


def dev_coverage(table: Table) -> str:
    """What a table's GLUE dev figures were computed on (its build's recorded choice)."""
    recorded = table.manifest.get("dev_scoring")
    return recorded["described"] if recorded else "every leaf on the whole dev split (built before the choice was recorded)"


def one_hot(schedule: list[int], table: Table) -> np.ndarray:
    return np.array([[float((a >> bit) & 1) for bit in range(len(table.knowledge))] for a in schedule])


@run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        table = resolve_table(args.table)
        rewards = [name.strip() for name in args.rewards.split(",") if name.strip()]
        unknown = [name for name in rewards if name not in REWARDS]
        if unknown or not rewards:
            raise ValueError(f"unknown rewards {unknown}; registered: {', '.join(REWARDS)}")
        if args.halvings < 1 or args.resamples < 10:
            raise ValueError(f"--halvings must be >= 1 and --resamples >= 10, not {args.halvings} and {args.resamples}")
        out = Path(args.output_dir) if args.output_dir else runs_dir() / "oracle" / table.directory.name
        check_writable(out)
    except CLEAR_ERRORS as error:
        return fail(error)
    results = {reward: solve(table, reward) for reward in rewards}
    correlation = reward_dev_correlation(table)
    on_dev = dev_headroom(table)
    crossfit, why_not, read = {}, None, None
    if not table.has_outputs:
        why_not = ("this table keeps no per-example outputs (built before kdenv kept them); only the reward → dev "
                   "figure above is out of sample. Tables built now keep them (agents/build_tree.py).")
    else:
        try:
            labels = table_labels(table.manifest, args.data_dir)
            stacked = StackedOutputs.of(table)  # once: every reward's figures and the switch effects read it
            crossfit = {reward: out_of_sample(table, labels, reward, args.halvings, args.resamples, stacked=stacked)
                        for reward in rewards if reward in SCORED_REWARDS}
            read = ReadOutputs(labels, stacked, "seeds, examples")
        except (OutputsError, DataError) as error:
            why_not = f"not computed: {error}"
    switches = switch_effects(table, read)
    text = report(table, results, correlation, on_dev, crossfit, why_not, switches)
    curve = None
    if args.reward_curve:
        if not crossfit:
            return fail(ValueError(f"--reward-curve needs a table that keeps outputs and its labels: {why_not}"))
        curve = reward_curve(table, labels)
        text += "\n" + curve_text(curve)
    print(text)
    primary = results[rewards[0]]
    images = {f"oracle_seed{seed}": schedule for seed, schedule in zip(primary["seeds"], primary["oracle"]["schedules"])}
    images["open_loop"] = primary["open_loop"]["schedule"]
    images["best_constant"] = primary["best_constant"]["schedule"]
    data = {"table": str(table.directory), "manifest": table.manifest, "results": results,
            "out_of_sample": crossfit, "out_of_sample_missing": why_not, "reward_dev_correlation": correlation,
            "dev_headroom": on_dev, "switches": switches, "action_names": action_names(table)}
    files = {out / "oracle.md": text.encode(), out / "oracle.json": json.dumps(data, indent=2).encode(),
             **({out / "reward_curve.json": json.dumps(curve, indent=2).encode()} if curve is not None else {}),
             **{out / f"{name}.png": heatmap_png(one_hot(schedule, table), table.knowledge,
                                                 f"{table.task}: {name} ({rewards[0]})")
                for name, schedule in images.items()}}
    write_all(files)  # the report's set, all or nothing
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
