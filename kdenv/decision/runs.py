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
from kdenv.decision.wrappers import MultiDiscreteOnOff
from kdenv.engine.evaluation import DevScorer
from kdenv.io import atomic_write, record_checksum
from kdenv.paths import runs_dir

_ENVIRONMENTS: dict[str, EnvironmentSetup] = {}
_SCORERS: dict[str, DevScorer] = {}


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


def environment_for(job: EvaluationJob, data: DataConfig, distill: DistillConfig, env: EnvConfig) -> EnvironmentSetup:
    """This process's environment for the job's configuration and identity, built once."""
    identity = {k: v for k, v in job.key.items() if k not in ("policy", "agent_sha256")}
    name = _name(identity)
    if name not in _ENVIRONMENTS:
        _ENVIRONMENTS[name] = build_environment(data.task, env, data, distill)
    return _ENVIRONMENTS[name]


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


def run_evaluation_job(job: EvaluationJob) -> dict[str, Any]:
    """Runs one (policy, seed), writes the result to ``job.path`` and returns it."""
    data, distill = from_dict(DataConfig, job.data), from_dict(DistillConfig, job.distill)
    env_config = from_dict(EnvConfig, job.env)
    setup = environment_for(job, data, distill, env_config)
    env = setup.env
    scorer = scorer_for(job, setup)
    agent_seconds = None
    if job.agent_path is not None:
        saved = SavedAgent.open(job.agent_path)
        acting_env = MultiDiscreteOnOff(env) if saved.algorithm.wrap_multidiscrete else env
        policy = saved.load(allow_pickle=job.unsafe_load_agents, spaces_from=acting_env)
        check_agent_fits(policy, acting_env, str(job.agent_path))
        summary = job.agent_path.parent / "comparison_summary.json"
        agent_seconds = json.loads(summary.read_text()).get("agent_training_s") if summary.is_file() else None
    else:
        acting_env, policy = env, FixedPolicy(job.policy, env, seed=job.seed)
    record = run_episode(acting_env, policy, job.seed, job.label)
    scores = scorer.score(env.trainer.student)
    result = {
        "policy": job.label, "seed": job.seed, "tag": job.tag, "knowledge": env_config.knowledge,
        "schedule": record.schedule, "return": record.episode_return, "status": record.status,
        "wall_time_s": record.wall_time_s, "dev": scores["metrics"], "label_loyalty": scores["label_loyalty"],
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


def result_checksum(result: dict[str, Any]) -> str:
    """The SHA-256 of a run's result (without its own checksum field), as cached."""
    return record_checksum({key: value for key, value in result.items() if key != "sha256"})
