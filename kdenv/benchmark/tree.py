"""Exhaustive schedule trees: every action sequence of a short distillation, from one initial
student, depth first, reusing prefixes.

Each child restores its parent's state (trainer snapshot and the episode's observation state), so
all siblings see the same batches and dropout draws (common random numbers) and differ only by
the action. At most P + 1 states are held in memory, one per depth of the current path.

Records are appended, one JSON line per node, to a job file keyed by (seed, prefix); a node whose
subtree is finished gets a completion marker. A killed build resumes from the files and loses at
most the node in flight; a recomputed node must equal its record exactly (a free determinism check).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from kdenv.decision.env import KnowledgeDistillationEnv
from kdenv.decision.rewards import REWARDS, RewardInput

RECORD_FORMAT = 1
VOLATILE = ("wall_time_s", "dev_wall_time_s")  # measured, not computed: never compared


def subtree_size(num_actions: int, depth: int) -> int:
    """Nodes below a node with ``depth`` phases left: A + A² + … + A^depth."""
    return sum(num_actions**d for d in range(1, depth + 1))


def tree_size(num_actions: int, phases: int) -> int:
    return subtree_size(num_actions, phases)


def history_key(history: Iterable[int]) -> str:
    return ",".join(str(int(a)) for a in history)


def parse_prefix(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip()) if text.strip() else ()


def all_rewards(before: dict[str, float], after: dict[str, float], initial: dict[str, float], terminal: bool) -> dict[str, float]:
    """Every registered reward (unscaled) for one phase, from the reward-split metric and loss."""
    step = RewardInput(metric_before=before["metric"], metric_after=after["metric"], loss_before=before["loss"],
                       loss_after=after["loss"], metric_initial=initial["metric"], terminal=terminal)
    return {name: float(function(step)) for name, function in REWARDS.items()}


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in VOLATILE}


@dataclass
class JobProgress:
    computed: int = 0
    reused: int = 0
    seconds: float = 0.0


class JobFile:
    """The append-only record file of one (seed, prefix) job."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        self.complete: set[str] = set()
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line a kill cut short: that node is recomputed
                key = history_key(item["history"])
                if item.get("complete"):
                    self.complete.add(key)
                else:
                    self.records[key] = item
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "a")

    def append(self, item: dict[str, Any]) -> None:
        self._handle.write(json.dumps(item, sort_keys=True) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def add_record(self, record: dict[str, Any]) -> None:
        key = history_key(record["history"])
        known = self.records.get(key)
        if known is not None:
            if _comparable(known) != _comparable(record):
                raise RuntimeError(f"node [{key}] recomputed differently from its record in {self.path}: the build is "
                                   "not deterministic (another teacher, software version or thread count?)")
            return
        self.records[key] = record
        self.append(record)

    def mark_complete(self, history: tuple[int, ...]) -> None:
        key = history_key(history)
        if key not in self.complete:
            self.complete.add(key)
            self.append({"history": list(history), "complete": True})

    def close(self) -> None:
        self._handle.close()


class TreeBuilder:
    """Enumerates the schedule tree of one environment (``Discrete(2^K)`` actions)."""

    def __init__(self, env: KnowledgeDistillationEnv, work_dir: Path, evaluate_dev: bool = True):
        if env.config.action_space != "discrete":
            raise ValueError("the tree builder enumerates a Discrete(2^K) action space; build the environment with "
                             "action_space='discrete'")
        if env.config.exploration_bonus:
            raise ValueError("tables hold task rewards only; build the environment with exploration_bonus=0")
        self.env, self.work_dir, self.evaluate_dev = env, Path(work_dir), evaluate_dev
        self.num_actions = int(env.action_space.n)
        self.phases = env.config.phases

    def job_path(self, seed: int, prefix: tuple[int, ...]) -> Path:
        return self.work_dir / f"seed{seed}" / f"prefix-{history_key(prefix).replace(',', '-') or 'root'}.jsonl"

    def jobs(self, seeds: Iterable[int], depth: int) -> list[tuple[int, tuple[int, ...]]]:
        """(seed, prefix) jobs that together cover every seed's tree: prefixes of ``depth`` actions."""
        depth = min(depth, self.phases)
        prefixes = list(itertools.product(range(self.num_actions), repeat=depth))
        return [(seed, tuple(prefix)) for seed in seeds for prefix in prefixes]

    def job_nodes(self, prefix: tuple[int, ...]) -> int:
        """Nodes a job records: the path to its prefix, and the prefix's subtree."""
        return len(prefix) + subtree_size(self.num_actions, self.phases - len(prefix)) + 1

    def run_job(self, seed: int, prefix: tuple[int, ...] = (), progress: tqdm | None = None) -> JobProgress:
        """Builds (or resumes) the part of ``seed``'s tree at and below ``prefix``."""
        if any(not 0 <= a < self.num_actions for a in prefix) or len(prefix) > self.phases:
            raise ValueError(f"prefix {prefix} is not a path of a {self.phases}-phase tree over {self.num_actions} actions")
        job = JobFile(self.job_path(seed, prefix))
        stats = JobProgress()
        start = time.perf_counter()
        try:
            if history_key(prefix) in job.complete:
                stats.reused = len(job.records)
                if progress is not None:
                    progress.update(self.job_nodes(prefix))
                return stats
            observation, _ = self.env.reset(seed=seed)
            root = self._record((), observation, self._eval_state(), None, None)
            self._store(job, root, stats, progress)
            self.initial = {"metric": root["metric"], "loss": root["loss"]}
            history: tuple[int, ...] = ()
            for action in prefix:  # the path down to the job's subtree
                before = self._eval_state()
                observation, _, terminated, _, info = self.env.step(action)
                history = (*history, action)
                self._store(job, self._record(history, observation, before, info, terminated), stats, progress)
                if terminated:
                    break
            else:
                self._expand(job, history, stats, progress)
            job.mark_complete(prefix)
        finally:
            job.close()
            stats.seconds = time.perf_counter() - start
        return stats

    def time_nodes(self, seed: int) -> dict[str, Any]:
        """Measures what a node costs, writing nothing: one phase of every action from ``seed``'s
        initial student (each subset once, as every level of the tree has them) and one dev
        evaluation (what a leaf adds). Every level enumerates the actions uniformly, so the mean
        phase time is the mean at every depth; a few first nodes of the depth-first order are not
        (their actions are the cheap, low-numbered subsets)."""
        self.env.reset(seed=seed)
        state = self.env.get_state()
        phases = []
        for action in range(self.num_actions):
            self.env.set_state(state)
            tick = time.perf_counter()
            self.env.step(action)
            phases.append(time.perf_counter() - tick)
        tick = time.perf_counter()
        self.env.trainer.evaluate("dev")
        dev = time.perf_counter() - tick
        self.env.set_state(state)
        return {"phase_seconds": phases, "dev_seconds": dev,
                "seed_seconds": float(np.mean(phases)) * tree_size(self.num_actions, self.phases)
                + (dev * self.num_actions**self.phases if self.evaluate_dev else 0.0)}

    # ------------------------------------------------------------------ internals

    def _eval_state(self) -> dict[str, float]:
        return {"metric": float(self.env._metric), "loss": float(self.env._loss)}

    def _expand(self, job: JobFile, history: tuple[int, ...], stats: JobProgress, progress) -> None:
        """Depth first below ``history``; the environment stands at ``history`` on entry."""
        state = self.env.get_state()
        for action in range(self.num_actions):
            child = (*history, action)
            key = history_key(child)
            if key in job.complete:
                if progress is not None:
                    progress.update(1 + subtree_size(self.num_actions, self.phases - len(child)))
                continue
            self.env.set_state(state)
            before = self._eval_state()
            observation, _, terminated, _, info = self.env.step(action)
            record = self._record(child, observation, before, info, terminated)
            self._store(job, record, stats, progress)
            if terminated:
                if progress is not None:  # a crash ends the episode early: its subtree does not exist
                    progress.update(subtree_size(self.num_actions, self.phases - len(child)))
            else:
                self._expand(job, child, stats, progress)
            job.mark_complete(child)
        self.env.set_state(state)

    def _store(self, job: JobFile, record: dict[str, Any], stats: JobProgress, progress) -> None:
        if history_key(record["history"]) in job.records:
            stats.reused += 1
        else:
            stats.computed += 1
        job.add_record(record)
        if progress is not None:
            progress.update(1)

    def _record(self, history: tuple[int, ...], observation: np.ndarray, before: dict[str, float] | None,
                info: dict[str, Any] | None, terminated: bool | None) -> dict[str, Any]:
        """One node: what the live environment returns there, and what analysis needs."""
        env, trainer = self.env, self.env.trainer
        record: dict[str, Any] = {
            "format": RECORD_FORMAT, "history": list(history), "depth": len(history),
            "observation": [float(x) for x in np.asarray(observation, dtype=np.float32)],
            "metric": float(env._metric), "loss": float(env._loss), "agreement": float(env._agreement),
        }
        if info is None:  # the root: the initial student
            record["reward_split"] = {k: float(v) for k, v in env._initial_eval.items()}
            return record
        after = self._eval_state()
        terminal = bool(terminated)
        record.update(
            status=info["status"], terminal=terminal,
            rewards=all_rewards(before, after, self.initial, terminal) if info["status"] == "ok" else {},
            reward_split={k: float(v) for k, v in info.get("reward_split", {}).items()},
            losses={k: float(v) for k, v in info["losses"].items()},
            normalized_losses={k: float(v) for k, v in info["normalized_losses"].items()},
            grad_norms={k: float(v) for k, v in info["grad_norms"].items()},
            learning_rate=float(info["learning_rate"]), weights=dict(info["action_weights"]),
            wall_time_s=float(info["phase_wall_time_s"]),
        )
        if info["status"] != "ok":
            record["crash"] = info.get("crash", "")
        if terminal and self.evaluate_dev and info["status"] == "ok":
            tick = time.perf_counter()
            record["dev"] = {k: float(v) for k, v in trainer.evaluate("dev").items()}
            record["dev_wall_time_s"] = time.perf_counter() - tick
        return record


def collect_seed(work_dir: Path, seed: int, num_actions: int, phases: int) -> list[dict[str, Any]]:
    """Every record of one seed's tree from its job files, deduplicated (path nodes shared by
    several jobs must agree exactly) and checked complete; sorted by depth, then history."""
    records: dict[str, dict[str, Any]] = {}
    files = sorted((Path(work_dir) / f"seed{seed}").glob("prefix-*.jsonl"))
    if not files:
        raise ValueError(f"no records for seed {seed} under {work_dir}; build the tree first")
    for path in files:
        job = JobFile(path)
        job.close()
        for key, record in job.records.items():
            known = records.get(key)
            if known is not None and _comparable(known) != _comparable(record):
                raise RuntimeError(f"seed {seed}: node [{key}] differs between job files: the build is not deterministic")
            records.setdefault(key, record)
    missing = []
    for key, record in records.items():
        if record["depth"] < phases and (record["depth"] == 0 or (record["status"] == "ok" and not record["terminal"])):
            for action in range(num_actions):
                child = f"{key},{action}" if key else str(action)
                if child not in records:
                    missing.append(child)
    if "" not in records or missing:
        raise ValueError(f"seed {seed}: the tree is incomplete ({len(missing)} nodes missing, e.g. "
                         f"{missing[:3]}); run the build again to finish it")
    return sorted(records.values(), key=lambda r: (r["depth"], r["history"]))
