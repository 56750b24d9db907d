"""Exact answers from a table: the hindsight-optimal schedule of each seed, the best a seed-blind
policy that reads the observation can do (closed loop), the best open-loop schedule (one fixed
sequence for every seed), the best constant action, every named fixed policy, and the headroom an
adaptive schedule could have over the best constant one.

Returns are in reward units before ``reward_scale`` (for ``metric_gain`` exactly the final minus the
initial reward-split metric). A phase that crashed ends its episode with the crash penalty."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from kdenv.benchmark.table import Table
from kdenv.benchmark.table_env import KnowledgeSelectionTableEnv
from kdenv.config import crash_return
from kdenv.decision.policies import BASE_POLICIES, FixedPolicy
from kdenv.decision.schedules import rollout
from kdenv.stats import mean_std, over_seeds

CRASH_RETURN = crash_return()  # in task-reward units, as every return here (kdenv.config.crash_return)


def episode_return(table: Table, seed: int, schedule: tuple[int, ...], reward: str) -> float:
    """The return of a fixed action sequence on one seed's tree."""
    nodes, total, history = table.nodes[seed], 0.0, ()
    for action in schedule:
        history = (*history, int(action))
        node = nodes[history]
        if node["status"] != "ok":
            return total + CRASH_RETURN
        total += node["rewards"][reward]
        if node["terminal"]:
            break
    return total


def all_sequences(table: Table) -> list[tuple[int, ...]]:
    """Every full action sequence of the table, in one fixed order (the columns of all_returns)."""
    return list(itertools.product(range(table.num_actions), repeat=table.phases))


def constant_columns(table: Table, sequences: list[tuple[int, ...]]) -> list[int]:
    """The column of each constant schedule (the same action in every phase), by action."""
    return [sequences.index((action,) * table.phases) for action in range(table.num_actions)]


def all_returns(table: Table, reward: str) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """Every full action sequence and its return on every seed: ([sequence], [seeds × sequences])."""
    sequences = all_sequences(table)
    returns = np.array([[episode_return(table, seed, sequence, reward) for sequence in sequences]
                        for seed in table.seeds])
    return sequences, returns


def policy_schedule(table: Table, name: str, seed: int) -> tuple[int, ...]:
    """The subset sequence a named fixed policy plays on one seed's tree (weights rounded at 0.5)."""
    env = KnowledgeSelectionTableEnv(table, seeds=[seed])
    *_, (_, _, info) = rollout(env, FixedPolicy(name, env, seed=seed), options={"table_seed": seed})
    return tuple(info["history"])


def named_policies(table: Table) -> list[str]:
    deterministic = [name for name in BASE_POLICIES if not name.startswith("random")]
    usable = []
    for name in [*deterministic, *(f"only-{k}" for k in table.knowledge)]:
        try:
            policy_schedule(table, name, table.seeds[0])
        except ValueError:
            continue  # a recipe that needs knowledge this table does not offer
        usable.append(name)
    return usable


def dev_metric_name(table: Table) -> str | None:
    """The task's primary GLUE dev metric as the table's leaves record it (None without dev records)."""
    from kdenv.engine.tasks import TASKS

    leaf = next((leaf for seed in table.seeds for leaf in table.leaves(seed) if "dev" in leaf), None)
    if leaf is None:
        return None
    if table.task in TASKS and TASKS[table.task].primary_metric in leaf["dev"]:
        return TASKS[table.task].primary_metric
    return next(k for k in leaf["dev"] if k not in ("loss", "agreement"))


def all_dev_metrics(table: Table, sequences: list[tuple[int, ...]]) -> np.ndarray | None:
    """The GLUE dev metric at the end of every full sequence on every seed ([seeds × sequences];
    NaN where the episode crashed before its last phase), or None if the table has no dev records."""
    metric = dev_metric_name(table)
    if metric is None:
        return None
    dev = np.full((len(table.seeds), len(sequences)), np.nan)
    for row, seed in enumerate(table.seeds):
        nodes = table.nodes[seed]
        for column, sequence in enumerate(sequences):
            node = nodes.get(tuple(sequence))
            if node is not None and "dev" in node:
                dev[row, column] = node["dev"][metric]
    return dev


def _dev_of(dev: np.ndarray | None, columns) -> dict[str, float] | None:
    """Mean ± std over seeds of the dev metric of one column per seed (None without dev records)."""
    if dev is None:
        return None
    return mean_std([dev[row, column] for row, column in enumerate(columns)])


