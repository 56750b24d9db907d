"""Building the knowledge-selection environment for a task, in one direction: configs are checked,
the distillation is prepared (teacher, data, caches, student), the episode budget is settled
(episode_epochs → updates per phase → total updates), and only then is the trainer built and wrapped.

:func:`build_environment` returns the environment together with what it was built from;
:func:`make_env` (the Gymnasium entry point of ``kdenv/KnowledgeSelection-v0``) returns the
environment alone."""

from __future__ import annotations

from dataclasses import dataclass

from kdenv.config import DataConfig, DistillConfig, EnvConfig, from_dict
from kdenv.decision.env import KnowledgeDistillationEnv
from kdenv.decision.rewards import get_reward
from kdenv.engine.distillation import Distillation, check_knowledge_names, prepare_distillation
from kdenv.engine.runtime import make_runtime


@dataclass
class EnvironmentSetup:
    env: KnowledgeDistillationEnv
    distillation: Distillation  # teacher, data, caches and reports the environment was built from
    config: EnvConfig  # with the budget settled (updates_per_phase derived when `episode_epochs` is set)


def build_environment(
    task: str = "rte",
    env_config: EnvConfig | dict | None = None,
    data_config: DataConfig | dict | None = None,
    distill_config: DistillConfig | dict | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = False,
) -> EnvironmentSetup:
    """Teacher (fine-tuned if missing), cached teacher knowledge, student and trainer, with the
    learning-rate schedule spanning exactly one episode. Configs may be given as dicts of their
    fields (as ``gymnasium.make`` and rl_zoo3's ``--env-kwargs`` pass them)."""
    if isinstance(env_config, dict):
        env_config = from_dict(EnvConfig, env_config, warn_renamed=True)
    env_config = env_config or EnvConfig()
    if isinstance(data_config, dict):
        data_config = from_dict(DataConfig, {"task": task, "data_dir": data_dir, **data_config})
    data_config = data_config or DataConfig(task=task, data_dir=data_dir)
    if isinstance(distill_config, dict):
        distill_config = from_dict(DistillConfig, {"device": device, "precision": precision, **distill_config},
                                   warn_renamed=True)
    distill_config = distill_config or DistillConfig(device=device, precision=precision)
    names = list(dict.fromkeys([*env_config.base_weights, *env_config.knowledge]))
    check_knowledge_names(names)
    get_reward(env_config.reward)  # an unknown reward fails before anything is built
    runtime = make_runtime(distill_config.device, distill_config.precision)
    distillation = prepare_distillation(data_config, distill_config, names, runtime, progress=progress)
    resolved = env_config.resolved(len(distillation.data["train"]), distill_config.batch_size)
    trainer = distillation.build_trainer(total_updates=resolved.total_updates)
    probe = distillation.teacher_probe_cls(resolved.probe_size) if resolved.cls_state else None
    env = KnowledgeDistillationEnv(trainer, resolved, teacher_probe_cls=probe)
    return EnvironmentSetup(env, distillation, resolved)


def make_env(**kwargs) -> KnowledgeDistillationEnv:
    """``gymnasium.make("kdenv/KnowledgeSelection-v0", task=..., env_config=...)``: the environment alone."""
    return build_environment(**kwargs).env


def worker_env(task: str, env_config: EnvConfig, data_config: DataConfig, distill_config: DistillConfig,
               threads: int, wrap_multidiscrete: bool = False):
    """A full environment (its own student and trainer) for a vectorised-environment worker
    process, with torch limited to ``threads`` so that N workers share the cores instead of
    fighting over them. Picklable through ``functools.partial`` (spawn / forkserver workers)."""
    import torch

    torch.set_num_threads(max(1, threads))
    env = build_environment(task, env_config, data_config, distill_config).env
    if wrap_multidiscrete:
        from kdenv.decision.wrappers import MultiDiscreteOnOff

        return MultiDiscreteOnOff(env)
    return env
