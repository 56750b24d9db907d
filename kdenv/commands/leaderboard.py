"""The leaderboard of knowledge schedules on the shipped tables, with bootstrap 95% intervals.

    python agents/leaderboard.py                       # docs/leaderboard.{md,json,png} from tables + results (minutes)
    python agents/leaderboard.py --retrain --dry-run   # what retraining every agent row would cost
    python agents/leaderboard.py --retrain             # retrain the agent rows, then write the leaderboard

The protocol (kdenv/benchmark/protocol.py): k-fold over each table's seeds, every seed held out
once; whatever a row chooses (the best constant, the best open-loop schedule, an agent's training)
it chooses on the train folds. Rows: the oracle, the closed-loop bound of a seed-blind policy (over
all the table's seeds), the
best open-loop schedule and best constant (train folds), the random schedule (the exact mean over
all schedules: the knowledge-selection paper's Random-Hard), every constant, kd and gkd (and the
other named fixed policies), and the agents: A2C, PPO and DQN with the shipped default
hyperparameters; the same three tuned inside each fold (an Optuna search of --tune-trials trials
on the fold's train seeds only, kdenv/benchmark/tuning.py; the held-out seeds never steer it);
and A2C in the knowledge-selection paper's setting as closely as a table allows (actor-critic,
the loss-decrease reward, a count-based exploration bonus). Columns per table:
return, regret, normalised regret (0 at the oracle, 1 at the best constant), gain over the best
constant, probability of improving on it, the share of the closed-loop headroom captured (gain
over the constant divided by the closed-loop bound's); mean or IQM with two-level bootstrap 95%
intervals, and how many held-out seeds and agent seeds stand behind each.

Agent rows come from small result files (one per table and agent configuration, in
docs/leaderboard/results/: every held-out seed's return for every agent seed), written by
--retrain and committed, so that the leaderboard is rebuilt in minutes without training. A result
file is used only for the table it was trained on (its seed files' checksums are recorded).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdenv.benchmark import tuning
from kdenv.benchmark.oracle import named_policies, solve
from kdenv.benchmark.protocol import FoldView, baseline_returns, fold_splits, score_policy
from kdenv.benchmark.stats import improvement, summarise
from kdenv.benchmark.study import TableStudy
from kdenv.benchmark.table import Table, TableError, available_tables, resolve_table
from kdenv.cli import fail, run_main
from kdenv.config import ConfigError
from kdenv.decision.algorithms import get_algorithm, load_hyperparams
from kdenv.io import atomic_write, write_all
from kdenv.jobs import JobError, JobRunner, add_job_arguments


@dataclass(frozen=True)
class AgentRow:
    """One agent row: its name on the board, the algorithm, the reward it trains on, the
    exploration bonus, and whether its hyperparameters are tuned (inside each fold's train seeds)
    or the shipped defaults."""

    row: str
    algo: str
    reward: str = "metric_gain"
    bonus: float = 0.0
    tuned: bool = False


AGENTS = {
    "a2c": AgentRow("A2C", "a2c"),
    "ppo": AgentRow("PPO", "ppo"),
    "dqn": AgentRow("DQN", "dqn"),
    "a2c-tuned": AgentRow("A2C, tuned in each fold", "a2c", tuned=True),
    "ppo-tuned": AgentRow("PPO, tuned in each fold", "ppo", tuned=True),
    "dqn-tuned": AgentRow("DQN, tuned in each fold", "dqn", tuned=True),
    "a2c-paper": AgentRow("A2C, paper setting (loss_decrease reward, exploration bonus 0.1)", "a2c", "loss_decrease",
                          0.1),
}
ALL_SEEDS = "all"  # the tuning key of agents trained on every seed of a table (the across-tasks column)
NAMED = ["kd", "gkd", "all", "none"]
REPORT_REWARD = "metric_gain"  # every row is scored on the table's own metric gain


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--tables", default=None, metavar="A,B",
        help="tables to rank on (names or folders; default: the shipped CPU tables and the H100 U=8 table)")
    add("--k", type=int, default=4, help="folds over each table's seeds (default 4; every seed held out once)")
    add("--retrain", action="store_true", help="train the agent rows afresh (resumable), then write the leaderboard")
    add("--dry-run", action="store_true", help="with --retrain: print the projected cost and stop")
    add("--agents", default=",".join(AGENTS), help=f"agent rows to retrain, comma list of {', '.join(AGENTS)} "
        "(default: all)")
    add("--agent-seeds", type=int, default=5, help="agent seeds per fold (default 5)")
    add("--episodes", type=int, default=3000,
        help="training episodes per agent (default 3000: tables x folds x agent seeds x agents is many agents)")
    add("--tune-trials", type=int, default=12,
        help="tuned rows: Optuna trials per fold, each on the fold's train seeds only (default 12)")
    add("--tune-agents", type=int, default=2,
        help="tuned rows: agents per trial, of --episodes episodes each; their mean train-seed return is the "
             "objective (default 2)")
    add("--results-dir", default="docs/leaderboard/results", help="where agent result files live (committed)")
    add("--output", default="docs/leaderboard", help="leaderboard files: <output>.md, .json, .png")
    add("--no-progress", action="store_true", help="hide progress output")
    add_job_arguments(add)  # --retrain's (table, agent row) jobs, one thread each: --ray uses every core
    args = parser.parse_args(argv)
    if args.k < 2 or min(args.agent_seeds, args.episodes, args.tune_trials, args.tune_agents) < 1:
        parser.error("--k must be >= 2; --agent-seeds, --episodes, --tune-trials and --tune-agents >= 1")
    return args


def default_tables() -> dict[str, Table]:
    """The shipped CPU tables and the H100 U=8 table that have the seeds a k-fold needs (a table
    still being built may ship with fewer), by name, each loaded once."""
    shipped = {name: table for name in available_tables() if len((table := resolve_table(name)).seeds) >= 2}
    chosen = [name for name, table in shipped.items() if table.manifest.get("device", "cpu").startswith("cpu")]
    return {name: shipped[name] for name in [*chosen, *(n for n in ("stsb_h100_u8",) if n in shipped)]}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")[:60]


def result_path(results_dir: Path, table_name: str, agent: str) -> Path:
    return results_dir / table_name / f"{slug(agent)}.json"


def load_result(path: Path, table: Table, k: int) -> dict[str, Any] | None:
    """A committed agent result for this very table (same seed files) and folds, or None."""
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise TableError(f"{path} is damaged ({error}); restore it (git checkout) or retrain (--retrain)") from None
    if not isinstance(result, dict) or not isinstance(result.get("returns"), dict):
        raise TableError(f"{path} is not an agent result file (a mapping with returns per seed); restore it "
                         "(git checkout) or retrain (--retrain)")
    if result.get("table_files") != table.manifest["files"] or result.get("k") != k:
        return None
    check_returns(result, path, table)
    return result


def check_returns(result: dict[str, Any], path: Path, table: Table) -> None:
    """A result file's returns are what agents can score on its table: per seed of the table a list
    of finite numbers, each within the seed's range of returns (no schedule does better than the
    oracle nor worse than the worst), at most one per agent seed. A file that breaks this was
    edited or written for another table: refused, naming the first problem."""
    from kdenv.benchmark.oracle import all_returns

    agent_seeds = len((result.get("config") or {}).get("agent_seeds") or []) or None
    _, returns = all_returns(table, REPORT_REWARD)
    bounds = {seed: (returns[row].min(), returns[row].max()) for row, seed in enumerate(table.seeds)}
    problem = None
    for key, values in result["returns"].items():
        seed = int(key) if str(key).isdigit() else None
        if seed not in bounds:
            problem = f"returns for seed {key!r}, which the table does not have"
        elif not isinstance(values, list) or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                                     and np.isfinite(v) for v in values):
            problem = f"seed {key}'s returns {values!r} are not a list of finite numbers"
        elif agent_seeds is not None and len(values) > agent_seeds:
            problem = f"seed {key} has {len(values)} returns for {agent_seeds} agent seeds"
        elif any(not bounds[seed][0] - 1e-9 <= v <= bounds[seed][1] + 1e-9 for v in values):
            problem = (f"seed {key}'s returns {values} leave the range of its schedules' returns "
                       f"[{bounds[seed][0]:+.4f}, {bounds[seed][1]:+.4f}]")
        if problem:
            raise TableError(f"{path} is damaged: {problem}; restore it (git checkout) or retrain (--retrain)")



def row_config(agent: str, args) -> dict[str, Any]:
    """What decides an agent row's results (a result file holding another config is retrained)."""
    spec = AGENTS[agent]
    config = {"algo": spec.algo, "reward": spec.reward, "scored_in": REPORT_REWARD, "exploration_bonus": spec.bonus,
              "episodes": args.episodes, "hyperparams": load_hyperparams(spec.algo).as_dict(),
              "agent_seeds": list(range(args.agent_seeds))}
    if spec.tuned:  # the defaults above are the centre of the search; each fold's choice is in result["tuned"]
        config["tuning"] = {"trials": args.tune_trials, "trial_agents": args.tune_agents,
                            "trial_episodes": args.episodes, "search_space": f"kdenv/benchmark/tuning.py:{spec.algo}",
                            "objective": "mean return of the trial's agents on the fold's train seeds"}
    return config


