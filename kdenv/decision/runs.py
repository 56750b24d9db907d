"""One evaluation run as a self-contained job: a policy distils a student for one seed, the student
is scored on GLUE dev, and the result is written (atomically) to the evaluation cache, where a
rerun finds it. The same function runs in the driver or in a Ray worker; each process keeps the
environments and dev scorers it built, so consecutive jobs with the same configuration reuse them
(as the in-process evaluation always did)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdenv.config import DataConfig, DistillConfig, EnvConfig, from_dict
from kdenv.decision.algorithms import SavedAgent, check_agent_fits
from kdenv.decision.factory import EnvironmentSetup, build_environment
from kdenv.decision.policies import FixedPolicy
from kdenv.decision.schedules import run_episode
from kdenv.decision.shared_prefixes import SharedPrefixes
from kdenv.decision.wrappers import MultiDiscreteOnOff
from kdenv.engine.evaluation import DevScorer
from kdenv.io import atomic_write, record_checksum
from kdenv.paths import runs_dir

_ENVIRONMENTS: dict[str, EnvironmentSetup] = {}
_SCORERS: dict[str, DevScorer] = {}
_SHARED: dict[str, SharedPrefixes] = {}


@dataclass(frozen=True)
class EvaluationJob:
    """Everything one run needs, as plain data (picklable, small): no model, no cache."""

    policy: str  # a fixed policy's name, or agent:<path>
    label: str
    seed: int
    tag: str
    data: dict[str, Any]
    distill: dict[str, Any]
    env: dict[str, Any]
    key: dict[str, Any]  # the run's identity, stored with its result
    path: str  # where the result is cached
    unsafe_load_agents: bool = False  # unpickle what kdenv cannot rebuild from an agent file (--unsafe-load-agents)

    @property
    def agent_path(self) -> Path | None:
        return Path(self.policy.removeprefix("agent:")) if self.policy.startswith("agent:") else None


def _name(*parts: Any) -> str:
    # The runs folder and the run identity (teacher and data fingerprints) are part of the name:
    # a process never answers a job with an environment built from another teacher.
    return json.dumps([str(runs_dir()), *parts], sort_keys=True, default=str)


def _environment_name(job: EvaluationJob) -> str:
    return _name({k: v for k, v in job.key.items() if k not in ("policy", "agent_sha256")})


def environment_for(job: EvaluationJob, data: DataConfig, distill: DistillConfig, env: EnvConfig) -> EnvironmentSetup:
    """This process's environment for the job's configuration and identity, built once."""
    name = _environment_name(job)
    if name not in _ENVIRONMENTS:
        _ENVIRONMENTS[name] = build_environment(data.task, env, data, distill)
    return _ENVIRONMENTS[name]


def shared_for(job: EvaluationJob, setup: EnvironmentSetup) -> SharedPrefixes:
    """This process's prefix-sharing wrapper around the job's environment (kept across a seed's runs)."""
    name = _environment_name(job)
    if name not in _SHARED or _SHARED[name].env is not setup.env:
        _SHARED[name] = SharedPrefixes(setup.env)
    return _SHARED[name]


def scorer_for(job: EvaluationJob, setup: EnvironmentSetup) -> DevScorer:
    """This process's dev scorer (the teacher's dev outputs and saliency, computed once)."""
    name = _name(job.data, job.key.get("teacher"), job.key.get("data"))
    if name not in _SCORERS:
        _SCORERS[name] = DevScorer(setup.distillation.teacher, setup.env.trainer)
    return _SCORERS[name]


def release() -> None:
    """Drops this process's environments and scorers (their caches can be large)."""
    _ENVIRONMENTS.clear()
    _SCORERS.clear()
    _SHARED.clear()


def run_evaluation_job(job: EvaluationJob, shared: bool = False) -> dict[str, Any]:
    """Runs one (policy, seed), writes the result to ``job.path`` and returns it. ``shared``: phases
    this process already trained for the seed with the same actions are restored, not trained again
    (kdenv.decision.shared_prefixes)."""
    data, distill = from_dict(DataConfig, job.data), from_dict(DistillConfig, job.distill)
    env_config = from_dict(EnvConfig, job.env)
    setup = environment_for(job, data, distill, env_config)
    env = setup.env
    stepping = shared_for(job, setup) if shared else env
    scorer = scorer_for(job, setup)
    agent_seconds = None
    if job.agent_path is not None:
        saved = SavedAgent.open(job.agent_path)
        acting_env = MultiDiscreteOnOff(stepping) if saved.algorithm.wrap_multidiscrete else stepping
        policy = saved.load(allow_pickle=job.unsafe_load_agents, spaces_from=acting_env)
        check_agent_fits(policy, acting_env, str(job.agent_path))
        summary = job.agent_path.parent / "comparison_summary.json"
        agent_seconds = json.loads(summary.read_text()).get("agent_training_s") if summary.is_file() else None
    else:
        acting_env, policy = stepping, FixedPolicy(job.policy, env, seed=job.seed)
    record = run_episode(acting_env, policy, job.seed, job.label)
    scores = scorer.score(env.trainer.student)
    result = {
        "policy": job.label, "seed": job.seed, "tag": job.tag, "knowledge": env_config.knowledge,
        "schedule": record.schedule, "return": record.episode_return, "status": record.status,
        "wall_time_s": record.wall_time_s, "reused_phases": stepping.reused if shared else 0, "dev": scores["metrics"], "label_loyalty": scores["label_loyalty"],
        "probability_loyalty": scores["probability_loyalty"], "saliency_loyalty": scores["saliency_loyalty"],
        "teacher_dev": scorer.teacher_metrics, "agent_training_s": agent_seconds, "config": job.key,
        # The reward split's metric (what rewards are computed from) before and after the episode.
        "reward_split": {"metric": env.episode.metric_name, "initial": env.episode.initial[env.episode.metric_name],
                         "final": record.metrics[-1] if record.metrics else float("nan")},
    }
    result["sha256"] = result_checksum(result)  # checked when the cache is read (evaluation.read_cached_run)
    with atomic_write(job.path) as handle:
        json.dump(result, handle, indent=2)
    return result


@dataclass(frozen=True)
class SeedGroup:
    """Runs of one seed and one environment configuration, run one after another in one process so that
    they share their common prefixes (``shared``), or a single run that cannot share."""

    jobs: tuple[EvaluationJob, ...]
    shared: bool


def run_seed_group(group: SeedGroup) -> list[dict[str, Any]]:
    """Every run of ``group``, in order (each cached as it finishes)."""
    return [run_evaluation_job(job, shared=group.shared) for job in group.jobs]


def seed_groups(jobs: list[EvaluationJob]) -> list[SeedGroup]:
    """``jobs`` grouped by seed and environment configuration, in first-seen order; runs whose environment
    pays an exploration bonus stay alone (see kdenv.decision.shared_prefixes)."""
    groups: dict[str, list[EvaluationJob]] = {}
    alone = []
    for job in jobs:
        if job.env.get("exploration_bonus", 0):
            alone.append(SeedGroup((job,), shared=False))
        else:
            groups.setdefault(json.dumps([job.seed, _environment_name(job)]), []).append(job)
    return [SeedGroup(tuple(members), shared=True) for members in groups.values()] + alone


def result_checksum(result: dict[str, Any]) -> str:
    """The SHA-256 of a run's result (without its own checksum field), as cached."""
    return record_checksum({key: value for key, value in result.items() if key != "sha256"})