def closed_loop(table: Table, sequences: list[tuple[int, ...]], returns: np.ndarray,
                rows: list[int] | None = None) -> dict[str, Any]:
    """The best mean return over these seeds (rows of ``returns``) of a policy that reads the
    observation but cannot see the seed, as an agent plays. Seeds whose first observations are equal
    (every seed starts from the same student) must share the first action; after it, each seed may
    follow its best continuation. That is an upper bound on every such policy, and exactly
    reachable when the observations along those continuations tell the seeds apart (``exact``;
    otherwise two seeds would need different actions on one observation)."""
    rows = list(range(len(table.seeds))) if rows is None else list(rows)
    seeds = [table.seeds[row] for row in rows]
    groups: dict[tuple[float, ...], list[int]] = {}
    for index, seed in enumerate(seeds):
        groups.setdefault(tuple(table.nodes[seed][()]["observation"]), []).append(index)
    by_first = {action: [column for column, sequence in enumerate(sequences) if sequence[0] == action]
                for action in range(table.num_actions)}
    columns = [0] * len(rows)
    for members in groups.values():
        best = {action: [max(cols, key=lambda c: returns[rows[i], c]) for i in members] for action, cols in by_first.items()}
        first = max(best, key=lambda action: np.mean([returns[rows[i], c] for i, c in zip(members, best[action])]))
        for i, column in zip(members, best[first]):
            columns[i] = column
    per_seed = [float(returns[row, column]) for row, column in zip(rows, columns)]
    chosen: dict[tuple[float, ...], int] = {}
    exact = True
    for seed, column in zip(seeds, columns):
        sequence = sequences[column]
        for depth in range(1, table.phases):
            node = table.nodes[seed].get(tuple(sequence[:depth]))
            if node is None or node.get("status") != "ok" or node.get("terminal"):
                break
            action = chosen.setdefault(tuple(node["observation"]), sequence[depth])
            exact = exact and action == sequence[depth]
    return {"per_seed": per_seed, "return": mean_std(per_seed), "columns": columns,
            "schedules": [list(sequences[c]) for c in columns],
            "first_actions": sorted({sequences[c][0] for c in columns}), "exact": exact}


def solve(table: Table, reward: str) -> dict[str, Any]:
    """The oracle, the best open-loop and constant schedules, the named policies and the headroom;
    with each schedule's GLUE dev metric (analysis only) where the table records it."""
    sequences, returns = all_returns(table, reward)  # [seeds, sequences]
    dev = all_dev_metrics(table, sequences)
    seeds = table.seeds
    position = {sequence: column for column, sequence in enumerate(sequences)}
    oracle_index = returns.argmax(axis=1)
    open_loop = int(returns.mean(axis=0).argmax())
    constants = constant_columns(table, sequences)
    best_constant = constants[int(np.argmax([returns[:, i].mean() for i in constants]))]
    oracle = returns[np.arange(len(seeds)), oracle_index]
    loop = closed_loop(table, sequences, returns)
    # Out of sample: does the reward's headroom show on dev? Each choice made by the reward (the
    # oracle's schedule per seed, the closed loop's, the best open-loop and constant ones) scored
    # on the GLUE dev metric, minus the best constant's there, seed by seed (analysis only).
    rows = np.arange(len(seeds))
    chosen = {"oracle": oracle_index, "closed_loop": np.asarray(loop["columns"]),
              "open_loop": np.full(len(seeds), open_loop)}
    to_dev = None if dev is None else {name: dev[rows, columns] - dev[:, best_constant]
                                       for name, columns in chosen.items()}
    if to_dev is not None and any(np.isnan(values).any() for values in to_dev.values()):
        to_dev = None  # not every chosen leaf scored on dev
    policies = {}
    for name in named_policies(table):
        schedules = [policy_schedule(table, name, seed) for seed in seeds]
        per_seed = [episode_return(table, seed, schedule, reward) for seed, schedule in zip(seeds, schedules)]
        columns = [position.get(tuple(schedule)) for schedule in schedules]
        policies[name] = {"schedule": list(schedules[0]), "return": mean_std(per_seed), "per_seed": per_seed,
                          "dev": _dev_of(dev, columns) if None not in columns else None}
    return {
        "reward": reward,
        "seeds": seeds,
        "oracle": {"per_seed": oracle.tolist(), "return": mean_std(oracle),
                   "schedules": [list(sequences[i]) for i in oracle_index], "dev": _dev_of(dev, oracle_index)},
        "open_loop": {"schedule": list(sequences[open_loop]), "return": mean_std(returns[:, open_loop]),
                      "per_seed": returns[:, open_loop].tolist(), "dev": _dev_of(dev, [open_loop] * len(seeds))},
        "best_constant": {"schedule": list(sequences[best_constant]), "action": sequences[best_constant][0],
                          "return": mean_std(returns[:, best_constant]), "per_seed": returns[:, best_constant].tolist(),
                          "dev": _dev_of(dev, [best_constant] * len(seeds))},
        "constants": {str(sequences[i][0]): mean_std(returns[:, i]) for i in constants},
        "policies": policies,
        "headroom": over_seeds(oracle - returns[:, best_constant]),
        "open_loop_headroom": over_seeds(returns[:, open_loop] - returns[:, best_constant]),
        "closed_loop": loop,
        "closed_loop_headroom": over_seeds(np.array(loop["per_seed"]) - returns[:, best_constant]),
        "headroom_on_dev": None if to_dev is None else over_seeds(to_dev["oracle"]),
        "reward_to_dev": None if to_dev is None else {
            **{name: over_seeds(values) for name, values in to_dev.items()},
            # what adapting to the seed adds over one fixed schedule: the oracle's choice minus the open-loop one
            "adapting": over_seeds(to_dev["oracle"] - to_dev["open_loop"])},
    }


