"""What one seed of a schedule table costs, and where the time goes, measured in one run.

    python bench/tree_cost.py --task stsb --phases 3 --updates-per-phase 8
    python bench/tree_cost.py --task stsb --phases 3 --updates-per-phase 8 --dev-examples 500 --threads 1

Needs the task's teacher (agents/finetune_teacher.py) and the GLUE files. From seed 0's initial
student it times one phase of every action, split into the student updates and the reward-split
evaluation that ends each phase, and one dev scoring of a leaf (on the whole dev split and on the
build's --dev-examples subsample), then projects a seed: P-phase tree, every leaf scored as
--dev-leaves says. It prints:
  - the seed's time split into updates, reward evaluation and dev scoring, and the ratio of the
    whole to the phases' own time (target: at most 1.3);
  - dev scoring against its FLOP floor: the 3-layer student's matmuls and attention over the dev
    tokens, at this CPU's measured fp32 matmul peak (target: within 1.5x);
  - throughput of one process with 2 torch threads against two processes with 1 thread each,
    running phases side by side (ratio above 1: the two single-thread processes build faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

import kdenv  # noqa: F401  (before torch: the numerics pins must be set first)

SIDE_BY_SIDE = """
import json, sys, time, kdenv, torch
sys.argv = ["tree_cost"]
from kdenv.benchmark.build import TreeSetup
from kdenv.config import DataConfig, DistillConfig, EnvConfig
torch.set_num_threads(THREADS)
setup = TreeSetup(DataConfig(task="TASK", data_dir=DATA_DIR, max_reward_examples=128), DistillConfig(device="cpu"),
                  EnvConfig(phases=PHASES, updates_per_phase=UPDATES, epochs=None), THREADS)
env = setup.build_env(progress=False).env
env.reset(seed=0)
state = env.get_state()
start = time.perf_counter()
for action in range(COUNT):
    env.set_state(state)
    env.step(action % env.action_space.n)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def matmul_peak() -> float:
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    start, repeats = time.perf_counter(), 10
    for _ in range(repeats):
        a @ b
    return 2 * 2048**3 * repeats / (time.perf_counter() - start)


def scoring_flops(lengths: np.ndarray, hidden: int, layers: int, intermediate: int) -> float:
    """Forward FLOPs of a BERT encoder over these sequences: the dense layers per token, and
    attention's scores and weighted sum per sequence (embeddings and the head are negligible)."""
    dense = layers * 2 * (4 * hidden * hidden + 2 * hidden * intermediate) * float(lengths.sum())
    attention = layers * 2 * 2 * hidden * float((lengths.astype(np.float64) ** 2).sum())
    return dense + attention