def fold_hyperparams(result: dict[str, Any], key: str, study: TableStudy, agent: str, path: Path,
                     progress: bool = True) -> dict:
    """The hyperparameters the row's agents train with on one fold (``key``: its held-out seeds, or
    ALL_SEEDS): the defaults, or for a tuned row the best of a search on ``study``'s train seeds
    only, run once and kept in the result file."""
    config = result["config"]
    if "tuning" not in config:
        return config["hyperparams"]
    chosen = result.setdefault("tuned", {})
    if key not in chosen:
        tuning_config = config["tuning"]
        quiet = (lambda line: print(f"  {line}")) if progress else (lambda _: None)
        params, record = tuning.tune(study, config["hyperparams"], config["algo"], tuning_config["trials"],
                                     tuning_config["trial_agents"], seed=0, log=quiet)
        chosen[key] = {**record, "hyperparams": params}
        with atomic_write(path) as handle:
            json.dump(result, handle, indent=2)
        quiet(f"{agent}, fold {key}: best trial {record['best_trial']} of {record['trials']}, train-seed return "
              f"{record['train_return']:+.4f}")
    return chosen[key]["hyperparams"]


def retrain(table_name: str, table: Table, agent: str, args, results_dir: Path) -> dict[str, Any]:
    """Trains one agent row on one table, fold by fold, agent seed by agent seed (a tuned row first
    searches its hyperparameters on the fold's train seeds); the result file is rewritten after each
    agent and each search, so a killed run resumes where it stopped."""
    spec = AGENTS[agent]
    algorithm = get_algorithm(spec.algo)
    path = result_path(results_dir, table_name, agent)
    config = row_config(agent, args)
    result = load_result(path, table, args.k)
    if result is None or result.get("config") != config:
        result = {"table": table_name, "table_files": table.manifest["files"], "k": args.k, "config": config,
                  "returns": {}, "train_seconds": 0.0}
    for train, test in fold_splits(table.seeds, args.k):
        study = TableStudy(table, algorithm, train, test, spec.reward, 10.0, args.episodes,
                           exploration_bonus=spec.bonus)
        for agent_seed in range(args.agent_seeds):
            if all(len(result["returns"].get(str(seed), [])) > agent_seed for seed in test):
                continue
            hyperparams = fold_hyperparams(result, ",".join(map(str, test)), study, agent, path, not args.no_progress)
            model, seconds = study.fit(hyperparams, agent_seed)
            scored = study.returns_on(model, test, REPORT_REWARD)  # every row in the same units
            for seed, value in scored.items():
                result["returns"].setdefault(str(seed), []).append(value)
            result["train_seconds"] += seconds
            with atomic_write(path) as handle:
                json.dump(result, handle, indent=2)
            if not args.no_progress:
                print(f"  {table_name} / {agent}: held-out {test}, agent seed {agent_seed}: "
                      f"{', '.join(f'{v:+.4f}' for v in scored.values())} ({seconds:.0f} s)")
    return result


