"""Policies evaluated against each other as full distillations: the one evaluation API, which
``agents/evaluate.py`` and ``agents/live_check.py`` both call.

A :class:`EvaluationRequest` names the task, the policies, the episode seeds and the trainer's
configuration; :func:`evaluate_policies` plans it (every policy checked before any run starts),
keys every run by what changes its result (the policy, the configs, the teacher's and data's
fingerprints, the software), answers what it can from the evaluation cache (each cached run
carries a checksum: a damaged or edited one is named and run again, never used), runs the rest
(in process or as Ray jobs) and returns an :class:`EvaluationResult`. The report is written by
:mod:`kdenv.decision.evaluation_report`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from kdenv.config import (
    ConfigError,
    DataConfig,
    DistillConfig,
    EnvConfig,
    current_names,
    environment_record,
    from_dict,
    to_dict,
)
from kdenv.decision.algorithms import SavedAgent
from kdenv.decision.policies import check_policy, recipe_knowledge
from kdenv.decision.runs import (
    EvaluationJob,
    SeedGroup,
    release,
    result_checksum,
    run_evaluation_job,
    run_seed_group,
    seed_groups,
)
from kdenv.engine.data import load_raw_splits
from kdenv.engine.distillation import ensure_teacher, prepare_distillation, student_record
from kdenv.engine.recipes import RECIPES
from kdenv.engine.runtime import make_runtime
from kdenv.engine.tasks import TaskSpec, get_task
from kdenv.engine.teacher import load_teacher
from kdenv.io import check_writable
from kdenv.jobs import JobRunner
from kdenv.paths import runs_dir


@dataclass(frozen=True)
class EvaluationRequest:
    """What to evaluate: every policy on every seed, with one trainer configuration."""

    policies: list[str]  # fixed policies' names, or agent:<path to agent.zip>
    seeds: list[int]  # episode seeds
    data: DataConfig
    distill: DistillConfig
    budget: dict[str, Any]  # EnvConfig's phases, updates_per_phase and episode_epochs: one episode's length
    knowledge: list[str]  # what non-recipe fixed policies are offered
    out: Path  # where the report goes
    baseline: str | None = None  # named in advance; None: the best non-agent policy on these seeds
    unsafe_load_agents: bool = False
    progress: bool = True
    # a seed's runs in one process, their common action prefixes trained once (kdenv.decision.shared_prefixes)
    share_prefixes: bool = True

    @property
    def task(self) -> TaskSpec:
        return get_task(self.data.task)


@dataclass
class EvaluationResult:
    """Every run's result (``runs``: one dict per policy and seed, as cached) and what they were asked."""

    request: EvaluationRequest
    runs: list[dict[str, Any]]
    baseline: str | None  # the baseline's label (an agent's: agent:<algo>@<folder>), or None: chosen in the report
    plans: list[dict[str, Any]] = field(default_factory=list)


def policy_knowledge(name: str, default: list[str]) -> list[str]:
    return recipe_knowledge(name) if name in RECIPES else default


