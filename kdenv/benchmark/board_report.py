"""The leaderboard rendered: its Markdown page (the summary that answers first, each table's rows,
the across-tasks pairs) and its figure, from the board's data (:func:`kdenv.benchmark.board.build_board`).
Every figure is printed with its interval by :mod:`kdenv.stats`' one formatter."""

from __future__ import annotations

import io
from typing import Any

from kdenv.benchmark.board import AGENTS, CHOSEN_ROW, average_ranks, is_agent_row
from kdenv.stats import ci_text, improvement_text, share_text


def ci_summary(stats: dict[str, Any] | None) -> dict[str, Any] | None:
    """An oracle figure (mean, ci) as the board's summaries hold one (mean, mean_ci)."""
    return None if stats is None else {"mean": stats["mean"], "mean_ci": tuple(stats["ci"])}


def dev_text(stats: dict[str, Any] | None) -> str:
    """An out-of-sample oracle figure as the board prints it ("n/a" for a table without dev at its leaves)."""
    return ci_text(ci_summary(stats)) if stats else "n/a"


def excludes_zero(summary: dict[str, Any] | None) -> str:
    """Whether a mean's 95% interval lies above 0, below it, or holds it."""
    if summary is None:
        return "n/a"
    low, high = summary["mean_ci"]
    return "yes" if low > 0 else "no, below 0" if high < 0 else "no (holds 0)"


def chosen_text(chosen: dict[str, str]) -> str:
    """Which agent row each fold chose, as "a2c-paper: folds 1, 2, 4; dqn: fold 3" (folds numbered
    in the order of their held-out seeds)."""
    by_agent: dict[str, list[int]] = {}
    for number, agent in enumerate(chosen.values(), 1):
        by_agent.setdefault(agent, []).append(number)
    return "; ".join(f"{agent}: fold{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}"
                     for agent, numbers in by_agent.items())


