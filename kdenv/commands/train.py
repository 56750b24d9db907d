"""Train an RL agent to choose which teacher knowledge to use in each distillation phase, then
compare its schedule with fixed baselines on the same budget.

    python agents/train.py --algo ppo --task rte
    python agents/train.py --algo dqn --task mrpc --total-timesteps 80 --hp learning_rate=1e-3

Steps:
  1. check every setting (configs, hyperparameters, baselines, the agent to resume, the output
     folder) before anything expensive starts;
  2. make sure the task's teacher exists (fine-tune it if not) and its knowledge is cached, and
     build the environment kdenv/KnowledgeSelection-v0 with the action space the algorithm needs
     (A2C/PPO/TRPO: on/off per type; DQN: one of 2^K subsets; SAC/TD3/DDPG: weights in [0,1]^K;
     RecurrentPPO: on/off through a MultiDiscrete wrapper);
  3. train the agent (hyperparameters from kdenv/decision/hyperparams/<algo>.yaml, --hp overrides), saving
     it after every --checkpoint-every episodes and on Ctrl-C, so that --resume can continue;
  4. run the learned policy deterministically in a fresh episode, and each baseline in an episode
     with the same seed and budget, then score every final student on GLUE dev.

Everything lands in runs/<task>/<algo>_<time>/: config.yaml (every setting, seeds, the teacher's
fingerprint, software versions), agent.zip, TensorBoard events (schedule/<type> per step,
schedule/heatmap per episode), schedules.{json,csv} of training episodes, comparison.{json,csv,md}
and the learned schedule as a PNG.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from kdenv.cli import add_common_arguments, add_config_arguments, config_from_args, fail, given_fields, run_main
from kdenv.config import (
    BUDGETS,
    ConfigError,
    DataConfig,
    DistillConfig,
    EnvConfig,
    budget_env_fields,
    budget_help_defaults,
    current_names,
    save_run_config,
    to_dict,
)
from kdenv.decision.algorithms import (
    ALGORITHMS,
    Hyperparams,
    SavedAgent,
    check_agent_fits,
    check_hyperparams,
    get_algorithm,
    load_hyperparams,
    parse_overrides,
    save_agent,
)
from kdenv.decision.env import SpacesOnlyEnv
from kdenv.decision.factory import build_environment
from kdenv.decision.policies import FixedPolicy, check_policy
from kdenv.decision.schedules import heatmap_png, run_episode, save_records
from kdenv.decision.wrappers import MultiDiscreteOnOff
from kdenv.engine.data import DataError
from kdenv.engine.distillation import student_record
from kdenv.engine.knowledge import KnowledgeError
from kdenv.engine.models import ModelError
from kdenv.engine.recipes import parse_knowledge
from kdenv.engine.runtime import quiet_transformers
from kdenv.engine.tasks import TASKS, get_task
from kdenv.io import check_writable, write_all
from kdenv.paths import runs_dir

CLEAR_ERRORS = (DataError, ModelError, KnowledgeError, ConfigError, ValueError, OSError)
DATA_FLAGS = ("max_length", "reward_size", "max_reward_examples", "max_train_examples", "split_seed")
DISTILL_FLAGS = ("teacher_model", "student_layers", "student_init", "student_dropout", "fresh_head", "student_model",
                 "teacher_mode", "seed")
ENV_FLAGS = ("knowledge", "phases", "updates_per_phase", "reward", "reward_scale", "exploration_bonus", "cls_state")


def parse_args(argv: list[str] | None = None, default_algo: str | None = None,
               description: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    if default_algo is None:
        add("--algo", required=True, choices=list(ALGORITHMS), help="RL algorithm")
    add("--task", required=True, help=f"GLUE task ({', '.join(TASKS)}) or a task file, path/to/task.yaml (docs/own_task.md)")
    add("--preset", choices=list(BUDGETS), default="cpu",
        help="run budget; flags below override it. " + "; ".join(f"{name}: {b.description}" for name, b in BUDGETS.items()))
    add("--base", default="ce=1", help="always-on terms as type=weight list (default ce=1; '' for none)")
    budget_flags = parser.add_mutually_exclusive_group()
    budget_flags.add_argument("--total-timesteps", type=int, default=None,
                              help="agent training budget in phases (env steps; default: the preset's)")
    budget_flags.add_argument("--episodes", type=int, default=None,
                              help="the same budget in episodes, as train_table.py counts it: episodes x phases steps")
    add("--baselines", default="all,kd", help="fixed policies compared with the agent at the end (comma list; '' for none)")
    add("--hp", nargs="*", default=[], metavar="KEY=VALUE", help="hyperparameter overrides (YAML values), e.g. learning_rate=1e-3")
    add("--hp-file", default=None, metavar="PATH",
        help="hyperparameter YAML instead of the defaults (kdenv/decision/hyperparams/<algo>.yaml), e.g. a tuned.yaml")
    add("--resume", default=None, help="continue training a saved agent.zip (same algorithm; --hp still applies) in the "
        "environment it trained in: the run's flags must give the same task, data, student and episode settings")
    add("--new-environment", action="store_true",
        help="with --resume: continue the agent in an environment that differs from its run's (listed when refused)")
    add("--unsafe-load-agents", action="store_true",
        help="with --resume: also unpickle what kdenv cannot rebuild from the agent zip. Unpickling runs any code the "
             "file holds: use only for agent files you trust (agent files written by kdenv never need it)")
    add("--checkpoint-every", type=int, default=1, help="save agent.zip every N training episodes (default 1)")
    add("--n-envs", type=int, default=1,
        help="environments stepping at once, each a full environment (own student) in its own process "
             "(SB3 SubprocVecEnv, forkserver start; torch threads = cores / N); default 1: in this process")
    add("--seed", type=int, default=0, help="seed of agent training (episode seeds derive from it)")
    add("--eval-seed", type=int, default=1000, help="episode seed of the final comparison (same for every policy)")
    add("--output-dir", "--tensorboard-log", dest="output_dir", default=None,
        help="run folder (default runs/<task>/<algo>_<time>)")
    add_common_arguments(add)
    preset = budget_help_defaults()  # each --preset's value, shown in the help
    add_config_arguments(parser, EnvConfig, "env", "environment (episode budget, reward, observation)", ENV_FLAGS,
                         defaults=preset)
    add_config_arguments(parser, DataConfig, "data", "data and splits", DATA_FLAGS,
                         defaults=preset)
    add_config_arguments(parser, DistillConfig, "distill", "student and teacher", DISTILL_FLAGS,
                         rename={"seed": "student-seed"},
                         defaults=preset)
    args = parser.parse_args(argv)
    if default_algo is not None:
        args.algo = default_algo
    return args


def make_configs(args: argparse.Namespace, action_space: str) -> tuple[DataConfig, DistillConfig, EnvConfig, int]:
    """The run's configs: the preset's budget, then every flag the user gave on top."""
    budget = BUDGETS[args.preset]
    base = parse_knowledge(args.base).weights if args.base.strip() else {}
    env_fields = {**budget_env_fields(budget, given_fields(args, "env")), "base_weights": base, "action_space": action_space}
    env_config = config_from_args(EnvConfig, args, "env", **env_fields)
    data_config = config_from_args(DataConfig, args, "data", task=args.task, data_dir=args.data_dir,
                                   max_reward_examples=budget.max_reward_examples)
    distill_config = config_from_args(DistillConfig, args, "distill", student_layers=budget.student_layers,
                                      teacher_model=budget.teacher_model, device=args.device, precision=args.precision)
    total_timesteps = budget.total_timesteps if args.total_timesteps is None else args.total_timesteps
    if args.episodes is not None:
        if args.episodes < 1:
            raise ConfigError(f"--episodes must be >= 1, not {args.episodes}")
        total_timesteps = args.episodes * env_config.phases
    if total_timesteps < 1:
        raise ConfigError(f"--total-timesteps must be >= 1, not {total_timesteps}")
    if args.checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be >= 1, not {args.checkpoint_every}")
    if args.n_envs < 1:
        raise ConfigError(f"--n-envs must be >= 1, not {args.n_envs}")
    return data_config, distill_config, env_config, total_timesteps


# What makes a resumed agent's environment the one it trained in (machine-local paths, devices and
# precisions aside): compared with its run's record unless --new-environment.
RESUME_SAME = {"data": ("task", "max_length", "reward_size", "max_reward_examples", "max_train_examples", "split_seed"),
               "distill": ("teacher_model", "student_layers", "student_init", "student_dropout", "fresh_head",
                           "teacher_mode"),
               "env": ("knowledge", "base_weights", "phases", "episode_epochs", "reward", "reward_scale", "exploration_bonus",
                       "cls_state", "probe_size")}


def environment_changes(record: dict[str, Any], configs: dict[str, Any]) -> list[str]:
    """How the run's configs differ from a saved agent's run (``record``), as "env.phases 4 -> 6"."""
    changes = []
    for section, names in RESUME_SAME.items():
        now = to_dict(configs[section])
        saved = current_names(type(configs[section]), record.get(section) or {})  # a record from before a rename
        fields = [*names, *(["updates_per_phase"] if section == "env" and now.get("episode_epochs") is None else [])]
        for name in fields:
            if name in saved and _comparable(saved[name]) != _comparable(now.get(name)):
                changes.append(f"{section}.{name} {saved[name]!r} -> {now.get(name)!r}")
    return changes


def _comparable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def agent_settings(args, algorithm, configs: dict[str, Any] | None = None) -> tuple[Hyperparams, dict, SavedAgent | None]:
    """The hyperparameters the agent will train with, the --hp overrides, and the agent to resume
    (checked). A resumed agent keeps its saved hyperparameters except those --hp overrides."""
    overrides = parse_overrides(args.hp)
    if args.resume is None:
        return load_hyperparams(algorithm.name, args.hp, args.hp_file), overrides, None
    saved = SavedAgent.open(args.resume)
    saved.check_safe(args.unsafe_load_agents)  # a file that would run code is refused before any work
    if saved.algorithm.name != algorithm.name:
        raise ValueError(f"--resume {args.resume} is a {saved.algorithm.name} agent, but this run trains {algorithm.name}; "
                         f"resume it with --algo {saved.algorithm.name}")
    fixed = sorted({"policy", "policy_kwargs"} & set(overrides))
    if fixed:
        raise ValueError(f"--hp {fixed} cannot change when resuming: the saved network is reused as it is")
    check_hyperparams(algorithm, overrides)
    changes = environment_changes(saved.record, configs) if configs and not args.new_environment else []
    if changes:
        raise ConfigError(f"--resume {args.resume}: this run's environment differs from the one the agent trained in "
                          f"({'; '.join(changes)}). Pass that run's flags (see its config.yaml, or the resume command "
                          "printed when it stopped), or --new-environment to continue it here on purpose")
    return Hyperparams.from_dict({**saved.record["agent"]["hyperparams"], **overrides}), overrides, saved


@run_main
def main(argv: list[str] | None = None, default_algo: str | None = None, description: str | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    if any(word == "--table" or word.startswith("--table=") for word in given):  # the command before train_table.py
        return fail("train.py learns on the live trainer (--task); to learn on a schedule table, run: python "
                    "agents/train_table.py --algo ALGO --table NAME")
    args = parse_args(argv, default_algo, description)
    quiet_transformers()
    try:
        task = get_task(args.task)
        algorithm = get_algorithm(args.algo)
        data_config, distill_config, env_config, total_timesteps = make_configs(args, algorithm.action_space)
        hyperparams, overrides, resumed = agent_settings(
            args, algorithm, {"data": data_config, "distill": distill_config, "env": env_config})
        for name in filter(None, (part.strip() for part in args.baselines.split(","))):
            check_policy(name, env_config.knowledge, env_config.phases)
        if env_config.cls_state and hyperparams.policy == "MlpPolicy":
            hyperparams.policy = "MultiInputPolicy"
        params, policy = hyperparams.kwargs, hyperparams.policy
        # Constructing the agent on an environment with the same spaces checks every hyperparameter
        # value now, not after the teacher, the caches and the student are built.
        probe_env = SpacesOnlyEnv(env_config, (8, 8) if env_config.cls_state else None)
        if resumed is None:
            algorithm.check_build(hyperparams, MultiDiscreteOnOff(probe_env) if algorithm.wrap_multidiscrete else probe_env)
        run_dir = Path(args.output_dir) if args.output_dir else (
            runs_dir() / task.name / f"{algorithm.name}_{time.strftime('%Y%m%d-%H%M%S')}")
        check_writable(run_dir)
        print(f"[1/4] teacher, data and teacher-knowledge cache for {task.name}")
        setup = build_environment(task.ref, env_config, data_config, distill_config, progress=not args.no_progress)
        env, env_config = setup.env, setup.config
        agent_env = MultiDiscreteOnOff(env) if algorithm.wrap_multidiscrete else env
        training_env = agent_env if args.n_envs == 1 else vectorised(args, task.ref, env_config, data_config,
                                                                       distill_config, algorithm)
        if resumed is not None:
            model = resumed.load(allow_pickle=args.unsafe_load_agents, spaces_from=agent_env, env=training_env,
                                 tensorboard_log=str(run_dir), **copy.deepcopy(overrides))
            check_agent_fits(model, agent_env, args.resume)
        else:
            # SB3 edits policy_kwargs in place (A2C adds its optimiser class): give it a copy.
            model = algorithm.build(policy, training_env, seed=args.seed, tensorboard_log=str(run_dir), verbose=0,
                                    **copy.deepcopy(params))
        run_dir.mkdir(parents=True, exist_ok=True)
        save_run_config(run_dir / "config.yaml", {"agent": args.seed, "student": distill_config.seed,
                                                  "eval": args.eval_seed, "split": data_config.split_seed},
                        teacher=setup.distillation.teacher_record(), data=data_config, distill=distill_config,
                        student=student_record(distill_config),
                        env=env_config, agent={"algo": algorithm.name, "total_timesteps": total_timesteps,
                                               "hyperparams": {"policy": policy, **params}, "resumed_from": args.resume,
                                               "n_envs": args.n_envs})
    except CLEAR_ERRORS as error:
        return fail(error)
    distillation = setup.distillation
    print(f"      teacher dev {task.primary_metric}: {distillation.teacher_scores['dev'][task.primary_metric]:.4f}; "
          f"caches: {distillation.cache_reports}")

    from kdenv.decision.callbacks import AgentCheckpoint, ScheduleCallback

    agent_path = run_dir / "agent.zip"
    resumed_at = model.num_timesteps if resumed is not None else 0
    if args.n_envs == 1:
        agent_env.reset(seed=args.seed)
    print(f"[2/4] training {algorithm.name} for {total_timesteps} phases "
          f"({total_timesteps // env_config.phases} episodes of {env_config.phases} x {env_config.updates_per_phase} updates)")
    start = time.perf_counter()
    callbacks = [ScheduleCallback(run_dir, env.knowledge), AgentCheckpoint(agent_path, args.checkpoint_every)]
    try:
        # log_interval=1: SB3 writes its own scalars (losses, entropy, value loss) after every rollout
        # (on-policy) or episode (off-policy); its defaults (A2C: every 100 rollouts) write none at
        # the CPU budget's 10 rollouts.
        model.learn(total_timesteps=total_timesteps, callback=callbacks, tb_log_name="sb3", log_interval=1,
                    progress_bar=not args.no_progress, reset_num_timesteps=resumed is None)
    except KeyboardInterrupt:
        save_agent(model, agent_path)
        done = model.num_timesteps - (resumed_at or 0)
        command = resume_command(sys.argv[1:] if argv is None else argv, default_algo, agent_path,
                                 max(total_timesteps - done, 1))
        print(f"\ninterrupted after {done} of {total_timesteps} phases; agent saved to {agent_path}. Continue the same "
              f"experiment (every setting of this run, the phases left) with:\n  {command}", file=sys.stderr)
        return 130
    finally:
        if args.n_envs > 1:
            training_env.close()
    model.logger.dump(step=model.num_timesteps)  # the last update's losses (SB3 dumps before training on a rollout)
    agent_seconds = time.perf_counter() - start
    save_agent(model, agent_path)
    print(f"      saved agent to {agent_path} ({agent_seconds / 60:.1f} min)")

    print("[3/4] final comparison: one fresh episode each, same seed and budget, scored on GLUE dev")
    records = [run_episode(agent_env, model, args.eval_seed, f"agent:{algorithm.name}", evaluate_dev=True)]
    for name in filter(None, (part.strip() for part in args.baselines.split(","))):
        records.append(run_episode(env, FixedPolicy(name, env, seed=args.eval_seed), args.eval_seed, name, evaluate_dev=True))
    write_comparison(run_dir, records, env, distillation, task, agent_seconds)
    write_tensorboard_summary(run_dir, records, task, distillation, algorithm.name, {"policy": policy, **params},
                              env_config, total_timesteps)
    print(f"[4/4] TensorBoard: tensorboard --logdir {run_dir.parent}")
    return 0


def resume_command(argv: list[str], default_algo: str | None, agent_path: Path, phases_left: int) -> str:
    """The command that continues an interrupted run: its own flags (budget, data caps, env
    settings, hyperparameters) with the saved agent to resume and the phases still to train."""
    import shlex

    dropped = {"--resume", "--total-timesteps", "--episodes", "--output-dir", "--tensorboard-log"}
    kept, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word in dropped:
            skip = True
        elif word.split("=", 1)[0] not in dropped:
            kept.append(word)
    script = "agents/train_a2c.py" if default_algo == "a2c" else "agents/train.py"
    return shlex.join(["python", script, *kept, "--resume", str(agent_path), "--total-timesteps", str(phases_left)])


def write_tensorboard_summary(run_dir: Path, records, task, distillation, algo: str, hyperparams: dict,
                              env_config, total_timesteps: int) -> None:
    """The run's summary in TensorBoard: one hparams entry (algorithm, key hyperparameters,
    knowledge on offer, budget against the agent's final reward-split and dev metric), and the
    comparison with the baselines as text and as scalars."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    metric = task.primary_metric
    agent = records[0]
    shown = {"algo": algo, "knowledge": ",".join(env_config.knowledge), "phases": env_config.phases,
             "updates_per_phase": env_config.updates_per_phase, "total_timesteps": total_timesteps,
             "reward": env_config.reward, "action_space": env_config.action_space}
    for key, value in hyperparams.items():
        if isinstance(value, (int, float, str, bool)):
            shown[f"hp/{key}"] = value
    results = {f"final/reward_split_{metric}": agent.metrics[-1], f"final/dev_{metric}": agent.dev[metric],
               "final/return": agent.episode_return}
    writer = SummaryWriter(str(run_dir))
    # Written into the run's own event file, so that the HPARAMS tab lists one row per run.
    experiment, start, end = hparams_summary(shown, results)
    for summary in (experiment, start, end):
        writer.file_writer.add_summary(summary)
    for name, value in results.items():
        writer.add_scalar(name, value, 0)
    teacher = distillation.teacher_scores["dev"][metric]
    rows = [f"| policy | dev {metric} | / teacher | return |", "|---|---|---|---|"]
    for record in records:
        rows.append(f"| {record.policy} | {record.dev[metric]:.4f} | {record.dev[metric] / teacher:.3f} | "
                    f"{record.episode_return:.3f} |")
        writer.add_scalar(f"comparison/dev_{metric}/{record.policy}", record.dev[metric], 0)
    writer.add_text("comparison", "\n".join(rows), 0)
    writer.close()


