"""``validate(table, schedule)``: replay a schedule on the live trainer and check every recorded
observation and reward. On the CPU, with the same teacher, software and thread count, the match
is exact: the table is the live environment, tabulated."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from kdenv import numerics
from kdenv.benchmark.build import TreeSetup, replay_promise
from kdenv.benchmark.oracle import episode_return
from kdenv.benchmark.table import Table, TableError, table_configs
from kdenv.config import DataConfig, DistillConfig, EnvConfig, from_dict, to_dict
from kdenv.decision.factory import EnvironmentSetup
from kdenv.engine.runtime import make_runtime
from kdenv.engine.teacher import teacher_metadata
from kdenv.numerics import numerics_key


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
    """The live setup a table was built from (:func:`kdenv.benchmark.table.table_configs`), with
    torch set to the thread count it was built with."""
    import torch

    threads = int(table.manifest.get("torch_threads", 1))
    torch.set_num_threads(threads)
    return TreeSetup(*table_configs(table, data_dir, device), threads)


def rebuild_teacher(table: Table) -> str:
    """The command that fine-tunes the table's teacher again, with the settings its manifest records."""
    teacher = table.manifest["teacher"]
    settings = " ".join(f"--{name.replace('_', '-')} {value}" for name, value in (teacher.get("finetune") or {}).items()
                        if name in ("epochs", "learning_rate", "batch_size", "seed") and value is not None)
    if teacher.get("max_train_examples") is not None:
        settings += f" --max-train-examples {teacher['max_train_examples']}"
    return f"python agents/finetune_teacher.py --task {table.task} --force {settings}".rstrip()


def seed_record(table: Table, seed: int | str) -> dict[str, Any]:
    """Where one seed of the table replays exactly: its teacher's fingerprint, its numerics (seeds
    of one table may come from two replay classes, each with its own fine-tune of the teacher) and
    the numerics its teacher caches were computed in (absent from the record: its own)."""
    provenance = (table.manifest.get("seed_provenance") or {}).get(str(seed)) or {}
    record = provenance.get("numerics") or table.manifest.get("numerics")
    return {"teacher": provenance.get("teacher") or table.manifest["teacher"]["fingerprint"], "numerics": record,
            "cache_numerics": provenance.get("cache_numerics") or numerics_key(record)}


def native_here() -> str:
    """The numerics key of this CPU's native numerics (what a ``KDENV_NUMERICS=native`` process computes in)."""
    return numerics_key({"portable": False, "cpu": numerics.cpu_model()})


def cache_keys(wanted: str | dict[str, str]) -> set[str]:
    """The numerics keys a seed's teacher caches were computed in (one, or one per split)."""
    return set(wanted.values()) if isinstance(wanted, dict) else {wanted}


def plan_text(plan: str | dict[str, str]) -> str:
    """A cache plan in words: one key, or the splits of each key (``reward, dev: native on ...; train: ...``)."""
    if not isinstance(plan, dict):
        return plan
    by_key: dict[str, list[str]] = {}
    for split in numerics.CACHE_SPLITS:
        if split in plan:
            by_key.setdefault(plan[split], []).append(split)
    return "; ".join(f"{', '.join(splits)}: {key}" for key, splits in by_key.items())


def caches_by_seed(table: Table, seeds: list[int], mine: dict[str, Any] | None) -> list[tuple[Any, list[int]]]:
    """The seeds to replay grouped by the numerics their teacher caches must be computed in: None
    for this process's own (the usual case), else a key or one key per split, for
    :func:`kdenv.numerics.caches_computed_in`. Seeds built on an Intel Xeon before caches were keyed
    by their numerics trained in the portable mode on caches computed in native numerics
    (docs/numerics.md); a CPU of that model computes those in a native subprocess."""
    groups: list[tuple[Any, list[int]]] = []
    for seed in seeds:
        wanted = seed_record(table, seed)["cache_numerics"]
        plan = None if mine is None or cache_keys(wanted) == {numerics_key(mine)} else wanted
        for known, members in groups:
            if known == plan:
                members.append(seed)
                break
        else:
            groups.append((plan, [seed]))
    return groups