def summary_lines(board: dict[str, Any]) -> list[str]:
    """The questions the board answers, per table: is there headroom over the best constant (its
    interval above 0)? How much of it could a seed-blind policy take (the closed-loop bound)? What
    do agents take on held-out seeds, their row chosen without looking at those seeds, and does its
    interval exclude 0? Across tasks: the same for agents played on a table they never trained on."""
    lines = ["## Summary", "",
             "Out of sample: the oracle's schedule per seed and the closed loop's, chosen by the reward split, minus the "
             "constant the reward split picks, all scored on GLUE dev (bootstrap 95% interval over seeds, and over "
             "dev and reward examples on tables that keep per-example outputs: the resamples column; analysis "
             "only, no policy sees dev; `python agents/oracle.py --table <table>` adds the cross-fitted figures for tables that keep "
             "outputs). In sample: the oracle's gain over the best constant chosen on the train folds, chosen and "
             "scored on the same reward examples, an upper bound that includes the winner's curse. Agents: the "
             f"\"{CHOSEN_ROW}\" row (for each fold, the agent row with the best mean return on the other "
             "folds' held-out seeds, played on the fold's own), so that picking the best row never looks at "
             "the seeds it is scored on; with one agent row trained, that row. Adapting to the seed: the oracle's "
             "schedule per seed minus the best open-loop schedule, both chosen by the reward split and scored on "
             "dev (paired): what choosing per seed adds over one fixed schedule.", "",
             "| table | seeds | out of sample: oracle, reward → dev | above 0? | closed loop, reward → dev | "
             "adapting to the seed: oracle − best open-loop, reward → dev | resamples | "
             "in sample: headroom (oracle; upper bound) | closed-loop bound (in sample) | agents | their gain | "
             "above 0? | their gain on dev (out of sample) | share of closed-loop headroom | P(improve) | n |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in board["tables"].items():
        rows = entry["rows"]
        oracle, closed = rows["oracle"]["gain"], rows["closed-loop bound"]["gain"]
        on_dev = entry.get("reward_to_dev") or {}
        line = (f"| {name} | {len(entry['seeds'])} | {dev_text(on_dev.get('oracle'))} | "
                f"{excludes_zero(ci_summary(on_dev.get('oracle')))} | {dev_text(on_dev.get('closed_loop'))} | "
                f"{dev_text(on_dev.get('adapting'))} | {entry.get('reward_to_dev_resamples', 'seeds')} | "
                f"{ci_text(oracle)} | {ci_text(closed)} |")
        trained = [row for row in rows if is_agent_row(row)]
        row = CHOSEN_ROW if CHOSEN_ROW in rows else trained[0] if trained else None
        if row is None:
            lines.append(line + " no agent row trained | | | | | | |")
            continue
        scores = rows[row]
        label = chosen_text(scores["chosen"]) if "chosen" in scores else row
        dev_scores = (entry.get("on_dev") or {}).get(row)
        lines.append(line + f" {label} | {ci_text(scores['gain'])} | {excludes_zero(scores['gain'])} | "
                     f"{ci_text(dev_scores['gain']) if dev_scores else 'n/a'} | "
                     f"{share_text(scores.get('closed_loop_share'))} | {improvement_text(scores['improvement'])} | "
                     f"{scores['seeds']} x {scores['agent_seeds']} |")
    cross = [(pair, rows) for pair, rows in board.get("cross", {}).items() if any(is_agent_row(row) for row in rows)]
    if cross:
        lines += ["", "Across tasks: agents trained on every seed of one table, played on every seed of another; the "
                  "row with the best mean gain (looking at the target's seeds: optimistic by that choice), against "
                  "the constant chosen on the source table (what one would pick without the target) and against "
                  "the target's own best constant (chosen on the seeds it is scored on: a high bar).", "",
                  "| source -> target | agents | gain over the source's constant | above 0? | gain over the target's "
                  "own constant | above 0? | P(improve) | n |", "|---|---|---|---|---|---|---|---|"]
    for pair, rows in cross:
        agents = {row: scores for row, scores in rows.items() if is_agent_row(row)}
        best = max(agents, key=lambda row: agents[row]["gain"]["mean"])
        scores = agents[best]
        lines.append(f"| {pair} | {best} (best of {len(agents)}) | {ci_text(scores['gain'])} | "
                     f"{excludes_zero(scores['gain'])} | {ci_text(scores['gain_target'])} | "
                     f"{excludes_zero(scores['gain_target'])} | {improvement_text(scores['improvement'])} | "
                     f"{scores['seeds']} x {scores['agent_seeds']} |")
    return [*lines, ""]


def markdown_text(board: dict[str, Any]) -> str:
    lines = ["# Leaderboard: knowledge schedules on the shipped tables", "",
             f"Made by `{board['command']}` from the shipped tables and the agent result files in "
             "[kdenv/results/leaderboard/](../kdenv/results/leaderboard/). Protocol: k-fold over each table's seeds (every seed "
             "held out once; anything chosen is chosen on the train folds); returns in reward-split metric gain "
             "before scaling. Intervals: two-level bootstrap 95% (held-out seeds resampled, then agent seeds "
             "within each). Normalised regret: 0 at the oracle, 1 at the best constant chosen on the train "
             "folds (seeds where that constant is already optimal are left out); P(improve): the share of "
             "(held-out seed, agent seed) pairs beating that constant, ties counting one half. Share of "
             "closed-loop headroom: mean gain over that constant divided by the closed-loop bound's (1: as good as "
             "the best seed-blind closed-loop policy; \"unbounded\" where too many resamples draw no headroom). "
             "n: held-out seeds x agent seeds.", ""]
    lines += summary_lines(board)
    ranks = average_ranks(board)
    if len(board["tables"]) > 1 and ranks:
        lines += [f"## Average rank over the {len(board['tables'])} tables", "",
                  "Each row's rank by mean return on each table (1: best; ties share their mean rank), averaged; "
                  "rows on every table only. A summary of the tables below, without an interval.", "",
                  "| policy | average rank |", "|---|---|",
                  *(f"| {row} | {rank:.2f} |" for row, rank in ranks.items()), ""]
    for name, entry in board["tables"].items():
        lines += [f"## {name}: {len(entry['seeds'])} seeds, {entry['k']} folds, P = {entry['phases']} phases x "
                  f"U = {entry['updates_per_phase']} updates, knowledge {entry['knowledge']}", "",
                  "| policy | return (mean) | regret (mean) | normalised regret (IQM) | gain over best constant "
                  "(mean) | P(improve) | share of closed-loop headroom | n |", "|---|---|---|---|---|---|---|---|"]
        ordered = sorted(entry["rows"].items(), key=lambda item: -(item[1]["return"]["mean"] or -1e9))
        for row, scores in ordered:
            lines.append(f"| {row} | {ci_text(scores['return'])} | {ci_text(scores['regret'])} | "
                         f"{ci_text(scores['normalised_regret'], 'iqm', 2)} | {ci_text(scores['gain'])} | "
                         f"{improvement_text(scores['improvement'])} | "
                         f"{share_text(scores.get('closed_loop_share'))} | {scores['seeds']} x {scores['agent_seeds']} |")
        if entry.get("on_dev"):
            lines += ["", "The same rows scored out of sample: the schedule each plays on a held-out seed, minus the "
                      "constant the reward chose on the train folds, both scored on GLUE dev (its metric after the "
                      "last phase; no row sees dev). Rows that play no one schedule per seed are left out. "
                      "Intervals resample "
                      f"{next(iter(entry['on_dev'].values())).get('resamples', 'seeds, agent seeds')}.", "",
                      "| policy | dev metric (mean) | gain over the reward's constant on dev (mean) | P(improve) | n |",
                      "|---|---|---|---|---|"]
            for row, scores in sorted(entry["on_dev"].items(), key=lambda item: -(item[1]["gain"]["mean"] or -1e9)):
                lines.append(f"| {row} | {ci_text(scores['dev'])} | {ci_text(scores['gain'])} | "
                             f"{improvement_text(scores['improvement'])} | {scores['seeds']} x {scores['agent_seeds']} |")
        missing = [spec.row for agent, spec in AGENTS.items() if agent not in entry.get("agents", {})]
        if missing:
            lines += ["", f"Not yet trained on this table: {', '.join(missing)} (`python agents/leaderboard.py "
                      f"--retrain --tables {name}`)."]
        lines.append("")
    for pair, rows in board.get("cross", {}).items():
        source, target = pair.split(" -> ")
        lines += [f"## Across tasks: trained on every seed of {source}, played on every seed of {target}", "",
                  f"Scored on {target} against its oracle and against the constant chosen on {source} (what one "
                  f"would pick without seeing {target}).", "",
                  f"| policy | return (mean) | regret (mean) | gain over that constant (mean) | P(improve) | gain over "
                  f"{target}'s own best constant (mean) | n |",
                  "|---|---|---|---|---|---|---|"]
        for row, scores in sorted(rows.items(), key=lambda item: -(item[1]["return"]["mean"] or -1e9)):
            lines.append(f"| {row} | {ci_text(scores['return'])} | {ci_text(scores['regret'])} | "
                         f"{ci_text(scores['gain'])} | {improvement_text(scores['improvement'])} | {ci_text(scores['gain_target'])} | "
                         f"{scores['seeds']} x {scores['agent_seeds']} |")
        lines.append("")
    return "\n".join(lines)


def figure_png(board: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(board["tables"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 5), squeeze=False)
    for axis, name in zip(axes[0], names):
        rows = [(row, s["gain"]) for row, s in board["tables"][name]["rows"].items() if s["gain"]["mean"] is not None]
        rows.sort(key=lambda item: item[1]["mean"])
        for y, (_row, gain) in enumerate(rows):
            low, high = gain["mean_ci"]
            axis.errorbar(gain["mean"], y, xerr=[[gain["mean"] - low], [high - gain["mean"]]], fmt="o", capsize=3)
        axis.set_yticks(range(len(rows)), [row[:38] for row, _ in rows], fontsize=7)
        axis.axvline(0.0, color="grey", lw=0.8)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("gain over the best constant (mean, 95% CI)", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
