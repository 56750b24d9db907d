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

import hashlib
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

from kdenv.benchmark.outputs import encode
from kdenv.benchmark.table import history_key, subtree_size, tree_problems, tree_size  # noqa: F401  (re-exported)
from kdenv.decision.env import KnowledgeDistillationEnv
from kdenv.decision.rewards import RECORDED_REWARDS, REWARDS, RewardInput

RECORD_FORMAT = 1
TIMED_UPDATES = 16  # --estimate times a phase over at most this many updates, then scales
VOLATILE = ("wall_time_s", "dev_wall_time_s")  # measured, not computed: never compared


def parse_prefix(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip()) if text.strip() else ()


def all_rewards(step: RewardInput) -> dict[str, float]:
    """The recorded rewards (unscaled) for one phase, from the input the environment gave its own: a
    fixed set, so that records stay comparable as rewards are added (the others are derived at load)."""
    return {name: float(REWARDS[name](step)) for name in RECORDED_REWARDS}


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in VOLATILE}


@dataclass
class JobProgress:
    computed: int = 0
    reused: int = 0
    seconds: float = 0.0


class JobBusy(RuntimeError):
    """Another process is building this job right now (it holds the job's lock)."""


def _checksum(item: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(item, sort_keys=True).encode()).hexdigest()


def _covers(marker: str, key: str) -> bool:
    """Whether the completion marker of ``marker``'s subtree vouches for node ``key``."""
    return marker == "" or key == marker or key.startswith(marker + ",")


class JobFile:
    """The record file of one (seed, prefix) job: one JSON line per node or completion marker, each
    carrying the SHA-256 of its own content, appended and fsynced one at a time.

    Self-healing and tamper-evident, so that a build always resumes with the same command:
      - a last line cut short (a kill, a full disk) is cut off, and its node is recomputed;
      - a line that is not JSON, lacks its checksum or history, or whose checksum does not match
        (an edit) is dropped, together with every completion marker that could vouch for it
        (all of them when the damaged line names no node), so that its nodes are recomputed;
        a recomputed node that still has a record must equal it exactly;
      - the file is rewritten clean (temporary file, then rename) before anything is appended.
    ``repairs`` says what was healed. With ``lock`` (a build), one process at a time works on a
    job: another one gets :class:`JobBusy`, or waits with ``wait``."""

    def __init__(self, path: Path, lock: bool = True, wait: bool = False):
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.complete: set[str] = set()
        self.repairs: list[str] = []
        self._handle = None
        self._lock = None
        self._writable = lock  # a reader (lock=False) heals in memory only
        if lock:
            self._acquire(wait)
        try:
            if self.path.is_file():
                self._load()
            if lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = open(self.path, "a")
        except BaseException:
            self.close()
            raise

    def _acquire(self, wait: bool) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path.with_suffix(".lock"), "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise JobBusy(f"{self.path} is being built by another process") from None

    def _load(self) -> None:
        raw = self.path.read_bytes()
        kept: list[dict[str, Any]] = []
        damaged: set[str] = set()
        unknown = 0
        if raw and not raw.endswith(b"\n"):
            raw = raw[: raw.rfind(b"\n") + 1]
            self.repairs.append("cut a last line that was cut short")
        for line in raw.decode("utf-8", errors="replace").splitlines():
            item, key = self._verify(line)
            if item is None:
                if key is None:
                    unknown += 1
                else:
                    damaged.add(key)
                continue
            if item.get("complete"):
                self.complete.add(key)
            elif key in self.records:
                if _comparable(self.records[key]) != _comparable(item):
                    damaged.add(key)
                continue
            else:
                self.records[key] = item
            kept.append(item)
        if damaged or unknown:
            for key in damaged:
                self.records.pop(key, None)
            dropped = {m for m in self.complete if unknown or any(_covers(m, key) for key in damaged)}
            self.complete -= dropped
            kept = [item for item in kept if history_key(item["history"]) in
                    (self.complete if item.get("complete") else self.records)]
            self.repairs.append(f"dropped {len(damaged) + unknown} damaged or altered line(s)"
                                + (f" and {len(dropped)} completion marker(s) over them" if dropped else ""))
        if self.repairs and self._writable:
            from kdenv.io import atomic_write

            with atomic_write(self.path) as handle:
                handle.writelines(self._line(item) for item in kept)

    @staticmethod
    def _verify(line: str) -> tuple[dict[str, Any] | None, str | None]:
        """(item, key) for a sound line; (None, key) for a damaged one that names its node; (None, None)."""
        try:
            item = json.loads(line)
            key = history_key(item["history"]) if isinstance(item, dict) and isinstance(item.get("history"), list) else None
        except (json.JSONDecodeError, TypeError, ValueError):
            return None, None
        if key is None:
            return None, None
        checksum = item.pop("sha256", None)
        if checksum != _checksum(item) or not (item.get("complete") is True or "depth" in item):
            return None, key
        return item, key

    @staticmethod
    def _line(item: dict[str, Any]) -> str:
        return json.dumps({**item, "sha256": _checksum(item)}, sort_keys=True) + "\n"

    def append(self, item: dict[str, Any]) -> None:
        try:
            self._handle.write(self._line(item))
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as error:
            raise OSError(error.errno, f"cannot write the tree's record file {self.path} ({error.strerror or error}); "
                                       "free space or fix the folder, then rerun the same command: the build resumes "
                                       "and heals the file") from None

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
        if self._handle is not None:
            try:
                self._handle.close()
            except OSError:  # a write that failed already said so; what it left is healed on the next load
                pass
            self._handle = None
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None