def compatible(a: Table, b: Table) -> bool:
    """Whether an agent trained on table ``a`` can act on table ``b``: the same knowledge on offer
    and the same number of phases (so the same spaces); the tasks or horizons may differ."""
    return a.knowledge == b.knowledge and a.phases == b.phases and a is not b


def retrain_cross(name_a: str, a: Table, name_b: str, b: Table, agent: str, args, results_dir: Path) -> dict:
    """Agents trained on all of table a's seeds, played on every seed of table b (another task or
    horizon); stored in a's result file under ``cross``."""
    from kdenv.benchmark.study import play
    from kdenv.benchmark.table_env import KnowledgeSelectionTableEnv
    from kdenv.decision.wrappers import MultiDiscreteOnOff

    spec = AGENTS[agent]
    algorithm = get_algorithm(spec.algo)
    path = result_path(results_dir, name_a, agent)
    result = load_result(path, a, args.k)
    if result is None or result.get("config") != row_config(agent, args):
        raise TableError(f"train the {agent} row on {name_a} first (its result file {path} is missing or stale)")
    cross = result.setdefault("cross", {}).setdefault(name_b, {"table_files": b.manifest["files"], "returns": {}})
    if cross["table_files"] != b.manifest["files"]:
        cross.update(table_files=b.manifest["files"], returns={})
    # Every seed of a to train on: b is what is held out.
    study = TableStudy(a, algorithm, list(a.seeds), [], spec.reward, 10.0, args.episodes, exploration_bonus=spec.bonus)
    env = KnowledgeSelectionTableEnv(b, reward=REPORT_REWARD, action_space=algorithm.action_space)
    wrapped = MultiDiscreteOnOff(env) if algorithm.wrap_multidiscrete else env
    for agent_seed in range(args.agent_seeds):
        if all(len(cross["returns"].get(str(seed), [])) > agent_seed for seed in b.seeds):
            continue
        model, _ = study.fit(fold_hyperparams(result, ALL_SEEDS, study, agent, path, not args.no_progress), agent_seed)
        for seed in b.seeds:
            cross["returns"].setdefault(str(seed), []).append(play(model, env, wrapped, seed)[0])
        with atomic_write(path) as handle:
            json.dump(result, handle, indent=2)
    return result