def side_by_side(args, processes: int, threads: int, count: int) -> float:
    """Phases per second of ``processes`` processes of ``threads`` threads each, running at once."""
    code = (SIDE_BY_SIDE.replace("THREADS", str(threads)).replace("TASK", args.task)
            .replace("DATA_DIR", repr(args.data_dir or os.environ.get("KDENV_GLUE_DIR")))
            .replace("PHASES", str(args.phases)).replace("UPDATES", str(args.updates_per_phase))
            .replace("COUNT", str(count)))
    running = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
               for _ in range(processes)]
    seconds = [json.loads(p.communicate()[0].strip().splitlines()[-1])["seconds"] for p in running]
    return processes * count / max(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="stsb", help="GLUE task with a fine-tuned teacher (default stsb)")
    parser.add_argument("--data-dir", default=None, help="GLUE folder (default $KDENV_GLUE_DIR)")
    parser.add_argument("--phases", type=int, default=3, help="phases per episode (default 3)")
    parser.add_argument("--updates-per-phase", type=int, default=8, help="student updates per phase (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the timed process (default 2)")
    parser.add_argument("--dev-examples", type=int, default=None, help="the build's dev subsample (default: all)")
    parser.add_argument("--dev-leaves", type=float, default=1.0, help="share of leaves scored on dev (default 1)")
    parser.add_argument("--side-by-side-phases", type=int, default=8,
                        help="phases each process runs in the threads comparison (default 8; 0 skips it)")
    args = parser.parse_args()

    import torch

    from kdenv import numerics
    from kdenv.benchmark.build import TreeSetup
    from kdenv.benchmark.tree import DevScoring, tree_size
    from kdenv.config import DataConfig, DistillConfig, EnvConfig

    torch.set_num_threads(args.threads)
    dev = DevScoring(args.dev_examples, args.dev_leaves)
    setup = TreeSetup(DataConfig(task=args.task, data_dir=args.data_dir, max_reward_examples=128),
                      DistillConfig(device="cpu"), EnvConfig(phases=args.phases, updates_per_phase=args.updates_per_phase,
                                                             epochs=None), args.threads, dev)
    environment = setup.build_env(progress=False)
    env, trainer = environment.env, environment.env.trainer
    actions = int(env.action_space.n)
    env.reset(seed=0)
    state = env.get_state()
    updates, rewards = [], []
    for action in range(actions):
        env.set_state(state)
        weights = {**env.config.base_weights, **env.action_to_weights(action)}
        start = time.perf_counter()
        trainer.run_phase(weights, env.config.updates_per_phase)
        updates.append(time.perf_counter() - start)
        start = time.perf_counter()
        trainer.evaluate("reward")
        rewards.append(time.perf_counter() - start)
    env.set_state(state)
    dev_split = trainer.data["dev"]
    indices = dev.indices(len(dev_split))
    timings = {}
    for name, chosen in (("full dev", None), ("the build's dev", indices)):
        trainer.evaluate("dev", chosen)  # warm-up
        start = time.perf_counter()
        trainer.evaluate("dev", chosen)
        timings[name] = time.perf_counter() - start

    nodes = tree_size(actions, args.phases)
    leaves = actions**args.phases * dev.leaves
    update_s, reward_s = float(np.mean(updates)) * nodes, float(np.mean(rewards)) * nodes
    dev_s = timings["the build's dev"] * leaves
    total = update_s + reward_s + dev_s
    numerics.require_portable("a table's cost measurement")
    print(f"{args.task}, P = {args.phases}, U = {args.updates_per_phase}, K = {len(env.knowledge)}: {nodes} phases, "
          f"{leaves:.0f} dev-scored leaves ({dev.describe(len(dev_split))}); {args.threads} thread(s); numerics "
          f"{numerics.requested_mode()} ({numerics.describe()['aten_cpu_capability']}); {numerics.cpu_model()}")
    print("\n| part of a seed | per node s | seed min | share |\n|---|---|---|---|")
    for name, per, seconds in (("student updates", float(np.mean(updates)), update_s),
                               ("reward-split evaluation", float(np.mean(rewards)), reward_s),
                               ("dev scoring", timings["the build's dev"], dev_s)):
        print(f"| {name} | {per:.2f} | {seconds / 60:.1f} | {seconds / total:.0%} |")
    print(f"| **seed** | | **{total / 60:.1f}** | |")
    print(f"\nseed / its phases' own time (updates + reward evaluation): **{total / (update_s + reward_s):.2f}** "
          "(target <= 1.3)")

    lengths = dev_split.lengths if indices is None else dev_split.lengths[indices]
    config = trainer.student.config
    flops = scoring_flops(lengths, config.hidden_size, config.num_hidden_layers, config.intermediate_size)
    peak = matmul_peak()
    floor, measured = flops / peak, timings["the build's dev"]
    print(f"dev scoring: {flops / 1e9:.0f} GFLOP over {int(lengths.sum())} tokens; matmul peak here "
          f"{peak / 1e9:.0f} GFLOP/s -> floor {floor:.2f} s; measured {measured:.2f} s: "
          f"**{measured / floor:.2f}x the floor** (target <= 1.5); full dev {timings['full dev']:.2f} s")

    if args.side_by_side_phases:
        one = side_by_side(args, 1, 2, args.side_by_side_phases)
        two = side_by_side(args, 2, 1, args.side_by_side_phases)
        print(f"phases per second: 1 process x 2 threads {one:.3f}, 2 processes x 1 thread {two:.3f}: "
              f"**{two / one:.2f}** (above 1: build seeds in two single-thread processes)")


if __name__ == "__main__":
    main()
