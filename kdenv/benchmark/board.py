"""The leaderboard as a library: agent rows, their result files, k-fold retraining, transfer
across tasks, cost projection, the choice among rows and average ranks. ``agents/leaderboard.py``
parses flags into :class:`BoardSettings`, calls :func:`build_board` and writes what
:mod:`kdenv.benchmark.board_report` renders.

The protocol (``kdenv/benchmark/protocol.py``): k-fold over each table's seeds, every seed held out
once; whatever a row chooses (the best constant, the best open-loop schedule, an agent's training)
it chooses on the train folds.

Agent rows come from small result files (one per table and agent configuration, in
``kdenv/results/leaderboard/``: every held-out seed's return for every agent seed), written by
``--retrain`` and committed, so that the board is rebuilt in minutes without training. A result
file is used only for the table it was trained on (its seed files' checksums are recorded).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from kdenv.benchmark import tuning
from kdenv.benchmark.oracle import all_dev_metrics, all_returns, named_policies
from kdenv.benchmark.outofsample import ReadOutputs, dev_metric_draws, read_outputs, reward_to_dev
from kdenv.benchmark.protocol import (
    FoldView,
    baseline_columns,
    baseline_returns,
    fold_splits,
    score_on_dev,
    score_policy,
)
from kdenv.benchmark.regimes import measured_train_reward
from kdenv.benchmark.study import TableStudy
from kdenv.benchmark.table import Table, TableError, resolve_table
from kdenv.benchmark.table_env import REWARD_SCALE
from kdenv.config import ConfigError
from kdenv.decision.algorithms import get_algorithm, load_hyperparams
from kdenv.io import atomic_write
from kdenv.paths import leaderboard_results_dir
from kdenv.stats import improvement, summarise


@dataclass(frozen=True)
class BoardSettings:
    """What shapes a board and its retraining (``agents/leaderboard.py``'s flags of the same names)."""

    k: int = 4  # folds over each table's seeds
    agent_seeds: int = 5  # agent seeds per fold
    episodes: int = 3000  # training episodes per agent
    tune_trials: int = 12  # tuned rows: Optuna trials per fold
    tune_agents: int = 2  # tuned rows: agents per trial
    results_dir: Path = field(default_factory=leaderboard_results_dir)
    # the reward the rows that train on metric_gain train on instead (None: on a regime's table the reward
    # measured for it, kdenv.benchmark.regimes, else each row's own; the paper row keeps its loss_decrease);
    # every row is still scored in REPORT_REWARD and on dev
    train_reward: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.k < 2 or min(self.agent_seeds, self.episodes, self.tune_trials, self.tune_agents) < 1:
            raise ConfigError("k must be >= 2; agent_seeds, episodes, tune_trials and tune_agents >= 1")
        object.__setattr__(self, "results_dir", Path(self.results_dir))

    def folds_of(self, table: Table) -> int:
        """The folds of a k-fold over this table's seeds (k, or fewer on a table with fewer seeds)."""
        return min(self.k, len(table.seeds))


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
def train_reward_on(settings: BoardSettings, table_name: str | None) -> str | None:
    """The reward the rows that train on metric_gain train on instead on table ``table_name``:
    ``settings.train_reward``, or where that is None the reward measured for the table's regime
    (``measured_train_reward``, ``Regime.train_reward``); None: their own."""
    return settings.train_reward or (measured_train_reward(Path(table_name).name) if table_name else None)


def row_spec(agent: str, settings: BoardSettings, table_name: str | None = None) -> AgentRow:
    """The agent row as ``settings`` trains it on table ``table_name`` (``train_reward_on``)."""
    spec = AGENTS[agent]
    reward = train_reward_on(settings, table_name)
    if reward and spec.reward == "metric_gain":
        return replace(spec, reward=reward)
    return spec


def is_agent_row(row: str) -> bool:
    """Whether a board row is an agent row (under its own name or with its training reward, ``row_label``)."""
    return any(row == spec.row or row.startswith(f"{spec.row}, trained on ") for spec in AGENTS.values())


def row_label(agent: str, result: dict[str, Any]) -> str:
    """An agent row's name on the board: its own, and the reward its result file was trained on where
    that is not the row's own (``--train-reward``)."""
    spec, reward = AGENTS[agent], (result.get("config") or {}).get("reward")
    return spec.row if reward in (None, spec.reward) else f"{spec.row}, trained on {reward}"


ALL_SEEDS = "all"  # the tuning key of agents trained on every seed of a table (the across-tasks column)
NAMED = ["kd", "gkd", "all", "none"]
REPORT_REWARD = "metric_gain"  # every row is scored on the table's own metric gain


# The board's tables, named: a regime table of the survey (kdenv.benchmark.regimes) joins the board when
# it is named with --tables, never because a build shipped its second seed.
BOARD_TABLES = ("stsb_u8", "sst2_u8", "stsb_h100_u8", "mrpc", "stsb")


def default_tables() -> dict[str, Table]:
    """The board's tables (BOARD_TABLES), by name, each loaded once."""
    return {name: resolve_table(name) for name in BOARD_TABLES}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")[:60]


def result_path(results_dir: Path, table_name: str, agent: str) -> Path:
    return results_dir / table_name / f"{slug(agent)}.json"


# Result files: format 1 held each held-out seed's returns; format 2 also each agent's schedule (its
# action per phase) beside every return, so that a row is re-checked against its table without
# retraining (``verify_results``). ``--retrain`` upgrades a format-1 file, reusing its searches.
RESULT_FORMAT = 2


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



def row_config(agent: str, settings: BoardSettings, table_name: str | None = None) -> dict[str, Any]:
    """What decides an agent row's results on table ``table_name`` (a result file holding another config
    is retrained)."""
    spec = row_spec(agent, settings, table_name)
    config = {"algo": spec.algo, "reward": spec.reward, "scored_in": REPORT_REWARD, "exploration_bonus": spec.bonus,
              "episodes": settings.episodes, "hyperparams": load_hyperparams(spec.algo).as_dict(),
              "agent_seeds": list(range(settings.agent_seeds))}
    if spec.tuned:  # the defaults above are the centre of the search; each fold's choice is in result["tuned"]
        config["tuning"] = {"trials": settings.tune_trials, "trial_agents": settings.tune_agents,
                            "trial_episodes": settings.episodes, "search_space": f"kdenv/benchmark/tuning.py:{spec.algo}",
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


def retrain(table_name: str, table: Table, agent: str, settings: BoardSettings) -> dict[str, Any]:
    """Trains one agent row on one table, fold by fold, agent seed by agent seed (a tuned row first
    searches its hyperparameters on the fold's train seeds); the result file is rewritten after each
    agent and each search, so a killed run resumes where it stopped."""
    spec = row_spec(agent, settings, table_name)
    algorithm = get_algorithm(spec.algo)
    path = result_path(settings.results_dir, table_name, agent)
    config = row_config(agent, settings, table_name)
    result = load_result(path, table, settings.k)
    if result is None or result.get("config") != config:
        result = {"format": RESULT_FORMAT, "table": table_name, "table_files": table.manifest["files"],
                  "k": settings.k, "config": config, "returns": {}, "schedules": {}, "train_seconds": 0.0}
    elif result.get("format", 1) < RESULT_FORMAT:  # returns without schedules: trained again, searches kept
        result.update(format=RESULT_FORMAT, returns={}, schedules={}, train_seconds=0.0, cross={})
    for train, test in fold_splits(table.seeds, settings.k):
        study = TableStudy(table, algorithm, train, test, spec.reward, REWARD_SCALE, settings.episodes,
                           exploration_bonus=spec.bonus)
        for agent_seed in range(settings.agent_seeds):
            if all(len(result["returns"].get(str(seed), [])) > agent_seed for seed in test):
                continue
            hyperparams = fold_hyperparams(result, ",".join(map(str, test)), study, agent, path, settings.progress)
            model, seconds = study.fit(hyperparams, agent_seed)
            played = study.played_on(model, test, REPORT_REWARD)  # every row in the same units
            for seed, (value, schedule) in played.items():
                result["returns"].setdefault(str(seed), []).append(value)
                result["schedules"].setdefault(str(seed), []).append(schedule)
            scored = {seed: value for seed, (value, _) in played.items()}
            result["train_seconds"] += seconds
            with atomic_write(path) as handle:
                json.dump(result, handle, indent=2)
            if settings.progress:
                print(f"  {table_name} / {agent}: held-out {test}, agent seed {agent_seed}: "
                      f"{', '.join(f'{v:+.4f}' for v in scored.values())} ({seconds:.0f} s)")
    return result


def compatible(a: Table, b: Table) -> bool:
    """Whether an agent trained on table ``a`` can act on table ``b``: the same knowledge on offer
    and the same number of phases (so the same spaces); the tasks or horizons may differ."""
    return a.knowledge == b.knowledge and a.phases == b.phases and a is not b


def retrain_cross(name_a: str, a: Table, name_b: str, b: Table, agent: str, settings: BoardSettings) -> dict:
    """Agents trained on all of table a's seeds, played on every seed of table b (another task or
    horizon); stored in a's result file under ``cross``."""
    from kdenv.benchmark.study import play
    from kdenv.benchmark.table_env import KnowledgeSelectionTableEnv
    from kdenv.decision.wrappers import MultiDiscreteOnOff

    spec = row_spec(agent, settings, name_a)
    algorithm = get_algorithm(spec.algo)
    path = result_path(settings.results_dir, name_a, agent)
    result = load_result(path, a, settings.k)
    if result is None or result.get("config") != row_config(agent, settings, name_a):
        raise TableError(f"train the {agent} row on {name_a} first (its result file {path} is missing or stale)")
    cross = result.setdefault("cross", {}).setdefault(name_b, {"table_files": b.manifest["files"], "returns": {},
                                                               "schedules": {}})
    if cross["table_files"] != b.manifest["files"]:
        cross.update(table_files=b.manifest["files"], returns={}, schedules={})
    # Every seed of a to train on: b is what is held out.
    study = TableStudy(a, algorithm, list(a.seeds), [], spec.reward, REWARD_SCALE, settings.episodes, exploration_bonus=spec.bonus)
    env = KnowledgeSelectionTableEnv(b, reward=REPORT_REWARD, action_space=algorithm.action_space)
    wrapped = MultiDiscreteOnOff(env) if algorithm.wrap_multidiscrete else env
    for agent_seed in range(settings.agent_seeds):
        if all(len(cross["returns"].get(str(seed), [])) > agent_seed for seed in b.seeds):
            continue
        model, _ = study.fit(fold_hyperparams(result, ALL_SEEDS, study, agent, path, settings.progress), agent_seed)
        for seed in b.seeds:
            value, schedule = play(model, env, wrapped, seed)
            cross["returns"].setdefault(str(seed), []).append(value)
            cross.setdefault("schedules", {}).setdefault(str(seed), []).append(schedule)
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
    for agent in AGENTS:
        result = load_result(result_path(results_dir, name_a, agent), a, k)
        cross = (result or {}).get("cross", {}).get(name_b)
        if cross and cross["table_files"] == b.manifest["files"] and all(str(s) in cross["returns"] for s in b.seeds):
            rows[row_label(agent, result)] = scored({s: np.array(cross["returns"][str(s)]) for s in b.seeds})
    return rows


def agents_to_train(tables: dict[str, Table], agents: list[str], settings: BoardSettings) -> dict[str, int]:
    """How many agents of each row --retrain would still train, tuning trials' agents included
    (finished agents and searches in result files of the same config are reused): the k-fold agents
    of every table, and the across-tasks ones."""
    counts = dict.fromkeys(agents, 0)

    def current(name: str, table: Table, agent: str) -> dict[str, Any]:
        result = load_result(result_path(settings.results_dir, Path(name).name, agent), table, settings.folds_of(table))
        if not result or result.get("config") != row_config(agent, settings, name):
            return {"returns": {}}
        if result.get("format", 1) < RESULT_FORMAT:  # trained again for its schedules, its searches kept
            return {**result, "returns": {}, "cross": {}}
        return result

    def add(agent: str, result: dict[str, Any], key: str, still: int) -> None:
        counts[agent] += still
        if still and AGENTS[agent].tuned and key not in result.get("tuned", {}):
            counts[agent] += settings.tune_trials * settings.tune_agents

    for name, table in tables.items():
        for agent in agents:
            result = current(name, table, agent)
            for _, test in fold_splits(table.seeds, settings.folds_of(table)):
                done = min(len(result["returns"].get(str(seed), [])) for seed in test)
                add(agent, result, ",".join(map(str, test)), max(settings.agent_seeds - done, 0))
    for name_a, name_b in cross_pairs(tables):
        for agent in agents:
            result = current(name_a, tables[name_a], agent)
            cross = (result.get("cross", {}).get(Path(name_b).name) or {}).get("returns", {})
            done = min((len(cross.get(str(seed), [])) for seed in tables[name_b].seeds), default=0)
            add(agent, result, ALL_SEEDS, max(settings.agent_seeds - done, 0))
    return counts


def projected_cost(counts: dict[str, int], probe: Table, settings: BoardSettings) -> float:
    """Seconds to train ``counts`` agents of each row: each algorithm timed on 200 episodes of the
    ``probe`` table here, scaled (a tuned row's trials are timed with the defaults)."""
    seconds, timed = 0.0, {}
    for agent, count in counts.items():
        if not count:
            continue
        spec = row_spec(agent, settings, probe.name)
        if (spec.algo, spec.reward, spec.bonus) not in timed:
            study = TableStudy(probe, get_algorithm(spec.algo), probe.seeds[1:], probe.seeds[:1], spec.reward, REWARD_SCALE,
                               200, exploration_bonus=spec.bonus)
            timed[spec.algo, spec.reward, spec.bonus] = study.fit(load_hyperparams(spec.algo).as_dict(), 0)[1]
        seconds += timed[spec.algo, spec.reward, spec.bonus] * settings.episodes / 200 * count
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
    settings: BoardSettings


def run_retrain_job(job: RetrainJob) -> str:
    table = resolve_table(job.directory)
    start = time.perf_counter()
    retrain(job.name, table, job.agent, job.settings)
    for target_name, target_directory in job.targets:
        retrain_cross(job.name, table, target_name, resolve_table(target_directory), job.agent, job.settings)
    return f"{job.name} / {job.agent}: done in {(time.perf_counter() - start) / 60:.1f} min"


def retrain_jobs(tables: dict[str, Table], agents: list[str], settings: BoardSettings) -> list[RetrainJob]:
    """The jobs of --retrain, the slowest rows (the tuned ones) first so that parallel workers
    finish together; folders and the results folder absolute, for workers started elsewhere."""
    pairs = cross_pairs(tables)
    jobs = [RetrainJob(Path(name).name, str(table.directory.resolve()), agent,
                       tuple((Path(b).name, str(tables[b].directory.resolve())) for a, b in pairs if a == name),
                       replace(settings, results_dir=settings.results_dir.resolve()))
            for name, table in tables.items() for agent in agents]
    return sorted(jobs, key=lambda job: not AGENTS[job.agent].tuned)


def cross_pairs(tables: dict[str, Table]) -> list[tuple[str, str]]:
    """(source, target) tables of the across-tasks column: compatible spaces, another task."""
    return [(a, b) for a in tables for b in tables
            if compatible(tables[a], tables[b]) and tables[a].task != tables[b].task]




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


def agent_columns(view: FoldView, result: dict[str, Any]) -> dict[int, np.ndarray] | None:
    """The schedules an agent row's agents played on each seed (a format-2 result file), as columns of
    the view: [agent seeds] per seed. None for a format-1 file, which stored returns only."""
    schedules = result.get("schedules")
    if not schedules:
        return None
    position = {sequence: column for column, sequence in enumerate(view.sequences)}
    return {seed: np.array([position[tuple(s)] for s in schedules[str(seed)]]) for seed in view.table.seeds}


def rows_on_dev(view: FoldView, splits: list[tuple[list[int], list[int]]], names: list[str],
                finished: dict[str, tuple[dict, dict[int, np.ndarray]]], chosen: dict[str, str] | None,
                read: ReadOutputs | None = None) -> dict | None:
    """Every row that plays one schedule per seed scored out of sample (``score_on_dev``): what the
    reward split chose, scored on GLUE dev. None for a table whose leaves are not all scored on dev.
    The agents' rows need their schedules (format-2 result files); ``chosen``: the agent row each
    fold chose (the chosen row's choices), by the fold's held-out seeds. ``read``: the table's outputs,
    read once by the caller (default: read here)."""
    dev = all_dev_metrics(view.table, view.sequences)
    if dev is None:
        return None
    draws = dev_draws(view.table, read)
    rows = {row: score_on_dev(view, splits, dev, columns, draws)
            for row, columns in baseline_columns(view, splits, names).items() if None not in columns.values()}
    played = {agent: agent_columns(view, result) for agent, (result, _) in finished.items()}
    rows.update({row_label(agent, finished[agent][0]): score_on_dev(view, splits, dev, columns, draws)
                 for agent, columns in played.items() if columns is not None})
    if chosen and all(played.get(agent) is not None for agent in chosen.values()):
        columns = {int(seed): played[agent][int(seed)] for fold, agent in chosen.items() for seed in fold.split(",")}
        rows[CHOSEN_ROW] = {**score_on_dev(view, splits, dev, columns, draws), "chosen": chosen}
    return rows


def dev_draws(table: Table, read: ReadOutputs | None = None) -> list[np.ndarray] | None:
    """The dev metric of every schedule on resamples of the dev examples, for a table that keeps
    per-example outputs and whose labels can be read ($KDENV_GLUE_DIR); None otherwise (intervals then
    resample seeds and agent seeds only, as each row's ``resamples`` says). ``read``: the table's
    outputs, read once by the caller (default: read here)."""
    read = read or read_outputs(table)
    if read.stacked is None or read.stacked.dev is None:
        return None
    return dev_metric_draws(table, read.labels, stacked=read.stacked)


def build_board(tables: dict[str, Table], settings: BoardSettings, command: str) -> dict[str, Any]:
    """Every row of every table scored by the protocol, and the across-tasks pairs: the board's
    data (``command``: the command that rebuilds it, recorded in the board)."""
    board: dict[str, Any] = {"k": settings.k, "reward": REPORT_REWARD, "command": command, "tables": {}}
    for name, table in tables.items():
        view = FoldView(table, REPORT_REWARD)
        k = settings.folds_of(table)
        splits = fold_splits(table.seeds, k)
        names = [n for n in named_policies(table) if n in NAMED]
        baselines = baseline_returns(view, splits, names)
        closed_loop = baselines["closed-loop bound"]
        rows = {row: score_policy(view, splits, per_seed, closed_loop) for row, per_seed in baselines.items()}
        finished = finished_returns(name, table, settings.results_dir, k)
        read = read_outputs(table)  # once: the out-of-sample headroom and every row on dev score from it
        rows.update({row_label(agent, finished[agent][0]): scores
                     for agent, scores in agent_scores(view, finished, k, closed_loop).items()})
        if len(finished) > 1:
            rows[CHOSEN_ROW] = chosen_row(view, splits, {agent: returns for agent, (_, returns) in finished.items()},
                                          closed_loop)
        board["tables"][name] = {"seeds": table.seeds, "k": k, "phases": table.phases,
                                 "updates_per_phase": table.manifest["env"]["updates_per_phase"],
                                 "knowledge": table.knowledge, "rows": rows,
                                 "agents": {agent: row_label(agent, result) for agent, (result, _) in finished.items()},
                                 # out of sample: the reward's choices scored on GLUE dev (None without dev at leaves)
                                 **dict(zip(("reward_to_dev", "reward_to_dev_resamples"), reward_to_dev(table, REPORT_REWARD, read))),
                                 # every row's choices scored on GLUE dev (None without dev at every leaf)
                                 "on_dev": rows_on_dev(view, splits, names, finished,
                                                       rows.get(CHOSEN_ROW, {}).get("chosen"), read)}
    board["cross"] = {}
    for name_a, name_b in cross_pairs(tables):
        a, b = tables[name_a], tables[name_b]
        board["cross"][f"{name_a} -> {name_b}"] = cross_rows(Path(name_a).name, a, Path(name_b).name, b,
                                                            settings.results_dir, settings.folds_of(a))
    return board


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


def verify_results(tables: dict[str, Table], settings: BoardSettings) -> tuple[int, list[str]]:
    """Replays every stored agent row against its table: each agent's schedule on each held-out
    seed (and on each across-tasks target) must be a path of the table whose return is the stored
    return, with one schedule per return. Returns how many (seed, agent) returns were replayed and
    the problems found (none: the rows are what their tables say)."""
    from kdenv.benchmark.oracle import episode_return

    replayed, problems = 0, []

    def replay(path: Path, table: Table, returns: dict, schedules: dict | None, where: str) -> None:
        nonlocal replayed
        if schedules is None:
            problems.append(f"{path}{where}: format 1, returns without schedules: it cannot be replayed; "
                            "retrain it (python agents/leaderboard.py --retrain), which keeps its searches")
            return
        for key, values in returns.items():
            played = schedules.get(key)
            if not isinstance(played, list) or len(played) != len(values):
                problems.append(f"{path}{where}: seed {key} holds {len(values)} returns but "
                                f"{len(played) if isinstance(played, list) else 'no'} schedules")
                continue
            for agent_seed, (value, schedule) in enumerate(zip(values, played)):
                valid = (isinstance(schedule, list) and len(schedule) == table.phases
                         and all(isinstance(a, int) and 0 <= a < table.num_actions for a in schedule))
                expected = episode_return(table, int(key), tuple(schedule), REPORT_REWARD) if valid else None
                if expected is None or abs(expected - value) > 1e-9:
                    problems.append(f"{path}{where}: seed {key}, agent seed {agent_seed}: schedule {schedule} "
                                    + ("is not a path of the table" if expected is None else
                                       f"returns {expected:+.6f} on the table, the file says {value:+.6f}"))
                replayed += 1

    for name, table in tables.items():
        for agent in AGENTS:
            path = result_path(settings.results_dir, Path(name).name, agent)
            result = load_result(path, table, settings.folds_of(table))
            if result is None:
                continue
            replay(path, table, result["returns"], result.get("schedules"), "")
            for target, cross in (result.get("cross") or {}).items():
                other = next((t for n, t in tables.items() if Path(n).name == target), None)
                if other is not None and cross.get("table_files") == other.manifest["files"]:
                    replay(path, other, cross["returns"], cross.get("schedules"), f" (played on {target})")
    return replayed, problems
