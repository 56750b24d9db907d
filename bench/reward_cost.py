"""What a larger reward split costs: one phase of U student updates plus the reward-split
evaluation, at several reward-split sizes and phase lengths, all measured in one run, as ratios
against today's CPU default (128 reward examples) at the same U.

    python bench/reward_cost.py --task stsb --data-dir ../shared/data/glue
    python bench/reward_cost.py --task stsb --sizes 128,256,512,1000 --updates 8,64,128 --threads 1

Every reward definition of the environment (metric_gain, teacher_agreement, loss_decrease, log_loss)
reads the same forward pass over the reward split (the teacher's outputs come from its cache), so
one evaluation per size prices them all. Needs the task's teacher (agents/finetune_teacher.py).
The update cost is the median over --repeats of --timed-updates updates per knowledge subset, from
the same initial student; a phase of U updates is U times the mean over subsets (what a tree's
level costs on average) plus one evaluation. Run with nothing else heavy on the machine (pause the
builds: bash bench/regime_builds.sh pause); the ratios hold on any load that stays steady in the run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from kdenv.cli import add_common_arguments, parse_seeds
from kdenv.config import DataConfig, DistillConfig, EnvConfig
from kdenv.decision.factory import make_env
from kdenv.engine.runtime import quiet_transformers

BASELINE_SIZE = 128  # the CPU budget's reward split today (kdenv.config.BUDGETS["cpu"])


def counts(flag: str):
    """An argparse type: a list of whole numbers in parse_seeds' syntax, its message kept."""
    def parse(text: str) -> list[int]:
        try:
            values = parse_seeds(text, flag)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        if min(values) < 1:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: give whole numbers >= 1")
        return values
    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="stsb", help="GLUE task (its teacher must exist)")
    parser.add_argument("--knowledge", default="logits,hidden,gradient",
                        help="knowledge types whose subsets are timed (comma-separated)")
    parser.add_argument("--sizes", type=counts("--sizes"), default=[64, 128, 256, 512, 1000],
                        help="reward-split sizes to price (the largest is loaded; smaller ones are its first examples)")
    parser.add_argument("--updates", type=counts("--updates"), default=[8, 64, 128], help="phase lengths U to report")
    parser.add_argument("--timed-updates", type=int, default=4, help="updates timed per knowledge subset and repeat")
    parser.add_argument("--repeats", type=int, default=3, help="repeats (medians reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the regime builds use 1)")
    add_common_arguments(parser.add_argument)
    args = parser.parse_args()
    if BASELINE_SIZE not in args.sizes:
        parser.error(f"--sizes must include the baseline, {BASELINE_SIZE}")
    import torch

    torch.set_num_threads(args.threads)
    quiet_transformers()
    env_config = EnvConfig(knowledge=args.knowledge.split(","), phases=1, updates_per_phase=args.timed_updates)
    env = make_env(task=args.task, env_config=env_config,
                   data_config=DataConfig(task=args.task, data_dir=args.data_dir, max_reward_examples=max(args.sizes)),
                   distill_config=DistillConfig(device=args.device, precision=args.precision),
                   progress=not args.no_progress)
    trainer = env.trainer
    available = len(trainer.data["reward"])
    sizes = [size for size in args.sizes if size <= available]
    if len(sizes) < len(args.sizes):
        print(f"note: the reward split of {args.task} holds {available} examples; sizes above it are left out")
    env.reset(seed=0)
    origin = trainer.snapshot()
    trainer.evaluate("reward", np.arange(min(sizes)))  # warm-up
    evaluation = {size: [] for size in sizes}
    per_update = []
    subsets = [np.array([(bits >> i) & 1 for i in range(len(env.knowledge))], dtype=np.int8)
               for bits in range(2 ** len(env.knowledge))]
    for _ in range(args.repeats):
        for size in sizes:
            tick = time.perf_counter()
            trainer.evaluate("reward", np.arange(size))
            evaluation[size].append(time.perf_counter() - tick)
        seconds = []
        for action in subsets:
            trainer.restore(origin)
            weights = {**env_config.base_weights, **env.action_to_weights(action)}
            tick = time.perf_counter()
            trainer.run_phase(weights, args.timed_updates)
            seconds.append((time.perf_counter() - tick) / args.timed_updates)
        per_update.append(float(np.mean(seconds)))
    update_s = statistics.median(per_update)
    eval_s = {size: statistics.median(times) for size, times in evaluation.items()}
    print(f"{args.task}, knowledge subsets of {', '.join(env.knowledge)}, {trainer.runtime.describe()}, "
          f"{args.threads} thread(s); one update {update_s:.3f} s (mean over {len(subsets)} subsets, median of "
          f"{args.repeats})")
    print()
    print("| reward examples | evaluation, s | " + " | ".join(f"phase of U = {u}, s (vs {BASELINE_SIZE})" for u in args.updates)
          + " |")
    print("|---|---|" + "---|" * len(args.updates))
    for size in sizes:
        cells = []
        for updates in args.updates:
            phase = updates * update_s + eval_s[size]
            baseline = updates * update_s + eval_s[BASELINE_SIZE]
            cells.append(f"{phase:.2f} ({phase / baseline:.2f}x)")
        print(f"| {size} | {eval_s[size]:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
