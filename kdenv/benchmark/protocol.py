"""The evaluation protocol of the schedule tables: k-fold cross-validation over episode seeds,
scores against the exact optimum, and bootstrap 95% confidence intervals.

Every seed of a table is held out once: the seeds are dealt into ``k`` folds (seed i goes to fold
i mod k), and a policy is chosen or trained on the other folds and scored on the held-out one.
Whatever is chosen (the best constant, the best open-loop schedule, an agent's hyperparameters)
is chosen on the train folds only. Per held-out seed and agent seed a policy gets:

- **regret**: the seed's oracle return minus the policy's;
- **normalised regret**: regret divided by the headroom of that seed over the best constant chosen
  on the train folds: 0 at the oracle, 1 at that constant (undefined, and left out, where the
  constant is already optimal);
- **gain** over that constant (its return on the held-out seed), and the **probability of
  improvement**: the share of (held-out seed, agent seed) pairs where the policy's return beats the
  constant's, ties counting one half;
- **share of the closed-loop headroom**: the policy's mean gain over that constant divided by the
  closed-loop bound's mean gain over it on the same held-out seeds (1 for a policy as good as the
  best seed-blind closed-loop policy; a ratio of means, bootstrapped with both drawn on the same
  seeds).

Intervals are percentile bootstrap 95% intervals from a two-level (hierarchical) bootstrap:
resample held-out seeds with replacement, then agent seeds within each drawn seed. The
instances (seeds) are the main source of uncertainty here, so they are resampled, not held fixed
as a stratified bootstrap over runs within each instance would (rliable's); policies without agent
seeds resample seeds alone. The interquartile mean (IQM: the mean of the middle 50% of values,
pooled over seeds and agent seeds) and the mean are reported, with the number of seeds and agent
seeds behind each. Plain numpy: rliable caps ``arch`` below 8 and brings statsmodels and seaborn
for these few lines, and scipy's bootstrap resamples samples independently, with no two-level
scheme.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdenv.benchmark.oracle import action_names, all_returns, closed_loop, constant_columns, policy_schedule
from kdenv.benchmark.table import Table
from kdenv.stats import bootstrap_interval_with_examples, bootstrap_ratio, improvement, summarise


def folds(seeds: list[int], k: int) -> list[list[int]]:
    """The seeds dealt into ``k`` folds (seed i of the sorted list goes to fold i mod k)."""
    seeds = sorted(seeds)
    if not 2 <= k <= len(seeds):
        raise ValueError(f"k-fold over {len(seeds)} seeds needs 2 <= k <= {len(seeds)}, not {k}")
    return [seeds[i::k] for i in range(k)]


@dataclass
class FoldView:
    """What the train folds of one split choose, and what every seed of the table can get."""

    table: Table
    reward: str
    sequences: list[tuple[int, ...]] = field(init=False)
    returns: np.ndarray = field(init=False)  # [seeds, sequences]

    def __post_init__(self) -> None:
        self.sequences, self.returns = all_returns(self.table, self.reward)
        self.row = {seed: row for row, seed in enumerate(self.table.seeds)}
        self.constants = constant_columns(self.table, self.sequences)

    def best_constant(self, train: list[int]) -> int:
        rows = [self.row[s] for s in train]
        return max(self.constants, key=lambda column: self.returns[rows, column].mean())

    def best_open_loop(self, train: list[int]) -> int:
        return int(self.returns[[self.row[s] for s in train]].mean(axis=0).argmax())

    def oracle(self, seed: int) -> float:
        return float(self.returns[self.row[seed]].max())

    def value(self, seed: int, column: int) -> float:
        return float(self.returns[self.row[seed], column])


def score_policy(view: FoldView, splits: list[tuple[list[int], list[int]]],
                 returns: dict[int, np.ndarray], closed_loop: dict[int, float] | None = None) -> dict[str, Any]:
    """Scores of one policy from its returns on each held-out seed (an array over agent seeds, or
    one value), each seed judged against the best constant of the split that held it out. With
    ``closed_loop`` (the closed-loop bound's return on each seed), also the share of the closed-loop
    headroom over that constant the policy captures: its mean gain over the bound's."""
    regrets, normalised, gains, headrooms = {}, {}, {}, {}
    for train, test in splits:
        constant = view.best_constant(train)
        for seed in test:
            values = np.atleast_1d(np.asarray(returns[seed], dtype=np.float64))
            oracle, base = view.oracle(seed), view.value(seed, constant)
            if np.nanmax(values) > oracle + 1e-9:
                raise ValueError(f"a return of {np.nanmax(values):+.4f} on seed {seed} beats the oracle's {oracle:+.4f}: "
                                 f"these returns are not in {view.reward} (scored in another reward?)")
            regrets[seed] = oracle - values
            headroom = oracle - base
            normalised[seed] = (oracle - values) / headroom if headroom > 1e-12 else np.full(values.shape, np.nan)
            gains[seed] = values - base
            headrooms[seed] = closed_loop[seed] - base if closed_loop is not None else float("nan")
    # In the table's seed order (not fold by fold), as kdenv.stats.over_seeds resamples them: one
    # figure, one interval, wherever it is printed.
    seeds = sorted(gains)
    gains_list = [gains[s] for s in seeds]
    scores = {"return": summarise([np.atleast_1d(returns[s]) for s in seeds]),
              "regret": summarise([regrets[s] for s in seeds]), "normalised_regret": summarise([normalised[s] for s in seeds]),
              "gain": summarise(gains_list), "improvement": improvement(gains_list), "seeds": len(seeds),
              "agent_seeds": int(max(np.atleast_1d(r).size for r in returns.values()))}
    if closed_loop is not None:
        scores["closed_loop_share"] = bootstrap_ratio(gains_list, [headrooms[s] for s in seeds])
    return scores


def baseline_columns(view: FoldView, splits: list[tuple[list[int], list[int]]],
                     names: list[str]) -> dict[str, dict[int, int | None]]:
    """Each seed's schedule (a column of the view; None where a named policy's schedule is not a path
    of the table) under the baselines that play one schedule per seed: the oracle, the closed-loop
    bound of a seed-blind policy (over every seed), the best open-loop schedule and best constant
    (chosen on the train folds), every constant, and the named fixed policies (kd, gkd, ...)."""
    table, seeds = view.table, view.table.seeds
    rows: dict[str, dict[int, int | None]] = {"oracle": {s: int(view.returns[view.row[s]].argmax()) for s in seeds}}
    # Over every seed of the table, not per fold: every seed starts from the same observation, so a
    # seed-blind policy opens with one action for all of them, and a fold of one held-out seed
    # would let the bound open with that seed's own best action (the oracle).
    rows["closed-loop bound"] = dict(zip(seeds, closed_loop(table, view.sequences, view.returns)["columns"]))
    rows["best open-loop (train folds)"], rows["best constant (train folds)"] = {}, {}
    for train, test in splits:
        open_loop, constant = view.best_open_loop(train), view.best_constant(train)
        for seed in test:
            rows["best open-loop (train folds)"][seed] = open_loop
            rows["best constant (train folds)"][seed] = constant
    names_of = action_names(table)
    for action, column in enumerate(view.constants):
        rows[f"constant {names_of[action]}"] = {s: column for s in seeds}
    position = {sequence: column for column, sequence in enumerate(view.sequences)}
    for name in names:
        rows[name] = {seed: position.get(tuple(policy_schedule(table, name, seed))) for seed in seeds}
    return rows


def baseline_returns(view: FoldView, splits: list[tuple[list[int], list[int]]], names: list[str]) -> dict[str, dict]:
    """Each seed's return under the baselines that need no training: those of
    :func:`baseline_columns`, and after the oracle the random schedule (the exact mean over all
    schedules: Random-Hard)."""
    rows: dict[str, dict[int, float]] = {}
    for name, columns in baseline_columns(view, splits, names).items():
        rows[name] = {seed: view.value(seed, column) if column is not None else float("nan")
                      for seed, column in columns.items()}
        if name == "oracle":
            rows["random schedule (exact mean)"] = {s: float(view.returns[view.row[s]].mean()) for s in view.table.seeds}
    return rows


def score_on_dev(view: FoldView, splits: list[tuple[list[int], list[int]]], dev: np.ndarray,
                 columns: dict[int, Any], dev_draws: list[np.ndarray] | None = None) -> dict[str, Any]:
    """One policy scored out of sample: the dev metric ([seeds, schedules], the view's order) of the
    schedule it plays on each held-out seed (a column, or an array of columns over agent seeds),
    minus that of the constant the reward chose on the train folds that held the seed out. Chosen on
    the reward split, scored on GLUE dev; intervals resample seeds and agent seeds, and with
    ``dev_draws`` (the same matrix on resamples of the dev examples) the examples as well."""
    def per_seed(matrix: np.ndarray) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        values, gains = {}, {}
        for train, test in splits:
            constant = view.best_constant(train)
            for seed in test:
                row = view.row[seed]
                played = matrix[row, np.atleast_1d(np.asarray(columns[seed], dtype=np.int64))].astype(np.float64)
                values[seed], gains[seed] = played, played - float(matrix[row, constant])
        return values, gains

    values, gains = per_seed(dev)
    seeds = sorted(gains)
    scores = {"dev": summarise([values[s] for s in seeds]), "gain": summarise([gains[s] for s in seeds]),
              "improvement": improvement([gains[s] for s in seeds]), "seeds": len(seeds),
              "agent_seeds": int(max(values[s].size for s in seeds)), "resamples": "seeds, agent seeds"}
    if dev_draws:
        drawn = [per_seed(matrix) for matrix in dev_draws]
        scores["dev"]["mean_ci"] = bootstrap_interval_with_examples([[v[s] for s in seeds] for v, _ in drawn])
        scores["gain"]["mean_ci"] = bootstrap_interval_with_examples([[g[s] for s in seeds] for _, g in drawn])
        scores["resamples"] = "seeds, agent seeds, dev examples"
    return scores


def fold_splits(seeds: list[int], k: int) -> list[tuple[list[int], list[int]]]:
    """(train seeds, held-out seeds) of each fold."""
    return [([s for s in seeds if s not in fold], fold) for fold in folds(seeds, k)]