def plan_policies(names: list[str], budget_fields: dict[str, Any], knowledge: list[str],
                  unsafe_load_agents: bool = False) -> list[dict[str, Any]]:
    """Every policy with the environment it runs in, checked before any run starts: fixed policies
    against the knowledge on offer, agents against the env spec they were trained with."""
    plans = []
    for name in names:
        if name.startswith("agent:"):
            path = name.removeprefix("agent:")
            saved = SavedAgent.open(path)
            saved.check_safe(unsafe_load_agents)  # a file that would run code is refused before any work
            env_config = from_dict(EnvConfig, {**current_names(EnvConfig, saved.record["env"]), **budget_fields})  # the agent's own spaces
            label = f"agent:{saved.algorithm.name}@{Path(path).parent.name}"
            plans.append({"name": name, "label": label, "env": env_config, "agent": saved,
                          "agent_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()})
        else:
            offered = policy_knowledge(name, knowledge)
            env_config = EnvConfig(knowledge=offered, action_space="box", **budget_fields)
            check_policy(name, offered, env_config.phases)
            plans.append({"name": name, "label": name, "env": env_config, "agent": None})
    return plans


def check_request(request: EvaluationRequest) -> list[dict[str, Any]]:
    """The request's plans, or a clear error before any work: seeds, policies and the baseline."""
    if not request.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in request.seeds):
        raise ConfigError(f"episode seeds must be whole numbers >= 0, at least one, not {request.seeds}")
    if not request.policies:
        raise ConfigError("no policy to evaluate; name at least one (e.g. kd,gkd,all)")
    plans = plan_policies(request.policies, request.budget, request.knowledge, request.unsafe_load_agents)
    if request.baseline is not None and not any(request.baseline in (p["name"], p["label"]) for p in plans):
        raise ConfigError(f"baseline {request.baseline!r} is not one of the policies ({', '.join(request.policies)}); "
                          "add it there")
    return plans


def run_identity(data_config: DataConfig, distill_config: DistillConfig, runtime, threads: int,
                 progress: bool) -> dict[str, Any]:
    """What changes a run besides its policy and configs: the teacher's weights, the data files'
    contents and the software, with the torch threads the run computes with (a Ray task's, not
    this driver's). Part of every cached run's key, so a re-fine-tuned teacher or changed data is
    never answered from the cache."""
    ensure_teacher(data_config, runtime, progress, base_model=distill_config.teacher_model)
    _, _, loaded = load_teacher(data_config.task)
    raw = load_raw_splits(get_task(data_config.task), data_config.data_dir)
    software = environment_record()
    student = student_record(distill_config)  # a pre-trained student's folder changes its runs too
    return {"teacher": loaded["fingerprint"], "data": {name: split.fingerprint() for name, split in raw.items()},
            **({"student": student} if student else {}),
            "software": {**{k: software[k] for k in ("python", "torch", "transformers")}, "torch_threads": str(threads)}}


def read_cached_run(path: Path, say: Callable[[str], Any]) -> dict[str, Any] | None:
    """A finished run's cached result, or None to run it (again): a file a kill or a full disk cut
    short, that is not a result, or whose checksum does not match (edited), is named, removed and
    recomputed, never used and never a reason to fail."""
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
        if not isinstance(result, dict) or not {"dev", "schedule", "seed"} <= set(result):
            raise ValueError("not a run's result")
        if result.get("sha256") != result_checksum(result):
            raise ValueError("its checksum does not match its contents (edited, or written before checksums)")
    except (ValueError, UnicodeDecodeError) as error:
        say(f"cached run {path} is damaged ({error}): running it again")
        path.unlink(missing_ok=True)
        return None
    return result


def evaluate_policies(request: EvaluationRequest, runner: JobRunner | None = None, device: str = "auto",
                      precision: str = "auto") -> EvaluationResult:
    """Every policy of the request on every seed (cached runs reused), in process or as ``runner``'s
    Ray jobs. Refuses a bad request before any run starts."""
    runner = runner or JobRunner()
    plans = check_request(request)
    task, progress = request.task, request.progress
    baseline = next((p["label"] for p in plans if request.baseline in (p["name"], p["label"])), None)
    cache = runs_dir() / "eval" / task.name / "cache"
    check_writable(request.out)
    check_writable(cache)
    runner.check()
    runtime = make_runtime(device, precision)
    identity = run_identity(request.data, request.distill, runtime, runner.threads(), progress)
    runs: dict[str, dict[str, Any]] = {}
    jobs: list[EvaluationJob] = []
    bar = tqdm(total=len(plans) * len(request.seeds), desc=f"evaluate {task.name}", unit="run", disable=not progress)
    for plan in plans:
        env_config, label = plan["env"], plan["label"]
        key = {"policy": plan["name"], "task": task.name, "data": to_dict(request.data),
               "distill": to_dict(request.distill), "env": to_dict(env_config), **identity}
        if plan["agent"] is not None:
            key["agent_sha256"] = plan["agent_sha256"]
        tag = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
        for seed in request.seeds:
            path = cache / f"{label.replace('/', '_').replace(':', '-')}_{tag}_seed{seed}.json"
            cached = read_cached_run(path, bar.write)
            if cached is not None:
                runs[str(path)] = cached
                bar.write(f"{label} seed {seed}: reused {path.name}")
                bar.update(1)
                continue
            runs[str(path)] = {}
            jobs.append(EvaluationJob(plan["name"], label, seed, tag, to_dict(request.data), to_dict(request.distill),
                                      to_dict(env_config), key, str(path), request.unsafe_load_agents))
    if jobs and runner.ray:
        # Shared inputs first: the teacher and every teacher-knowledge cache the jobs will read,
        # built once here; the workers find them valid in the shared runs folder.
        for env_fields in {json.dumps(job.env, sort_keys=True) for job in jobs}:
            env_config = EnvConfig(**json.loads(env_fields))
            names = list(dict.fromkeys([*env_config.base_weights, *env_config.knowledge]))
            prepare_distillation(request.data, request.distill, names, runtime, progress=progress)

    def finished(job: EvaluationJob, result: dict[str, Any]) -> None:
        runs[job.path] = result
        bar.write(f"{job.label} seed {job.seed}: dev {task.primary_metric} {result['dev'][task.primary_metric]:.4f} "
                  f"({result['wall_time_s']:.0f} s)")
        bar.update(1)

    try:
        if request.share_prefixes:
            groups = seed_groups(jobs)  # with Ray a seed's runs are one task; here, one run at a time in a
            if not runner.ray:          # seed's order (this process keeps the shared states), each reported
                groups = [SeedGroup((job,), group.shared) for group in groups for job in group.jobs]
            runner.map(run_seed_group, groups,
                       on_result=lambda group, results: [finished(job, result) for job, result in zip(group.jobs, results)])
        else:
            runner.map(run_evaluation_job, jobs, on_result=finished)
    finally:
        release()
    bar.close()
    return EvaluationResult(request, list(runs.values()), baseline, plans)
