"""Train an RL agent to choose which teacher knowledge to use in each distillation phase, then
compare its schedule with fixed baselines on the same budget.

    python agents/train.py --algo ppo --task rte
    python agents/train.py --algo dqn --task mrpc --total-timesteps 80 --hp learning_rate=1e-3

Steps:
  1. make sure the task's teacher exists (fine-tune it if not) and its knowledge is cached;
  2. build the environment kdenv/KnowledgeSelection-v0 with the action space the algorithm needs
     (A2C/PPO/TRPO: on/off per type; DQN: one of 2^K subsets; SAC/TD3/DDPG: weights in [0,1]^K;
     RecurrentPPO: on/off through a MultiDiscrete wrapper);
  3. train the agent (hyperparameters from agents/hyperparams/<algo>.yaml, --hp overrides);
  4. run the learned policy deterministically in a fresh episode, and each baseline in an episode
     with the same seed and budget, then score every final student on GLUE dev.

Everything lands in runs/<task>/<algo>_<time>/: config.yaml, agent.zip, TensorBoard events
(schedule/<type> per step, schedule/heatmap per episode), schedules.{json,csv} of training
episodes, comparison.{json,csv,md} and the learned schedule as a PNG.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from kdenv.algorithms import ALGORITHMS, get_algorithm, load_hyperparams
from kdenv.cli import add_common_arguments
from kdenv.config import DataConfig, DistillConfig, EnvConfig, save_run_config
from kdenv.data import DataError
from kdenv.env import make_env
from kdenv.io import atomic_write
from kdenv.knowledge import KnowledgeError
from kdenv.models import ModelError
from kdenv.paths import runs_dir
from kdenv.policies import FixedPolicy
from kdenv.presets import parse_knowledge
from kdenv.rewards import REWARDS
from kdenv.runtime import quiet_transformers
from kdenv.schedules import heatmap_png, run_episode, save_records
from kdenv.tasks import TASKS, get_task
from kdenv.wrappers import MultiDiscreteOnOff

HYPERPARAMS = Path(__file__).resolve().parent / "hyperparams"

# Settings for the 2-core CPU default (the whole run in well under 30 minutes) and for a GPU run
# at the scale of the papers. Command-line flags override either.
PRESETS = {
    "cpu": dict(phases=4, updates_per_phase=8, epochs=None, total_timesteps=40, max_reward_examples=128,
                max_train_examples=None, teacher_model="minilm", student_layers=3),
    "gpu": dict(phases=10, updates_per_phase=None, epochs=4.0, total_timesteps=400, max_reward_examples=1000,
                max_train_examples=None, teacher_model="bert-base-uncased", student_layers=6),
}


def parse_args(argv: list[str] | None = None, default_algo: str | None = None,
               description: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    if default_algo is None:
        add("--algo", required=True, choices=list(ALGORITHMS), help="RL algorithm")
    add("--task", required=True, help=f"GLUE task: {', '.join(TASKS)}")
    add("--preset", choices=list(PRESETS), default="cpu",
        help="cpu: proxy budget for a 2-core CPU (default); gpu: papers' scale (BERT-base teacher from the hub, "
             "6-layer student, 10 phases x 200 updates)")
    add("--knowledge", default="logits,hidden,gradient", help="knowledge types the agent chooses among (comma list)")
    add("--base", default="ce=1", help="always-on terms as type=weight list (default ce=1)")
    add("--phases", type=int, default=None, help="phases (agent decisions) per episode")
    add("--updates-per-phase", type=int, default=None, help="student updates per phase")
    add("--total-timesteps", type=int, default=None, help="agent training budget in phases (env steps)")
    add("--reward", choices=list(REWARDS), default="metric_gain", help="reward on the reward split")
    add("--reward-scale", type=float, default=EnvConfig.reward_scale, help="multiplier of the task reward")
    add("--exploration-bonus", type=float, default=0.0, help="count-based exploration bonus beta (0: off)")
    add("--cls-state", action="store_true", help="add teacher/student [CLS] vectors to the observation (Dict; MultiInputPolicy)")
    add("--max-train-examples", type=int, default=None, help="cap the train split")
    add("--max-reward-examples", type=int, default=None, help="cap the reward split (cheaper rewards)")
    add("--baselines", default="all,kd", help="fixed policies compared with the agent at the end (comma list; '' for none)")
    add("--hp", nargs="*", default=[], metavar="KEY=VALUE", help="hyperparameter overrides, e.g. learning_rate=1e-3")
    add("--resume", default=None, help="continue training a saved agent (.zip)")
    add("--seed", type=int, default=0, help="seed of agent training (episode seeds derive from it)")
    add("--eval-seed", type=int, default=1000, help="episode seed of the final comparison (same for every policy)")
    add("--student-seed", type=int, default=DistillConfig.seed, help="seed of the student's initialisation and data order")
    add("--tensorboard-log", default=None, help="run folder (default runs/<task>/<algo>_<time>)")
    add_common_arguments(add)
    args = parser.parse_args(argv)
    if default_algo is not None:
        args.algo = default_algo
    return args


def main(argv: list[str] | None = None, default_algo: str | None = None, description: str | None = None) -> int:
    args = parse_args(argv, default_algo, description)
    quiet_transformers()
    preset = PRESETS[args.preset]
    pick = lambda flag, key: preset[key] if flag is None else flag  # noqa: E731
    try:
        task = get_task(args.task)
        algorithm = get_algorithm(args.algo)
        hyperparams = load_hyperparams(algorithm.name, args.hp, HYPERPARAMS)
        env_config = EnvConfig(
            knowledge=[name.strip() for name in args.knowledge.split(",") if name.strip()],
            base_weights=parse_knowledge(args.base).weights if args.base.strip() else {}, action_space=algorithm.action_space,
            phases=pick(args.phases, "phases"), updates_per_phase=pick(args.updates_per_phase, "updates_per_phase") or 1,
            epochs=None if args.updates_per_phase is not None else preset["epochs"],
            reward=args.reward, reward_scale=args.reward_scale, exploration_bonus=args.exploration_bonus,
            cls_state=args.cls_state,
        )
        data_config = DataConfig(task=task.name, data_dir=args.data_dir,
                                 max_train_examples=pick(args.max_train_examples, "max_train_examples"),
                                 max_reward_examples=pick(args.max_reward_examples, "max_reward_examples"))
        distill_config = DistillConfig(student_layers=preset["student_layers"], teacher_model=preset["teacher_model"],
                                       seed=args.student_seed, device=args.device, precision=args.precision)
        total_timesteps = pick(args.total_timesteps, "total_timesteps")
        run_dir = Path(args.tensorboard_log) if args.tensorboard_log else (
            runs_dir() / task.name / f"{algorithm.name}_{time.strftime('%Y%m%d-%H%M%S')}")
        print(f"[1/4] teacher, data and teacher-knowledge cache for {task.name}")
        env = make_env(task.name, env_config, data_config, distill_config, progress=not args.no_progress)
    except (DataError, ModelError, KnowledgeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"      teacher dev {task.primary_metric}: {env.distillation.teacher_scores['dev'][task.primary_metric]:.4f}; "
          f"caches: {env.distillation.cache_reports}")
    agent_env = MultiDiscreteOnOff(env) if algorithm.wrap_multidiscrete else env
    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_config(run_dir / "config.yaml", {"agent": args.seed, "student": args.student_seed, "eval": args.eval_seed,
                                              "split": data_config.split_seed},
                    data=data_config, distill=distill_config, env=env_config,
                    agent=_AgentRecord(algorithm.name, total_timesteps, hyperparams, args.resume))

    from kdenv.callbacks import ScheduleCallback

    cls = algorithm.load_class()
    params = dict(hyperparams)
    policy = params.pop("policy")
    if args.cls_state and policy == "MlpPolicy":
        policy = "MultiInputPolicy"
    if args.resume:
        model = cls.load(args.resume, env=agent_env, tensorboard_log=str(run_dir))
    else:
        model = cls(policy, agent_env, seed=args.seed, tensorboard_log=str(run_dir), verbose=0, **params)
    agent_env.reset(seed=args.seed)
    print(f"[2/4] training {algorithm.name} for {total_timesteps} phases "
          f"({total_timesteps // env_config.phases} episodes of {env_config.phases} x {env_config.updates_per_phase} updates)")
    start = time.perf_counter()
    model.learn(total_timesteps=total_timesteps, callback=ScheduleCallback(run_dir, env.knowledge),
                tb_log_name="sb3", progress_bar=not args.no_progress, reset_num_timesteps=not args.resume)
    agent_seconds = time.perf_counter() - start
    model.save(run_dir / "agent.zip")
    print(f"      saved agent to {run_dir / 'agent.zip'} ({agent_seconds / 60:.1f} min)")

    print("[3/4] final comparison: one fresh episode each, same seed and budget, scored on GLUE dev")
    records = [run_episode(agent_env, model, args.eval_seed, f"agent:{algorithm.name}", evaluate_dev=True)]
    for name in filter(None, (part.strip() for part in args.baselines.split(","))):
        records.append(run_episode(env, FixedPolicy(name, env, seed=args.eval_seed), args.eval_seed, name, evaluate_dev=True))
    write_comparison(run_dir, records, env, task, agent_seconds)
    print(f"[4/4] TensorBoard: tensorboard --logdir {run_dir.parent}")
    return 0


@dataclasses.dataclass
class _AgentRecord:
    algo: str
    total_timesteps: int
    hyperparams: dict
    resumed_from: str | None


def write_comparison(run_dir: Path, records, env, task, agent_seconds: float) -> None:
    metric = task.primary_metric
    teacher = env.distillation.teacher_scores["dev"][metric]
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
    with atomic_write(run_dir / "comparison.md") as handle:
        handle.write(table + "\n\nagent training wall time: " + f"{agent_seconds:.0f} s; one distillation episode: "
                     f"{records[0].wall_time_s:.0f} s\n")
    with atomic_write(run_dir / "learned_schedule.png", "wb") as handle:
        handle.write(heatmap_png(np.array(records[0].schedule), env.knowledge, f"{records[0].policy} on {task.name}"))
    summary = {"teacher_dev": teacher, "agent_training_s": agent_seconds,
               "policies": {r.policy: {"dev": r.dev, "return": r.episode_return, "schedule": r.schedule} for r in records}}
    with atomic_write(run_dir / "comparison_summary.json") as handle:
        json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    sys.exit(main())
