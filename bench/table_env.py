"""Speed of the table environment: steps per second of kdenv/KnowledgeSelectionTable-v0 with
random actions, against Gymnasium's CartPole-v1 (a pure-Python environment) measured in the same
run. Target: at least 10,000 table steps per second on the 2-core CPU.

    python bench/table_env.py --table stsb          # a shipped table
    python bench/table_env.py                      # a synthetic table of the shipped shape (K=3, P=3, 4 seeds)
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from kdenv.benchmark.table import Table, resolve_table, tree_size, write_manifest, write_seed
from kdenv.benchmark.table_env import KnowledgeSelectionTableEnv


def synthetic(directory: Path, types: int = 3, phases: int = 3, seeds: int = 4) -> Table:
    rng = np.random.default_rng(0)
    actions = 2**types
    for seed in range(seeds):
        records = []
        for depth in range(phases + 1):
            for history in itertools.product(range(actions), repeat=depth):
                value = float(rng.normal(0, 0.01))
                records.append({"history": list(history), "depth": depth, "status": "ok", "terminal": depth == phases,
                                "observation": rng.uniform(-1, 1, 8 + 3 * types).astype(np.float32).tolist(),
                                "metric": value, "loss": 0.7, "weights": {f"t{k}": 1.0 for k in range(types)},
                                "rewards": {"metric_gain": value}})
        write_seed(directory, seed, records)
    knowledge = [f"t{k}" for k in range(types)]
    write_manifest(directory, {"task": "synthetic", "seeds": list(range(seeds)), "knowledge": knowledge, "phases": phases,
                               "nodes_per_seed": tree_size(actions, phases) + 1,
                               "env": {"knowledge": knowledge, "phases": phases, "updates_per_phase": 1}})
    return Table.load(directory)


def steps_per_second(env, steps: int) -> float:
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(steps)]
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default=None, metavar="NAME|PATH",
                        help="a shipped table's name or a table folder (default: a synthetic table)")
    parser.add_argument("--steps", type=int, default=100_000, help="steps per measurement (default 100000)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats, median reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        table = resolve_table(args.table) if args.table else synthetic(Path(scratch))
        rows = []
        for space in ("discrete", "multibinary", "box"):
            env = KnowledgeSelectionTableEnv(table, action_space=space)
            cartpole = gym.make("CartPole-v1").unwrapped
            table_rates, cart_rates = [], []
            for _ in range(args.repeats):
                table_rates.append(steps_per_second(env, args.steps))
                cart_rates.append(steps_per_second(cartpole, args.steps))
            rows.append((space, float(np.median(table_rates)), float(np.median(cart_rates))))
    print(f"table: {args.table or 'synthetic'} ({table.num_actions} actions, {table.phases} phases, {len(table.seeds)} seeds)")
    print("| action space | table env steps/s | CartPole-v1 steps/s | table / CartPole | table / 10,000 target |")
    print("|---|---|---|---|---|")
    for space, rate, cart in rows:
        print(f"| {space} | {rate:,.0f} | {cart:,.0f} | {rate / cart:.2f} | {rate / 10_000:.1f} |")


if __name__ == "__main__":
    main()