def cross_rows(name_a: str, a: Table, name_b: str, b: Table, results_dir: Path, k: int) -> dict[str, Any]:
    """Agents of table a played on table b, scored on b against b's oracle and the constant and
    open-loop schedules chosen on a (what one would pick without ever seeing b); ``gain_target``
    is the gain over the constant chosen on b's own seeds (what one would pick knowing b: a bar
    that looks at the seeds it is scored on, so a high one)."""
    view_a, view_b = FoldView(a, REPORT_REWARD), FoldView(b, REPORT_REWARD)
    constant, open_loop = view_a.best_constant(a.seeds), view_a.best_open_loop(a.seeds)
    position = {sequence: column for column, sequence in enumerate(view_b.sequences)}
    chosen_constant = position[view_a.sequences[constant]]
    chosen_open_loop = position[view_a.sequences[open_loop]]
    own_constant = view_b.best_constant(b.seeds)

    def scored(returns):  # against the constant chosen on a, and the one chosen on b
        values = {s: np.atleast_1d(returns[s]) for s in b.seeds}
        gains = [values[s] - view_b.value(s, chosen_constant) for s in b.seeds]
        return {"return": summarise(list(values.values())),
                "regret": summarise([view_b.oracle(s) - values[s] for s in b.seeds]),
                "gain": summarise(gains), "improvement": improvement(gains),
                "gain_target": summarise([values[s] - view_b.value(s, own_constant) for s in b.seeds]),
                "seeds": len(b.seeds), "agent_seeds": int(max(v.size for v in values.values()))}

    rows = {"oracle of the target table": scored({s: view_b.oracle(s) for s in b.seeds}),
            f"best constant chosen on {name_a}": scored({s: view_b.value(s, chosen_constant) for s in b.seeds}),
            f"best open-loop chosen on {name_a}": scored({s: view_b.value(s, chosen_open_loop) for s in b.seeds}),
            f"best constant of {name_b} (chosen on its own seeds)": scored(
                {s: view_b.value(s, own_constant) for s in b.seeds})}
    for agent, spec in AGENTS.items():
        result = load_result(result_path(results_dir, name_a, agent), a, k)
        cross = (result or {}).get("cross", {}).get(name_b)
        if cross and cross["table_files"] == b.manifest["files"] and all(str(s) in cross["returns"] for s in b.seeds):
            rows[spec.row] = scored({s: np.array(cross["returns"][str(s)]) for s in b.seeds})
    return rows