def dev_headroom(table: Table) -> dict[str, Any] | None:
    """The headroom measured on GLUE dev itself (analysis only: no agent may see dev): the
    hindsight-best schedule of each seed by dev, against the constant action best on dev on average."""
    sequences = all_sequences(table)
    dev = all_dev_metrics(table, sequences)
    if dev is None:
        return None
    best = np.nanargmax(dev, axis=1)
    constants = constant_columns(table, sequences)
    best_constant = constants[int(np.nanargmax([np.nanmean(dev[:, i]) for i in constants]))]
    oracle = dev[np.arange(len(table.seeds)), best]
    return {"dev_metric": dev_metric_name(table),
            "oracle": {"value": mean_std(oracle), "schedules": [list(sequences[i]) for i in best]},
            "best_constant": {"schedule": list(sequences[best_constant]), "value": mean_std(dev[:, best_constant])},
            "headroom": over_seeds(oracle - dev[:, best_constant]),
            "spread": mean_std(np.nanmax(dev, axis=1) - np.nanmin(dev, axis=1))}


def rank_correlation(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation; None where it is undefined (either side constant)."""
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def reward_dev_correlation(table: Table) -> dict[str, Any]:
    """Does the reward split measure what we care about? Spearman's rank correlation over leaves
    between the final reward-split metric and the GLUE dev metric, per seed and pooled. A seed
    whose leaves all share one reward-split metric (a coarse metric on a small split, such as F1
    on 128 examples) has no ranking to compare: its value is None, and ``constant`` names it."""
    metric = dev_metric_name(table)
    per_seed, constant, pooled_reward, pooled_dev = {}, [], [], []
    for seed in table.seeds:
        leaves = [leaf for leaf in table.leaves(seed) if "dev" in leaf]
        if not leaves:
            continue
        reward_values = [leaf["metric"] for leaf in leaves]
        dev_values = [leaf["dev"][metric] for leaf in leaves]
        per_seed[seed] = rank_correlation(reward_values, dev_values)
        if len(set(reward_values)) < 2:
            constant.append(seed)
        pooled_reward += reward_values
        pooled_dev += dev_values
    return {"dev_metric": metric, "per_seed": per_seed, "pooled": rank_correlation(pooled_reward, pooled_dev),
            "constant": constant}


def subset_names(knowledge: list[str]) -> list[str]:
    """Readable names of the 2^K subsets of ``knowledge``: '-' for none, else the types switched on."""
    names = []
    for index in range(2 ** len(knowledge)):
        on = [name for bit, name in enumerate(knowledge) if (index >> bit) & 1]
        names.append("+".join(on) if on else "-")
    return names


def action_names(table: Table) -> list[str]:
    """The table's actions by name (``subset_names`` of its knowledge)."""
    return subset_names(table.knowledge)
