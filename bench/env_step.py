"""Overhead of the environment: one env.step (a phase) against the bare trainer doing the same
work (the same updates from the same state, then the reward-split evaluation), in one run.

    python bench/env_step.py --task rte --data-dir ../shared/data/glue

Needs the task's teacher (agents/finetune_teacher.py). Both sides start from the same trainer
snapshot before every repeat, alternate to cancel drift, and the median is reported. Target:
env / bare <= 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from kdenv.cli import add_common_arguments
from kdenv.config import DataConfig, DistillConfig, EnvConfig
from kdenv.decision.factory import make_env
from kdenv.engine.runtime import quiet_transformers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="rte", help="GLUE task (its teacher must exist)")
    parser.add_argument("--updates-per-phase", type=int, default=8, help="student updates per phase")
    parser.add_argument("--max-reward-examples", type=int, default=128, help="reward-split size")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats (median reported)")
    add_common_arguments(parser.add_argument)
    args = parser.parse_args()
    quiet_transformers()
    env_config = EnvConfig(updates_per_phase=args.updates_per_phase, phases=4)
    env = make_env(task=args.task, env_config=env_config, data_config=DataConfig(task=args.task, data_dir=args.data_dir,
                                                     max_reward_examples=args.max_reward_examples),
                   distill_config=DistillConfig(device=args.device, precision=args.precision), progress=not args.no_progress)
    trainer = env.trainer
    action = np.ones(len(env.knowledge), dtype=np.int8)
    weights = {**env_config.base_weights, **env.action_to_weights(action)}
    env.reset(seed=0)
    origin = trainer.snapshot()
    env.step(action)  # warm-up
    bare, stepped = [], []
    for _ in range(args.repeats):
        trainer.restore(origin)
        tick = time.perf_counter()
        trainer.run_phase(weights, args.updates_per_phase)
        trainer.evaluate("reward")
        bare.append(time.perf_counter() - tick)
        env.reset(seed=0)
        trainer.restore(origin)
        tick = time.perf_counter()
        env.step(action)
        stepped.append(time.perf_counter() - tick)
    bare_s, env_s = statistics.median(bare), statistics.median(stepped)
    print(f"{args.task}, {args.updates_per_phase} updates per phase, knowledge {weights}, device {trainer.runtime.describe()}")
    print(f"| | s per phase (median of {args.repeats}) |")
    print("|---|---|")
    print(f"| bare trainer (run_phase + reward evaluation) | {bare_s:.3f} |")
    print(f"| env.step | {env_s:.3f} |")
    print(f"| ratio env / bare | {env_s / bare_s:.3f} (target <= 1.05) |")


if __name__ == "__main__":
    main()