def agents_to_train(tables: dict[str, Table], agents: list[str], args, results_dir: Path) -> dict[str, int]:
    """How many agents of each row --retrain would still train, tuning trials' agents included
    (finished agents and searches in result files of the same config are reused): the k-fold agents
    of every table, and the across-tasks ones."""
    counts = dict.fromkeys(agents, 0)

    def current(name: str, table: Table, agent: str) -> dict[str, Any]:
        result = load_result(result_path(results_dir, Path(name).name, agent), table, min(args.k, len(table.seeds)))
        return result if result and result.get("config") == row_config(agent, args) else {"returns": {}}

    def add(agent: str, result: dict[str, Any], key: str, still: int) -> None:
        counts[agent] += still
        if still and AGENTS[agent].tuned and key not in result.get("tuned", {}):
            counts[agent] += args.tune_trials * args.tune_agents

    for name, table in tables.items():
        for agent in agents:
            result = current(name, table, agent)
            for _, test in fold_splits(table.seeds, min(args.k, len(table.seeds))):
                done = min(len(result["returns"].get(str(seed), [])) for seed in test)
                add(agent, result, ",".join(map(str, test)), max(args.agent_seeds - done, 0))
    for name_a, name_b in cross_pairs(tables):
        for agent in agents:
            result = current(name_a, tables[name_a], agent)
            cross = (result.get("cross", {}).get(Path(name_b).name) or {}).get("returns", {})
            done = min((len(cross.get(str(seed), [])) for seed in tables[name_b].seeds), default=0)
            add(agent, result, ALL_SEEDS, max(args.agent_seeds - done, 0))
    return counts


def projected_cost(counts: dict[str, int], probe: Table, args) -> float:
    """Seconds to train ``counts`` agents of each row: each algorithm timed on 200 episodes of the
    ``probe`` table here, scaled (a tuned row's trials are timed with the defaults)."""
    seconds, timed = 0.0, {}
    for agent, count in counts.items():
        if not count:
            continue
        spec = AGENTS[agent]
        if (spec.algo, spec.reward, spec.bonus) not in timed:
            study = TableStudy(probe, get_algorithm(spec.algo), probe.seeds[1:], probe.seeds[:1], spec.reward, 10.0,
                               200, exploration_bonus=spec.bonus)
            timed[spec.algo, spec.reward, spec.bonus] = study.fit(load_hyperparams(spec.algo).as_dict(), 0)[1]
        seconds += timed[spec.algo, spec.reward, spec.bonus] * args.episodes / 200 * count
    return seconds


@dataclass(frozen=True)
class RetrainJob:
    """One --retrain job: an agent row's k-fold agents on one table, then the same row trained on
    every seed of that table and played on each target table (another task). It writes one result
    file, its own, so jobs run in any order, in parallel (``--ray``), and resume."""

    name: str
    directory: str
    agent: str
    targets: tuple[tuple[str, str], ...]  # (name, folder) of the across-tasks targets
    args: argparse.Namespace
    results_dir: str


def run_retrain_job(job: RetrainJob) -> str:
    table = resolve_table(job.directory)
    start = time.perf_counter()
    retrain(job.name, table, job.agent, job.args, Path(job.results_dir))
    for target_name, target_directory in job.targets:
        retrain_cross(job.name, table, target_name, resolve_table(target_directory), job.agent, job.args,
                      Path(job.results_dir))
    return f"{job.name} / {job.agent}: done in {(time.perf_counter() - start) / 60:.1f} min"


def retrain_jobs(tables: dict[str, Table], agents: list[str], args, results_dir: Path) -> list[RetrainJob]:
    """The jobs of --retrain, the slowest rows (the tuned ones) first so that parallel workers
    finish together; folders and the results folder absolute, for workers started elsewhere."""
    pairs = cross_pairs(tables)
    jobs = [RetrainJob(Path(name).name, str(table.directory.resolve()), agent,
                       tuple((Path(b).name, str(tables[b].directory.resolve())) for a, b in pairs if a == name),
                       args, str(results_dir.resolve()))
            for name, table in tables.items() for agent in agents]
    return sorted(jobs, key=lambda job: not AGENTS[job.agent].tuned)


def cross_pairs(tables: dict[str, Table]) -> list[tuple[str, str]]:
    """(source, target) tables of the across-tasks column: compatible spaces, another task."""
    return [(a, b) for a in tables for b in tables
            if compatible(tables[a], tables[b]) and tables[a].task != tables[b].task]


def ci_text(summary: dict[str, Any], key: str = "mean", digits: int = 4) -> str:
    if summary.get(key) is None:
        return "n/a"
    low, high = summary[f"{key}_ci"]
    return f"{summary[key]:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def improvement_text(improvement: dict[str, Any]) -> str:
    """A probability of improvement with its interval, as the leaderboard prints it."""
    return f"{improvement['value']:.2f} [{improvement['ci'][0]:.2f}, {improvement['ci'][1]:.2f}]"


