"""``validate(table, schedule)``: replay a schedule on the live trainer and check every recorded
observation and reward. On the CPU, with the same teacher, software and thread count, the match
is exact: the table is the live environment, tabulated."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdenv.benchmark.build import TreeSetup
from kdenv.benchmark.table import Table, TableError
from kdenv.config import DataConfig, DistillConfig, EnvConfig, from_dict
from kdenv.decision.factory import EnvironmentSetup


@dataclass
class Validation:
    seed: int
    schedule: list[int]
    mismatches: list[str] = field(default_factory=list)
    live_rewards: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def table_setup(table: Table, data_dir: str | None = None, device: str = "cpu") -> TreeSetup:
    """The live setup a table was built from (the data folder and device are this machine's), in
    the table's precision, with torch set to the thread count it was built with."""
    import torch

    manifest = table.manifest
    data = from_dict(DataConfig, {**manifest["data"], "data_dir": data_dir})
    precision = str(manifest.get("device", "fp32")).rpartition(", ")[2]  # "cuda:0 (NVIDIA H100 ...), fp32"
    distill = from_dict(DistillConfig, {**manifest["distill"], "device": device, "precision": precision})
    threads = int(manifest.get("torch_threads", 1))
    torch.set_num_threads(threads)
    return TreeSetup(data, distill, from_dict(EnvConfig, manifest["env"]), threads)


def check_teacher(table: Table, environment: EnvironmentSetup) -> None:
    recorded, live = table.manifest["teacher"]["fingerprint"], environment.distillation.teacher_fingerprint
    if recorded != live:
        teacher = table.manifest["teacher"]
        raise TableError(
            f"the table was built with teacher {recorded}, this machine's {table.task} teacher is {live}: a replay "
            f"cannot match. Rebuild that teacher (python agents/finetune_teacher.py --task {table.task} --force with "
            f"its recorded settings: {teacher.get('finetune')}) or build a table for this one")


def validate(table: Table, schedule: list[int], seed: int, environment: EnvironmentSetup,
             atol: float = 0.0) -> Validation:
    """Replays ``schedule`` (subset indices) from ``seed`` on the live environment and compares."""
    check_teacher(table, environment)
    if seed not in table.nodes:
        raise TableError(f"seed {seed} is not in the table (it has {table.seeds})")
    env = environment.env
    scale = env.config.reward_scale
    result = Validation(seed, list(schedule))
    observation, _ = env.reset(seed=seed)
    nodes = table.nodes[seed]

    def compare(label: str, live: Any, recorded: Any) -> None:
        live, recorded = np.asarray(live, dtype=np.float64), np.asarray(recorded, dtype=np.float64)
        if live.shape != recorded.shape or not np.allclose(live, recorded, rtol=0.0, atol=atol):
            result.mismatches.append(f"{label}: live {live.tolist()} vs table {recorded.tolist()}")

    compare("observation at []", np.asarray(observation, dtype=np.float32), nodes[()]["observation"])
    history: tuple[int, ...] = ()
    for action in schedule:
        history = (*history, int(action))
        observation, reward, terminated, _, info = env.step(int(action))
        node = nodes[history]
        result.live_rewards.append(float(reward))
        compare(f"observation at {list(history)}", np.asarray(observation, dtype=np.float32), node["observation"])
        if node["status"] == "ok":
            compare(f"reward at {list(history)}", reward, node["rewards"][env.config.reward] * scale)
            compare(f"reward-split metric at {list(history)}", info["metric"], node["metric"])
        if bool(terminated) != bool(node.get("terminal")):
            result.mismatches.append(f"terminated at {list(history)}: live {terminated} vs table {node.get('terminal')}")
        if terminated:
            break
    return result
