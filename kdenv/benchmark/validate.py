"""``validate(table, schedule)``: replay a schedule on the live trainer and check every recorded
observation and reward. On the CPU, with the same teacher, software and thread count, the match
is exact: the table is the live environment, tabulated."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from kdenv import numerics
from kdenv.benchmark.build import TreeSetup, numerics_key, replay_promise
from kdenv.benchmark.oracle import episode_return
from kdenv.benchmark.table import Table, TableError
from kdenv.config import DataConfig, DistillConfig, EnvConfig, from_dict
from kdenv.decision.factory import EnvironmentSetup
from kdenv.engine.teacher import teacher_metadata


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


def rebuild_teacher(table: Table) -> str:
    """The command that fine-tunes the table's teacher again, with the settings its manifest records."""
    teacher = table.manifest["teacher"]
    settings = " ".join(f"--{name.replace('_', '-')} {value}" for name, value in (teacher.get("finetune") or {}).items()
                        if name in ("epochs", "learning_rate", "batch_size", "seed") and value is not None)
    if teacher.get("max_train_examples") is not None:
        settings += f" --max-train-examples {teacher['max_train_examples']}"
    return f"python agents/finetune_teacher.py --task {table.task} --force {settings}".rstrip()


def check_saved_teacher(table: Table, required: bool = False) -> None:
    """This machine's saved teacher must be the table's (by the fingerprint recorded when it was
    saved); with ``required``, it must also exist (instead of being fine-tuned with defaults)."""
    saved, recorded = teacher_metadata(table.task), table.manifest["teacher"]["fingerprint"]
    rebuild = rebuild_teacher(table)
    if saved is None and required:
        raise TableError(f"no {table.task} teacher on this machine; the table was built with teacher {recorded}: "
                         f"rebuild it ({rebuild}) and check that it gets that fingerprint")
    if saved is not None and saved.get("fingerprint") not in (None, recorded):
        raise TableError(f"the table was built with teacher {recorded}, this machine's {table.task} teacher is "
                         f"{saved['fingerprint']}: a replay cannot match. Rebuild that teacher ({rebuild}) or build a "
                         "table for this one")


def check_before_replay(table: Table, device: str = "cpu") -> None:
    """What can be checked before the expensive preparation (data, caches, student): this
    machine's saved teacher must be the table's (by the fingerprint recorded when it was saved),
    and on the CPU this process's numerics must be those the table's seeds were built in."""
    check_saved_teacher(table)
    if device != "cpu" or str(table.manifest.get("device", "cpu")).startswith("cuda"):
        return
    mine = numerics.describe()
    for seed, provenance in (table.manifest.get("seed_provenance") or {"all": {"numerics": None}}).items():
        theirs = provenance.get("numerics") or table.manifest.get("numerics")
        if theirs is None and mine["mode"] == "native":
            continue  # built before numerics were recorded: native on its own CPU, which cannot be checked here
        if numerics_key(theirs) != numerics_key(mine):
            raise TableError(f"seed {seed} of this table was built in {replay_promise(theirs)}; this process runs in "
                             f"{replay_promise(mine)}, so a replay cannot match exactly. Replay where the table's "
                             "numerics can be had (e.g. KDENV_NUMERICS=native on its CPU)")


def check_teacher(table: Table, environment: EnvironmentSetup) -> None:
    recorded, live = table.manifest["teacher"]["fingerprint"], environment.distillation.teacher_fingerprint
    if recorded != live:
        raise TableError(f"the table was built with teacher {recorded}, this machine's {table.task} teacher is {live}: "
                         f"a replay cannot match. Rebuild that teacher ({rebuild_teacher(table)}) or build a table for "
                         "this one")


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


def statistical_replay(table: Table, seed: int, environment: EnvironmentSetup, schedules: int = 16,
                       rng_seed: int = 0, reward: str = "metric_gain") -> dict[str, Any]:
    """Where an exact replay is impossible (another CPU in native numerics, other software, a
    rebuilt teacher): ``schedules`` random schedules of ``seed`` played on the live trainer, and
    how far their returns (``reward``, before scaling) are from the table's: the largest absolute
    difference and Spearman's rank correlation over the schedules (1: the table ranks them as the
    live trainer does)."""
    if seed not in table.nodes:
        raise TableError(f"seed {seed} is not in the table (it has {table.seeds})")
    rng = np.random.default_rng(rng_seed)
    env = environment.env
    scale = env.config.reward_scale
    played = []
    for _ in range(schedules):
        schedule = [int(a) for a in rng.integers(table.num_actions, size=table.phases)]
        env.reset(seed=seed)
        live = 0.0
        for action in schedule:
            _, _, terminated, _, info = env.step(action)
            live += info["task_reward"] / scale if info["status"] == "ok" else -1.0
            if terminated:
                break
        played.append({"schedule": schedule, "live": live, "table": episode_return(table, seed, tuple(schedule), reward)})
    live, tabled = np.array([p["live"] for p in played]), np.array([p["table"] for p in played])
    rho = spearmanr(live, tabled).statistic if len(set(live)) > 1 and len(set(tabled)) > 1 else float("nan")
    return {"seed": seed, "schedules": played, "max_abs_difference": float(np.abs(live - tabled).max()),
            "rank_correlation": float(rho), "reward": reward}