@dataclass(frozen=True)
class DevScoring:
    """Which leaves a tree build scores on GLUE dev, and on which examples: a recorded choice of
    the build (dev is for analysis only; no reward reads it). ``examples``: the whole dev split
    (None) or a fixed subsample of that many examples drawn with ``seed``; ``leaves``: the share of
    leaves scored, chosen by a hash of (episode seed, schedule), so the choice is the same on every
    machine and every rerun (0: none, 1: all)."""

    examples: int | None = None
    leaves: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.examples is not None and (not isinstance(self.examples, int) or self.examples < 1):
            raise ValueError(f"dev examples must be a whole number >= 1 or all, not {self.examples!r}")
        if not 0.0 <= float(self.leaves) <= 1.0:
            raise ValueError(f"the share of leaves scored on dev must be in [0, 1], not {self.leaves!r}")

    @property
    def is_default(self) -> bool:
        return self == DevScoring()

    def indices(self, dev_size: int) -> np.ndarray | None:
        """The dev examples scored (sorted), or None for all of them."""
        if self.examples is None or self.examples >= dev_size:
            return None
        return np.sort(np.random.default_rng(self.seed).choice(dev_size, self.examples, replace=False))

    def scores_leaf(self, seed: int, history: Iterable[int]) -> bool:
        if self.leaves >= 1.0:
            return True
        digest = hashlib.sha256(f"{seed}:{history_key(history)}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.leaves

    def describe(self, dev_size: int) -> str:
        if self.leaves <= 0:
            return "no leaf scored on dev"
        examples = "the whole dev split" if self.indices(dev_size) is None else \
            f"a fixed subsample of {self.examples} of {dev_size} dev examples (seed {self.seed})"
        leaves = "every leaf" if self.leaves >= 1 else f"{self.leaves:.0%} of leaves (by a hash of seed and schedule)"
        return f"{leaves} on {examples}"

    def record(self, dev_size: int) -> dict[str, Any]:
        return {"examples": self.examples, "leaves": self.leaves, "seed": self.seed, "dev_size": dev_size,
                "described": self.describe(dev_size)}


class TreeBuilder:
    """Enumerates the schedule tree of one environment (``Discrete(2^K)`` actions)."""

    def __init__(self, env: KnowledgeDistillationEnv, work_dir: Path, evaluate_dev: bool = True,
                 dev_scoring: DevScoring | None = None, keep_outputs: bool = False):
        if env.config.action_space != "discrete":
            raise ValueError("the tree builder enumerates a Discrete(2^K) action space; build the environment with "
                             "action_space='discrete'")
        if env.config.exploration_bonus:
            raise ValueError("tables hold task rewards only; build the environment with exploration_bonus=0")
        self.dev_scoring = dev_scoring or DevScoring()
        self.env, self.work_dir = env, Path(work_dir)
        self.evaluate_dev = evaluate_dev and self.dev_scoring.leaves > 0
        self.dev_indices = self.dev_scoring.indices(len(env.trainer.data["dev"]))
        self.num_actions = int(env.action_space.n)
        self.phases = env.config.phases
        self.keep_outputs = keep_outputs  # per-example outputs in every record (kdenv.benchmark.outputs)
        self._seed = 0

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

    def run_job(self, seed: int, prefix: tuple[int, ...] = (), progress: tqdm | None = None,
                wait: bool = True) -> JobProgress:
        """Builds (or resumes) the part of ``seed``'s tree at and below ``prefix``. Another process
        building the same job is waited for (``wait``), or refused with :class:`JobBusy`."""
        if any(not 0 <= a < self.num_actions for a in prefix) or len(prefix) > self.phases:
            raise ValueError(f"prefix {prefix} is not a path of a {self.phases}-phase tree over {self.num_actions} actions")
        job = JobFile(self.job_path(seed, prefix), wait=wait)
        for repair in job.repairs:
            message = f"healed {job.path}: {repair}; those nodes are recomputed"
            (progress.write if isinstance(progress, tqdm) else print)(message)
        stats = JobProgress()
        start = time.perf_counter()
        try:
            if history_key(prefix) in job.complete:
                stats.reused = len(job.records)
                if progress is not None:
                    progress.update(self.job_nodes(prefix))
                return stats
            self._store(job, self.root_record(seed), stats, progress)
            history: tuple[int, ...] = ()
            for action in prefix:  # the path down to the job's subtree
                observation, _, terminated, _, info = self.env.step(action)
                history = (*history, action)
                self._store(job, self._record(history, observation, info, terminated), stats, progress)
                if terminated:
                    break
            else:
                self._expand(job, history, stats, progress)
            job.mark_complete(prefix)
        finally:
            job.close()
            stats.seconds = time.perf_counter() - start
        return stats

    def root_record(self, seed: int) -> dict[str, Any]:
        """Resets the environment to ``seed``'s initial student and returns its root record."""
        self._seed = seed
        observation, _ = self.env.reset(seed=seed)
        return self._record((), observation, None, None)

    def time_nodes(self, seed: int) -> dict[str, Any]:
        """Measures what a node costs, writing nothing: one phase of every action from ``seed``'s
        initial student (each subset once, as every level of the tree has them) and one dev
        evaluation (what a leaf adds). Every level enumerates the actions uniformly, so the mean
        phase time is the mean at every depth; a few first nodes of the depth-first order are not
        (their actions are the cheap, low-numbered subsets). A phase of more than ``TIMED_UPDATES``
        updates is timed over that many and scaled (the reward-split evaluation timed once), so an
        estimate of any budget returns in seconds."""
        import dataclasses

        config, updates = self.env.config, self.env.config.updates_per_phase
        timed = min(updates, TIMED_UPDATES)
        self.env.reset(seed=seed)
        state = self.env.get_state()
        tick = time.perf_counter()
        self.env.trainer.evaluate("reward")
        evaluation = time.perf_counter() - tick
        phases = []
        self.env.config = dataclasses.replace(config, updates_per_phase=timed)
        try:
            for action in range(self.num_actions):
                self.env.set_state(state)
                tick = time.perf_counter()
                self.env.step(action)
                seconds = time.perf_counter() - tick
                phases.append(evaluation + max(seconds - evaluation, 0.0) * updates / timed)
        finally:
            self.env.config = config
        tick = time.perf_counter()
        self.env.trainer.evaluate("dev", self.dev_indices)
        dev = time.perf_counter() - tick
        self.env.set_state(state)
        scored = self.num_actions**self.phases * (self.dev_scoring.leaves if self.evaluate_dev else 0.0)
        return {"phase_seconds": phases, "dev_seconds": dev, "scored_leaves": scored,
                "seed_seconds": float(np.mean(phases)) * tree_size(self.num_actions, self.phases) + dev * scored}

    # ------------------------------------------------------------------ internals

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
            observation, _, terminated, _, info = self.env.step(action)
            record = self._record(child, observation, info, terminated)
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

    def _record(self, history: tuple[int, ...], observation: np.ndarray, info: dict[str, Any] | None,
                terminated: bool | None) -> dict[str, Any]:
        """One node: what the live environment returns there, and what analysis needs."""
        env, trainer, episode = self.env, self.env.trainer, self.env.episode
        record: dict[str, Any] = {
            "format": RECORD_FORMAT, "history": list(history), "depth": len(history),
            "observation": [float(x) for x in np.asarray(observation, dtype=np.float32)],
            "metric": float(episode.metric), "loss": float(episode.loss), "agreement": float(episode.agreement),
        }
        if info is None:  # the root: the initial student
            record["reward_split"] = {k: float(v) for k, v in env.initial_eval.items()}
            if self.keep_outputs:
                record["outputs"] = {"reward": encode(env.initial_outputs)}
            return record
        terminal = bool(terminated)
        record.update(
            status=info["status"], terminal=terminal,
            rewards=all_rewards(info["reward_input"]) if info["status"] == "ok" else {},
            reward_split={k: float(v) for k, v in info.get("reward_split", {}).items()},
            losses={k: float(v) for k, v in info["losses"].items()},
            normalized_losses={k: float(v) for k, v in info["normalized_losses"].items()},
            grad_norms={k: float(v) for k, v in info["grad_norms"].items()},
            learning_rate=float(info["learning_rate"]), weights=dict(info["action_weights"]),
            wall_time_s=float(info["phase_wall_time_s"]),
        )
        if info["status"] != "ok":
            record["crash"] = info.get("crash", "")
        elif self.keep_outputs:
            record["outputs"] = {"reward": encode(info["reward_outputs"])}
        if terminal and self.evaluate_dev and info["status"] == "ok" and self.dev_scoring.scores_leaf(self._seed, history):
            tick = time.perf_counter()
            metrics, outputs = trainer.evaluate_with_outputs("dev", self.dev_indices)
            record["dev"] = {k: float(v) for k, v in metrics.items()}
            record["dev_wall_time_s"] = time.perf_counter() - tick
            if self.keep_outputs:
                record["outputs"]["dev"] = encode(outputs)
        return record

    def scored_examples(self) -> dict[str, dict[str, Any]]:
        """What a seed's outputs are scored against, per split: how many examples, the fingerprint of
        their labels (labels are data: a table stores only this) and the teacher's outputs there."""
        from kdenv.benchmark.outputs import labels_fingerprint

        trainer = self.env.trainer
        result = {}
        for split, indices in (("reward", None), ("dev", self.dev_indices)):
            labels = trainer.data[split].labels if indices is None else trainer.data[split].labels[indices]
            teacher = trainer.eval_teacher_logits.get(split)
            if teacher is not None and indices is not None:
                teacher = teacher[np.asarray(indices)]
            result[split] = {"examples": int(len(labels)), "labels": labels_fingerprint(labels), "teacher": teacher}
        return result


def collect_seed(work_dir: Path, seed: int, num_actions: int, phases: int) -> list[dict[str, Any]]:
    """Every record of one seed's tree from its job files, deduplicated (path nodes shared by
    several jobs must agree exactly) and checked complete; sorted by depth, then history."""
    records: dict[str, dict[str, Any]] = {}
    files = sorted((Path(work_dir) / f"seed{seed}").glob("prefix-*.jsonl"))
    if not files:
        raise ValueError(f"no records for seed {seed} under {work_dir}; build the tree first")
    for path in files:
        job = JobFile(path, lock=False)
        for key, record in job.records.items():
            known = records.get(key)
            if known is not None and _comparable(known) != _comparable(record):
                raise RuntimeError(f"seed {seed}: node [{key}] differs between job files: the build is not deterministic")
            records.setdefault(key, record)
    problems = tree_problems(records, num_actions, phases)
    if problems:
        raise ValueError(f"seed {seed}: the tree is incomplete ({len(problems)} problem(s), e.g. {problems[0]}); run "
                         "the build again to finish it")
    return sorted(records.values(), key=lambda r: (r["depth"], r["history"]))