def share_text(share: dict[str, Any] | None) -> str:
    """A share of the closed-loop headroom as the leaderboard prints it."""
    if not share or share["value"] is None:
        return "n/a (no headroom)"
    if share["ci"] is None:
        return f"{share['value']:+.2f} [unbounded]"
    return f"{share['value']:+.2f} [{share['ci'][0]:+.2f}, {share['ci'][1]:+.2f}]"


def finished_returns(name: str, table: Table, results_dir: Path, k: int) -> dict[str, tuple[dict, dict[int, np.ndarray]]]:
    """Every agent row with a finished result file for this table and k (by agent key: "ppo-tuned"):
    the result, and its returns on each held-out seed (an array over agent seeds)."""
    finished = {}
    for agent in AGENTS:
        path = result_path(results_dir, Path(name).name, agent)
        result = load_result(path, table, k)
        if result is None:
            continue
        wanted = len(result["config"]["agent_seeds"])
        short = [seed for seed in table.seeds if len(result["returns"].get(str(seed), [])) < wanted]
        if short:  # still being trained (or cut short): not a row yet; --retrain resumes it
            if len(short) < len(table.seeds):
                print(f"{path}: seeds {short} hold fewer than {wanted} agents' returns; the row waits for "
                      "`--retrain` to finish them")
            continue
        finished[agent] = result, {seed: np.array(result["returns"][str(seed)]) for seed in table.seeds}
    return finished


def agent_scores(view: FoldView, finished: dict[str, tuple[dict, dict[int, np.ndarray]]], k: int,
                 closed_loop: dict[int, float] | None = None) -> dict[str, dict[str, Any]]:
    """The finished agent rows (``finished_returns``) scored by the protocol on the view's table
    (by agent key: "ppo-tuned"; with ``closed_loop``, the bound's return per seed, also the share
    of its headroom captured), with their configuration and, for a tuned row, each fold's search."""
    splits, scored = fold_splits(view.table.seeds, k), {}
    for agent, (result, returns) in finished.items():
        scores = score_policy(view, splits, returns, closed_loop)
        scores["config"] = result["config"]
        if "tuned" in result:  # each fold's search: its best trial and hyperparameters
            scores["tuned"] = result["tuned"]
        scored[agent] = scores
    return scored


CHOSEN_ROW = "agent row chosen on the other folds"


def chosen_row(view: FoldView, splits: list[tuple[list[int], list[int]]], returns: dict[str, dict[int, np.ndarray]],
               closed_loop: dict[int, float] | None = None) -> dict[str, Any]:
    """A user's choice among the agent rows, cross-validated: for each fold, the row whose agents
    did best (mean return) on the other folds' seeds, where they were held out in their turn; its
    agents' returns on the fold's own seeds, which the choice never looked at. Scored like any row,
    with the row chosen for each fold."""
    played, chosen = {}, {}
    for train, test in splits:
        pick = max(returns, key=lambda agent: np.mean([returns[agent][seed].mean() for seed in train]))
        chosen[",".join(map(str, test))] = pick
        played.update({seed: returns[pick][seed] for seed in test})
    return {**score_policy(view, splits, played, closed_loop), "chosen": chosen}


def best_agent(name: str, table: Table, results_dir: Path, k: int) -> tuple[str, dict[str, Any]]:
    """The leaderboard's best agent row on a table: the highest mean gain over the best constant on
    held-out seeds (the first listed on a tie), and its scores."""
    scored = agent_scores(FoldView(table, REPORT_REWARD), finished_returns(name, table, results_dir, k), k)
    if not scored:
        raise ConfigError(f"no agent row has a finished leaderboard result on {Path(name).name} in {results_dir}; "
                          f"run: python agents/leaderboard.py --retrain --tables {name}")
    agent = max(scored, key=lambda a: scored[a]["gain"]["mean"])
    return agent, scored[agent]