def build_caches_in(plan: str | dict[str, str], setup: TreeSetup) -> None:
    """Computes the teacher caches of ``setup`` that ``plan`` wants in numerics other than this
    process's (this CPU's native numerics only), in a subprocess that runs in them, for
    :func:`kdenv.numerics.caches_computed_in` to read."""
    import json
    import os
    import subprocess
    import sys

    others = cache_keys(plan) - {numerics.own_cache_numerics()}
    if not others:
        return
    if others != {native_here()}:
        raise TableError(f"the teacher caches of these seeds were computed in {', '.join(sorted(others))}; this machine "
                         f"computes in {numerics_key(numerics.describe())} or {native_here()}, so a replay cannot match "
                         "exactly: replay them on a machine of that kind, or compare statistically (--statistical N)")
    payload = json.dumps({"data": to_dict(setup.data), "distill": to_dict(setup.distill), "env": to_dict(setup.env),
                          "threads": setup.threads})
    env = {**{k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV}, numerics.MODE_ENV: "native"}
    done = subprocess.run([sys.executable, "-m", "kdenv.benchmark.validate", payload], env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise TableError(f"computing the teacher caches in {native_here()} failed: {done.stderr.strip()[-600:]}")


def table_teachers(table: Table, seeds: list[int] | None = None) -> dict[str, list[int]]:
    """The table's teacher fingerprints, each with the seeds built with it (of ``seeds``, default all)."""
    teachers: dict[str, list[int]] = {}
    for seed in table.seeds if seeds is None else seeds:
        teachers.setdefault(seed_record(table, seed)["teacher"], []).append(seed)
    return teachers


def teacher_mismatch(table: Table, live: str, seeds: list[int] | None) -> str | None:
    """Why ``live`` (a teacher fingerprint) cannot replay ``seeds`` (default: any seed of the table
    will do, e.g. for agents that play new seeds), or None."""
    teachers = table_teachers(table, seeds)
    if (live in teachers) if seeds is None else (set(teachers) == {live}):
        return None
    built = "; ".join(f"seeds {found} with teacher {fingerprint}" for fingerprint, found in teachers.items())
    return (f"the seeds were built with these teachers (one fine-tune of the table's recipe per replay class): "
            f"{built}; this machine's "
            f"{table.task} teacher is {live}, so a replay cannot match. Replay those seeds on a machine of their replay "
            f"class (docs/numerics.md), with the teacher rebuilt there by the table's recipe ({rebuild_teacher(table)}), "
            "which gets their fingerprint; here, replay the seeds of this machine's class and teacher only, or "
            "compare statistically (--statistical N)")


def saved_teacher_refusal(table: Table, saved: dict[str, Any] | None, seeds: list[int] | None,
                          required: bool = False) -> str | None:
    """Why this machine's saved teacher (its metadata, ``saved``) cannot serve ``seeds`` (default:
    one of the table's teachers will do), or None; with ``required``, a missing teacher is a reason."""
    if saved is None and required:
        built = ", ".join(table_teachers(table, seeds))
        return (f"no {table.task} teacher on this machine; the table was built with teacher {built}: "
                f"rebuild it ({rebuild_teacher(table)}) and check that it gets that fingerprint")
    if saved is not None and saved.get("fingerprint") is not None:
        return teacher_mismatch(table, saved["fingerprint"], seeds)
    return None


def check_saved_teacher(table: Table, required: bool = False, seeds: list[int] | None = None) -> None:
    """This machine's saved teacher must be the one ``seeds`` were built with (by the fingerprint
    recorded when it was saved; default: one of the table's teachers); with ``required``, it must
    also exist (instead of being fine-tuned with defaults)."""
    why = saved_teacher_refusal(table, teacher_metadata(table.task), seeds, required)
    if why:
        raise TableError(why)


def replay_context(table: Table, device: str = "cpu") -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """What a replay here is checked against, read once: this machine's saved teacher, and this
    process's numerics where they matter (a CPU replay of a CPU table; else None)."""
    on_cpu = make_runtime(device, "fp32").device.type == "cpu"  # "auto" on a machine without CUDA is the CPU
    cpu_table = not str(table.manifest.get("device", "cpu")).startswith("cuda")
    return teacher_metadata(table.task), numerics.describe() if on_cpu and cpu_table else None


def replay_refusal(table: Table, seeds: list[int], saved: dict[str, Any] | None,
                   mine: dict[str, Any] | None) -> str | None:
    """Why ``seeds`` cannot replay exactly with this teacher (``saved``) and numerics (``mine``:
    None where they do not matter), or None."""
    why = saved_teacher_refusal(table, saved, seeds)
    if why or mine is None:
        return why
    for seed in seeds:
        record = seed_record(table, seed)
        theirs = record["numerics"]
        if theirs is None and mine["mode"] == "native":
            continue  # built before numerics were recorded: native on its own CPU, which cannot be checked here
        if numerics_key(theirs) != numerics_key(mine):
            return (f"seed {seed} of this table was built in {replay_promise(theirs)}; this process runs in "
                    f"{replay_promise(mine)}, so a replay cannot match exactly. Replay where the seed's "
                    "numerics can be had (docs/numerics.md), the seeds of this machine's class only (--seed), "
                    "or compare statistically (--statistical N)")
        if cache_keys(record["cache_numerics"]) - {numerics_key(mine), native_here()}:
            return (f"seed {seed}'s teacher caches were computed in {record['cache_numerics']}; this machine computes in "
                    f"{numerics_key(mine)} or {native_here()}, so a replay cannot match exactly. Replay it on a "
                    "machine of that kind, or compare statistically (--statistical N)")
    return None


def check_before_replay(table: Table, device: str = "cpu", seeds: list[int] | None = None) -> None:
    """What can be checked before the expensive preparation (data, caches, student): this
    machine's saved teacher must be the one ``seeds`` (default all) were built with (by the
    fingerprint recorded when it was saved), and on the CPU this process's numerics must be those
    the seeds were built in."""
    why = replay_refusal(table, list(table.seeds) if seeds is None else seeds, *replay_context(table, device))
    if why:
        raise TableError(why)


def replayable_seeds(table: Table, device: str = "cpu") -> tuple[list[int], dict[int, str]]:
    """The table's seeds this machine can replay exactly (its saved teacher and numerics are
    theirs), and for each of the others why not. Refuses, with the reason, when none can be."""
    context = replay_context(table, device)
    elsewhere = {seed: why for seed in table.seeds if (why := replay_refusal(table, [seed], *context))}
    exact = [seed for seed in table.seeds if seed not in elsewhere]
    if not exact:
        raise TableError(replay_refusal(table, list(table.seeds), *context))  # the whole table's first reason
    return exact, elsewhere


def check_teacher(table: Table, environment: EnvironmentSetup, seeds: list[int] | None = None) -> None:
    why = teacher_mismatch(table, environment.distillation.teacher_fingerprint,
                           list(table.seeds) if seeds is None else seeds)
    if why:
        raise TableError(why)


def validate(table: Table, schedule: list[int], seed: int, environment: EnvironmentSetup,
             atol: float = 0.0) -> Validation:
    """Replays ``schedule`` (subset indices) from ``seed`` on the live environment and compares."""
    if seed not in table.nodes:
        raise TableError(f"seed {seed} is not in the table (it has {table.seeds})")
    check_teacher(table, environment, [seed])
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


if __name__ == "__main__":  # build_caches_in's subprocess: a setup's teacher caches, in this process's numerics
    import json
    import sys

    import torch

    _given = json.loads(sys.argv[1])
    torch.set_num_threads(int(_given["threads"]))
    TreeSetup(from_dict(DataConfig, _given["data"]), from_dict(DistillConfig, _given["distill"]),
              from_dict(EnvConfig, _given["env"]), int(_given["threads"])).build_env(progress=False)
