"""Synthetic tables for tests: written to disk by the table format's own writers, then loaded."""

from __future__ import annotations

import itertools

import numpy as np

from kdenv.benchmark.outputs import labels_fingerprint, outputs_file, write_outputs
from kdenv.benchmark.table import Table, write_manifest, write_seed
from kdenv.engine.tasks import get_task
from kdenv.io import file_sha256


def table_with_outputs(directory, task: str, knowledge: list[str], phases: int, reward_labels: np.ndarray,
                       dev_labels: np.ndarray, outputs, seeds=(0, 1), teacher=None) -> Table:
    """A table whose leaves hold the given outputs: ``outputs(seed, schedule, split)`` returns the
    student's outputs ([examples, columns]) on ``split`` ("reward" or "dev") after ``schedule``
    (``()`` for the initial student; inner nodes get the initial student's). Records carry the
    metrics computed from those outputs; every seed shares the root observation, and the
    observations after the first phase tell seeds apart. ``teacher(split)``: the teacher's outputs
    there (none stored without it)."""
    from kdenv.benchmark.outofsample import metric_rows

    spec = get_task(task)
    metric = spec.primary_metric
    actions = 2 ** len(knowledge)
    width = 8 + 3 * len(knowledge)
    arrays_by_seed = {}
    for seed in seeds:
        root = np.asarray(outputs(seed, (), "reward"), dtype=np.float32)
        start = float(metric_rows(spec, metric, root, reward_labels))
        records = [{"history": [], "depth": 0, "observation": [0.0] * width, "metric": start, "loss": 1.0}]
        histories, reward, dev_histories, dev = [()], [root], [], []
        for depth in range(1, phases + 1):
            for history in itertools.product(range(actions), repeat=depth):
                leaf = depth == phases
                values = np.asarray(outputs(seed, history, "reward") if leaf else root, dtype=np.float32)
                value = float(metric_rows(spec, metric, values, reward_labels))
                record = {"history": list(history), "depth": depth, "metric": value, "loss": 1.0, "status": "ok",
                          "terminal": leaf, "observation": [depth / phases, float(seed)] + [0.0] * (width - 2),
                          "weights": {k: float((history[-1] >> bit) & 1) for bit, k in enumerate(knowledge)},
                          # inner nodes hold the initial student, so the whole gain comes at the leaf
                          "rewards": {"metric_gain": value - start if leaf else 0.0}}
                if leaf:
                    dev_values = np.asarray(outputs(seed, history, "dev"), dtype=np.float32)
                    record["dev"] = {metric: float(metric_rows(spec, metric, dev_values, dev_labels))}
                    dev_histories.append(history)
                    dev.append(dev_values)
                records.append(record)
                histories.append(history)
                reward.append(values)
        write_seed(directory, seed, records)

        def padded(keys):
            array = np.full((len(keys), phases), -1, dtype=np.int16)
            for row, key in enumerate(keys):
                array[row, : len(key)] = key
            return array

        arrays_by_seed[seed] = {"histories": padded(histories), "reward": np.stack(reward).astype(np.float16),
                                "dev_histories": padded(dev_histories), "dev": np.stack(dev).astype(np.float16)}
        if teacher is not None:
            arrays_by_seed[seed].update({f"teacher_{split}": np.asarray(teacher(split), np.float16)
                                         for split in ("reward", "dev")})
    files = {outputs_file(seed): file_sha256(write_outputs(directory, seed, arrays))
             for seed, arrays in arrays_by_seed.items()}
    nodes = sum(actions**d for d in range(phases + 1))
    write_manifest(directory, {
        "task": task, "seeds": list(seeds), "knowledge": list(knowledge), "phases": phases, "nodes_per_seed": nodes,
        "env": {"knowledge": list(knowledge), "phases": phases, "updates_per_phase": 1},
        "outputs": {"dtype": "float16", "columns": spec.num_labels,
                    "examples": {"reward": len(reward_labels), "dev": len(dev_labels)},
                    "labels": {"reward": labels_fingerprint(reward_labels), "dev": labels_fingerprint(dev_labels)}},
        "outputs_files": files})
    return Table.load(directory)


def synthetic_table(directory, returns_by_seed, dev=lambda value: value, observe_seed=False):
    """A 1-type, 2-phase table whose leaf returns are given: rewards 0 at depth 1, the return at
    depth 2, and dev accuracy ``dev(return)`` at the leaves. Actions 0/1 = logits off/on. Every seed
    shares the root observation; after the first phase the observations tell seeds apart only with
    ``observe_seed``."""
    nodes_by_seed = {}
    for seed, returns in returns_by_seed.items():
        records = [{"history": [], "depth": 0, "observation": [0.0] * 11, "metric": 0.0, "loss": 1.0}]
        for a in range(2):
            records.append({"history": [a], "depth": 1, "observation": [0.5, seed * observe_seed] + [0.0] * 9, "metric": 0.0,
                            "loss": 1.0, "status": "ok", "terminal": False, "weights": {"logits": float(a)},
                            "rewards": {"metric_gain": 0.0}})
            for b in range(2):
                value = returns[(a, b)]
                records.append({"history": [a, b], "depth": 2, "observation": [1.0] + [0.0] * 10, "metric": value,
                                "loss": 1.0, "status": "ok", "terminal": True, "weights": {"logits": float(b)},
                                "rewards": {"metric_gain": value}, "dev": {"accuracy": dev(value)}})
        write_seed(directory, seed, records)
        nodes_by_seed[seed] = records
    write_manifest(directory, {"task": "rte", "seeds": list(returns_by_seed), "knowledge": ["logits"], "phases": 2,
                               "nodes_per_seed": 7, "env": {"knowledge": ["logits"], "phases": 2, "updates_per_phase": 1}})
    return Table.load(directory)


def obvious_table(directory):
    """Switching logits on pays +0.1 per phase on every seed: the oracle is (1, 1), return 0.2."""
    returns = {(0, 0): 0.0, (0, 1): 0.1, (1, 0): 0.1, (1, 1): 0.2}
    return synthetic_table(directory, {0: returns, 1: returns, 2: returns})
