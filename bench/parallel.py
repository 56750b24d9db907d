"""In-process against Ray, and one environment against several, on this machine, in one run:

  1. an evaluate batch (`agents/evaluate.py`, policies x seeds) in-process with all cores as torch
     threads, against `--ray` with one worker of one thread per core;
  2. live-agent environment stepping: one environment in this process (all cores), against
     `--n-envs N` environments in SB3's SubprocVecEnv (forkserver, cores / N threads each), the
     same number of environment steps with the same random actions, episode resets included;
  3. Ray's own cost per job (task launch and result transfer of a job-sized result, no work), as
     a share of one phase measured in 2.

    python bench/parallel.py --task rte --data-dir ../shared/data/glue

Needs the task's teacher. Each evaluate batch runs in a fresh runs folder (the teacher and the
teacher-knowledge caches linked in, read-only) so that nothing is answered from the evaluation
cache. Prints the seconds and the ratios (baseline / parallel: above 1 means parallel is faster)
and writes them to --output as JSON. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kdenv.cli import add_common_arguments
from kdenv.config import DataConfig, DistillConfig, EnvConfig
from kdenv.io import atomic_write
from kdenv.paths import RUNS_DIR_ENV, runs_dir

ROOT = Path(__file__).resolve().parent.parent


def evaluate_batch(args, ray: bool) -> float:
    """Wall seconds of one `agents/evaluate.py` batch, in a fresh runs folder."""
    with tempfile.TemporaryDirectory(prefix="kdenv-bench-") as folder:
        for shared in ("teachers", "cache"):
            if (runs_dir() / shared).exists():
                os.symlink((runs_dir() / shared).resolve(), Path(folder) / shared)
        command = [sys.executable, str(ROOT / "agents" / "evaluate.py"), "--task", args.task, "--policies", args.policies,
                   "--seeds", str(args.seeds), "--phases", str(args.phases), "--updates-per-phase",
                   str(args.updates_per_phase), "--no-progress"]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        if ray:
            command += ["--ray", "--cpus-per-job", "1"]
        tick = time.perf_counter()
        subprocess.run(command, check=True, env={**os.environ, RUNS_DIR_ENV: folder}, stdout=subprocess.DEVNULL)
        return time.perf_counter() - tick


def step_environments(args, n_envs: int) -> tuple[float, list[float]]:
    """Wall seconds for ``args.env_steps`` environment steps over ``n_envs`` environments (setup
    excluded, resets included), and the single environment's seconds per step when ``n_envs`` is 1."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    from kdenv.decision.factory import worker_env

    env_config = EnvConfig(phases=args.phases, updates_per_phase=args.updates_per_phase)
    data_config = DataConfig(task=args.task, data_dir=args.data_dir)
    cores = os.cpu_count() or 1
    make = functools.partial(worker_env, args.task, env_config, data_config, DistillConfig(), max(1, cores // n_envs))
    vec = DummyVecEnv([make]) if n_envs == 1 else SubprocVecEnv([make] * n_envs, start_method="forkserver")
    try:
        vec.seed(0)
        vec.reset()
        # The same random actions in the same order whatever n_envs (gradient knowledge costs 3x).
        plan = np.random.default_rng(0).integers(0, 2, size=(args.env_steps, *vec.action_space.shape))
        steps, per_step = 0, []
        tick = time.perf_counter()
        while steps < args.env_steps:
            actions = plan[steps: steps + n_envs]
            started = time.perf_counter()
            vec.step(actions)  # a finished episode resets inside the step
            per_step.append(time.perf_counter() - started)
            steps += n_envs
        return time.perf_counter() - tick, per_step
    finally:
        vec.close()
        if n_envs == 1:
            import torch

            torch.set_num_threads(cores)


def _payload(size: int) -> dict:
    return {"history": list(range(8)), "values": [0.5] * size}


def ray_overhead(repeats: int, payload: int) -> float:
    """Seconds per job that Ray adds: one no-work task at a time through the job runner (launch,
    scheduling, result transfer), after a warm-up that starts the workers."""
    import ray

    from kdenv.jobs import JobRunner

    runner = JobRunner(ray=True, num_cpus=1)
    work = functools.partial(_payload, payload)
    runner.map(lambda _job: work(), [0, 1])  # warm-up: workers started
    times = []
    for index in range(repeats):
        tick = time.perf_counter()
        runner.map(lambda _job: work(), [index])
        times.append(time.perf_counter() - tick)
    ray.shutdown()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="rte", help="GLUE task (its teacher must exist)")
    parser.add_argument("--policies", default="kd,gkd", help="evaluate batch: comma list of policies")
    parser.add_argument("--seeds", type=int, default=2, help="evaluate batch: seeds per policy")
    parser.add_argument("--phases", type=int, default=4, help="phases per episode (evaluate batch and environments)")
    parser.add_argument("--updates-per-phase", type=int, default=8, help="student updates per phase")
    parser.add_argument("--n-envs", type=int, default=2, help="environments in the vectorised run")
    parser.add_argument("--env-steps", type=int, default=16, help="environment steps in each stepping run")
    parser.add_argument("--ray-repeats", type=int, default=20, help="no-work Ray jobs timed (median reported)")
    parser.add_argument("--payload", type=int, default=2000, help="floats in the no-work job's result")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: evaluate, envs, overhead")
    parser.add_argument("--output", default=None, help="JSON file for the numbers (default runs/bench/parallel_<task>.json)")
    add_common_arguments(parser.add_argument)
    args = parser.parse_args()
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    unknown = skip - {"evaluate", "envs", "overhead"}
    if unknown:
        parser.error(f"--skip: unknown parts {sorted(unknown)}; choose among evaluate, envs, overhead")
    if args.n_envs < 2 or args.env_steps < args.n_envs or args.env_steps % args.n_envs:
        parser.error("--n-envs must be >= 2 and --env-steps a positive multiple of --n-envs")
    cores = os.cpu_count() or 1
    result: dict = {"task": args.task, "cores": cores, "phases": args.phases, "updates_per_phase": args.updates_per_phase}
    if "evaluate" not in skip:
        jobs = len(args.policies.split(",")) * args.seeds
        print(f"evaluate batch: {jobs} jobs ({args.policies} x {args.seeds} seeds), {args.phases} x {args.updates_per_phase}")
        here = evaluate_batch(args, ray=False)
        print(f"  in-process, {cores} torch threads: {here:.1f} s")
        on_ray = evaluate_batch(args, ray=True)
        print(f"  Ray, {cores} workers x 1 thread: {on_ray:.1f} s  (ratio {here / on_ray:.2f})")
        result["evaluate"] = {"jobs": jobs, "in_process_s": here, "ray_s": on_ray, "ratio": here / on_ray}
    phase = None
    if "envs" not in skip:
        print(f"environment stepping: {args.env_steps} steps")
        one, per_step = step_environments(args, 1)
        phase = statistics.median(per_step)
        print(f"  1 environment, {cores} threads: {one:.1f} s ({phase:.2f} s per phase, median)")
        many, _ = step_environments(args, args.n_envs)
        print(f"  {args.n_envs} environments x {max(1, cores // args.n_envs)} threads: {many:.1f} s  (ratio {one / many:.2f})")
        result["environments"] = {"steps": args.env_steps, "one_s": one, "n_envs": args.n_envs, "many_s": many,
                                  "ratio": one / many, "phase_s": phase}
    if "overhead" not in skip:
        overhead = ray_overhead(args.ray_repeats, args.payload)
        share = f", {100 * overhead / phase:.2f}% of one phase" if phase else ""
        print(f"Ray's cost per job (no work, {args.payload}-float result): {1000 * overhead:.1f} ms{share}")
        result["ray_overhead"] = {"seconds_per_job": overhead, "share_of_phase": overhead / phase if phase else None}
    output = Path(args.output) if args.output else runs_dir() / "bench" / f"parallel_{args.task}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(output) as handle:
        json.dump(result, handle, indent=2)
    print(f"written {output}")


if __name__ == "__main__":
    main()