def leaderboard(tables: dict[str, Table], args, results_dir: Path) -> dict[str, Any]:
    # The command that rebuilds this board from the committed files: every flag that shapes it, when
    # it differs from the default (the tables, the folds, where the results are read and the board written).
    defaults = parse_args([])
    remake = " ".join(["python agents/leaderboard.py",
                       *(f"--{flag.replace('_', '-')} {getattr(args, flag)}"
                         for flag in ("tables", "k", "results_dir", "output")
                         if getattr(args, flag) != getattr(defaults, flag))])
    board: dict[str, Any] = {"k": args.k, "reward": REPORT_REWARD, "command": remake, "tables": {}}
    for name, table in tables.items():
        view = FoldView(table, REPORT_REWARD)
        k = min(args.k, len(table.seeds))
        splits = fold_splits(table.seeds, k)
        baselines = baseline_returns(view, splits, [n for n in named_policies(table) if n in NAMED])
        closed_loop = baselines["closed-loop bound"]
        rows = {row: score_policy(view, splits, per_seed, closed_loop) for row, per_seed in baselines.items()}
        finished = finished_returns(name, table, results_dir, k)
        rows.update({AGENTS[agent].row: scores for agent, scores in agent_scores(view, finished, k, closed_loop).items()})
        if len(finished) > 1:
            rows[CHOSEN_ROW] = chosen_row(view, splits, {agent: returns for agent, (_, returns) in finished.items()},
                                          closed_loop)
        board["tables"][name] = {"seeds": table.seeds, "k": k, "phases": table.phases,
                                 "updates_per_phase": table.manifest["env"]["updates_per_phase"],
                                 "knowledge": table.knowledge, "rows": rows,
                                 # out of sample: the reward's choices scored on GLUE dev (None without dev at leaves)
                                 "reward_to_dev": solve(table, REPORT_REWARD)["reward_to_dev"]}
    board["cross"] = {}
    for name_a, name_b in cross_pairs(tables):
        a, b = tables[name_a], tables[name_b]
        board["cross"][f"{name_a} -> {name_b}"] = cross_rows(Path(name_a).name, a, Path(name_b).name, b, results_dir,
                                                            min(args.k, len(a.seeds)))
    return board


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
    agent_rows = {spec.row for spec in AGENTS.values()}
    lines = ["## Summary", "",
             "Out of sample: the oracle's schedule per seed and the closed loop's, chosen by the reward split, minus the "
             "constant the reward split picks, all scored on GLUE dev (bootstrap 95% interval over seeds; analysis "
             "only, no policy sees dev; `python agents/oracle.py --table <table>` adds the cross-fitted figures for tables that keep "
             "outputs). In sample: the oracle's gain over the best constant chosen on the train folds, chosen and "
             "scored on the same reward examples, an upper bound that includes the winner's curse. Agents: the "
             f"\"{CHOSEN_ROW}\" row (for each fold, the agent row with the best mean return on the other "
             "folds' held-out seeds, played on the fold's own), so that picking the best row never looks at "
             "the seeds it is scored on; with one agent row trained, that row.", "",
             "| table | seeds | out of sample: oracle, reward → dev | above 0? | closed loop, reward → dev | "
             "in sample: headroom (oracle; upper bound) | closed-loop bound (in sample) | agents | their gain | "
             "above 0? | share of closed-loop headroom | P(improve) | n |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in board["tables"].items():
        rows = entry["rows"]
        oracle, closed = rows["oracle"]["gain"], rows["closed-loop bound"]["gain"]
        on_dev = entry.get("reward_to_dev") or {}
        line = (f"| {name} | {len(entry['seeds'])} | {dev_text(on_dev.get('oracle'))} | "
                f"{excludes_zero(ci_summary(on_dev.get('oracle')))} | {dev_text(on_dev.get('closed_loop'))} | "
                f"{ci_text(oracle)} | {ci_text(closed)} |")
        trained = [row for row in rows if row in agent_rows]
        row = CHOSEN_ROW if CHOSEN_ROW in rows else trained[0] if trained else None
        if row is None:
            lines.append(line + " no agent row trained | | | | | |")
            continue
        scores = rows[row]
        label = chosen_text(scores["chosen"]) if "chosen" in scores else row
        lines.append(line + f" {label} | {ci_text(scores['gain'])} | {excludes_zero(scores['gain'])} | "
                     f"{share_text(scores.get('closed_loop_share'))} | {improvement_text(scores['improvement'])} | "
                     f"{scores['seeds']} x {scores['agent_seeds']} |")
    cross = [(pair, rows) for pair, rows in board.get("cross", {}).items() if any(row in agent_rows for row in rows)]
    if cross:
        lines += ["", "Across tasks: agents trained on every seed of one table, played on every seed of another; the "
                  "row with the best mean gain (looking at the target's seeds: optimistic by that choice), against "
                  "the constant chosen on the source table (what one would pick without the target) and against "
                  "the target's own best constant (chosen on the seeds it is scored on: a high bar).", "",
                  "| source -> target | agents | gain over the source's constant | above 0? | gain over the target's "
                  "own constant | above 0? | P(improve) | n |", "|---|---|---|---|---|---|---|---|"]
    for pair, rows in cross:
        agents = {row: scores for row, scores in rows.items() if row in agent_rows}
        best = max(agents, key=lambda row: agents[row]["gain"]["mean"])
        scores = agents[best]
        lines.append(f"| {pair} | {best} (best of {len(agents)}) | {ci_text(scores['gain'])} | "
                     f"{excludes_zero(scores['gain'])} | {ci_text(scores['gain_target'])} | "
                     f"{excludes_zero(scores['gain_target'])} | {improvement_text(scores['improvement'])} | "
                     f"{scores['seeds']} x {scores['agent_seeds']} |")
    return [*lines, ""]


def average_ranks(board: dict[str, Any]) -> dict[str, float]:
    """Each row's rank by mean return on each table (1: best; tied rows share the mean of their
    ranks), averaged over the tables, for the rows that every table has (HPO-B's average rank):
    best first."""
    from scipy.stats import rankdata

    tables = list(board["tables"].values())
    if not tables:
        return {}
    common = [row for row in tables[0]["rows"] if all(row in entry["rows"] for entry in tables)]
    ranks = np.zeros(len(common))
    for entry in tables:
        ranks += rankdata([-entry["rows"][row]["return"]["mean"] for row in common])
    return dict(sorted(zip(common, (ranks / len(tables)).tolist()), key=lambda item: item[1]))


def markdown_text(board: dict[str, Any]) -> str:
    lines = ["# Leaderboard: knowledge schedules on the shipped tables", "",
             f"Made by `{board['command']}` from the shipped tables and the agent result files in "
             "[leaderboard/results/](leaderboard/results/). Protocol: k-fold over each table's seeds (every seed "
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
        missing = [spec.row for spec in AGENTS.values() if spec.row not in entry["rows"]]
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


@run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.tables:
            tables = {name: resolve_table(name) for name in (t.strip() for t in args.tables.split(",")) if name}
        else:
            tables = default_tables()
        for name, table in tables.items():
            if len(table.seeds) < 2:
                raise ConfigError(f"table {name} has {len(table.seeds)} seed(s): a k-fold needs at least 2")
        agents = [a.strip().lower() for a in args.agents.split(",") if a.strip()]
        unknown = [a for a in agents if a not in AGENTS]
        if unknown or not agents:
            raise ConfigError(f"--agents {args.agents!r}: choose among {', '.join(AGENTS)}")
    except (TableError, ConfigError, ValueError) as error:
        return fail(error)
    try:
        return board_and_files(tables, agents, args)
    except TableError as error:  # a damaged result file, read while retraining or building the board
        return fail(error)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished agents are kept in {args.results_dir}: run the same command to resume",
              file=sys.stderr)
        return 130


def board_and_files(tables: dict[str, Table], agents: list[str], args: argparse.Namespace) -> int:
    """Retrains what ``--retrain`` asks for, then writes the board's three files, all or nothing."""
    results_dir = Path(args.results_dir)
    if args.retrain:
        import torch

        runner = JobRunner.from_args(args)
        try:
            runner.check()
        except JobError as error:
            return fail(error)
        torch.set_num_threads(max(1, int(args.cpus_per_job)))
        counts = agents_to_train(tables, agents, args, results_dir)
        cost = projected_cost(counts, next(iter(tables.values())), args)
        print(f"retraining: {sum(counts.values())} agents still to train ({', '.join(f'{a} {n}' for a, n in counts.items())}; "
              f"{len(tables)} tables x {args.k} folds x {args.agent_seeds} agent seeds per row, plus the across-tasks "
              f"pairs; {args.episodes} episodes each; finished agents in {results_dir} are reused): projected "
              f"{cost / 3600:.2f} h on one thread; {len(tables) * len(agents)} (table, row) jobs, which --ray runs "
              f"in parallel")
        if args.dry_run:
            return 0
        start = time.perf_counter()
        jobs = retrain_jobs(tables, agents, args, results_dir)
        runner.map(run_retrain_job, jobs, on_result=lambda _, line: None if args.no_progress else print(line))
        print(f"retrained in {(time.perf_counter() - start) / 60:.1f} min")
    board = leaderboard(tables, args, results_dir)
    output = Path(args.output)
    write_all({output.with_suffix(".md"): markdown_text(board).encode(),
               output.with_suffix(".json"): json.dumps(board, indent=2).encode(),
               output.with_suffix(".png"): figure_png(board)})
    print(f"leaderboard written to {output.with_suffix('.md')} (and .json, .png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