def vectorised(args, task: str, env_config, data_config, distill_config, algorithm):
    """N full environments in worker processes (SB3's SubprocVecEnv, forkserver: safe with torch's
    threads), each with cores / N torch threads. The teacher and its caches exist already (built
    by this process), so every worker only loads them."""
    import functools
    import os

    from stable_baselines3.common.vec_env import SubprocVecEnv

    from kdenv.decision.factory import worker_env

    threads = max(1, (os.cpu_count() or 1) // args.n_envs)
    make = functools.partial(worker_env, task, env_config, data_config, distill_config, threads,
                             algorithm.wrap_multidiscrete)
    return SubprocVecEnv([make] * args.n_envs, start_method="forkserver")


def write_comparison(run_dir: Path, records, env, distillation, task, agent_seconds: float) -> None:
    metric = task.primary_metric
    teacher = distillation.teacher_scores["dev"][metric]
    rows = ["| policy | dev " + metric + " | / teacher | reward-split " + metric + " | return | schedule (phase: " +
            ",".join(env.knowledge) + ") | wall s |", "|---|---|---|---|---|---|---|"]
    for record in records:
        schedule = " ".join("/".join(f"{w:g}" if w in (0.0, 1.0) else f"{w:.2f}" for w in phase) for phase in record.schedule)
        rows.append(f"| {record.policy} | {record.dev[metric]:.4f} | {record.dev[metric] / teacher:.3f} | "
                    f"{record.metrics[-1]:.4f} | {record.episode_return:.3f} | {schedule} | {record.wall_time_s:.0f} |")
    rows.append(f"| teacher | {teacher:.4f} | 1.000 | | | | |")
    table = "\n".join(rows)
    print(table)
    save_records(records, run_dir, "comparison")
    summary = {"teacher_dev": teacher, "agent_training_s": agent_seconds,
               "policies": {r.policy: {"dev": r.dev, "return": r.episode_return, "schedule": r.schedule} for r in records}}
    write_all({  # the comparison's set, all or nothing
        run_dir / "comparison.md": (table + "\n\nagent training wall time: " + f"{agent_seconds:.0f} s; one distillation "
                                    f"episode: {records[0].wall_time_s:.0f} s\n").encode(),
        run_dir / "learned_schedule.png": heatmap_png(np.array(records[0].schedule), env.knowledge,
                                                      f"{records[0].policy} on {task.name}"),
        run_dir / "comparison_summary.json": json.dumps(summary, indent=2).encode()})


if __name__ == "__main__":
    sys.exit(main())
