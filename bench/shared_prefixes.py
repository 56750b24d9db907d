"""What shared prefixes save in an evaluation: the same policies on the same seeds, once with a seed's
runs sharing their common action prefixes (the default of agents/evaluate.py and live_check.py) and once
each run alone (--no-share-prefixes), timed in the same process, with every result checked equal.

    python bench/shared_prefixes.py --task stsb --data-dir ../shared/data/glue
    python bench/shared_prefixes.py --updates-per-phase 128 --seeds 0     # the long-horizon regime's phases

The default policies are what the live check plays on the long-horizon table (stsb_k2_u128): the
constant, the best open-loop schedule and agent-like schedules that open alike. Each mode runs in a
fresh runs folder of its own (the teacher and the data caches linked in), so neither is answered from
the other's cached runs. Needs the task's teacher (agents/finetune_teacher.py). Run with nothing else
heavy on the machine, or beside a steady load: the ratio holds either way.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from kdenv.cli import parse_seeds
from kdenv.config import DataConfig, DistillConfig
from kdenv.decision.evaluation import EvaluationRequest, evaluate_policies
from kdenv.engine.runtime import quiet_transformers
from kdenv.paths import RUNS_DIR_ENV, runs_dir

POLICIES = ("only-hidden+gradient,schedule-hidden+gradient/gradient/hidden,"
            "schedule-hidden+gradient/gradient/none,schedule-hidden+gradient/hidden+gradient/hidden")
COMPARED = ("schedule", "return", "dev", "reward_split")


def run_mode(share: bool, args: argparse.Namespace, real_runs: Path) -> tuple[float, list[dict]]:
    with tempfile.TemporaryDirectory() as folder:
        for name in ("teachers", "cache"):  # the teacher and the tokenised data / teacher knowledge caches
            os.symlink(real_runs / name, Path(folder) / name)
        os.environ[RUNS_DIR_ENV] = folder
        request = EvaluationRequest(
            policies=args.policies.split(","), seeds=parse_seeds(args.seeds, "--seeds"),
            data=DataConfig(task=args.task, data_dir=args.data_dir, max_reward_examples=args.max_reward_examples),
            distill=DistillConfig(device="cpu"), knowledge=args.knowledge.split(","), out=Path(folder) / "out",
            budget={"phases": args.phases, "updates_per_phase": args.updates_per_phase, "episode_epochs": None},
            progress=False, share_prefixes=share)
        tick = time.perf_counter()
        result = evaluate_policies(request, device="cpu", precision="fp32")
        return time.perf_counter() - tick, result.runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="stsb", help="GLUE task (its teacher must exist; default stsb)")
    parser.add_argument("--data-dir", default=None, help="local GLUE folder (default $KDENV_GLUE_DIR)")
    parser.add_argument("--policies", default=POLICIES, help=f"comma list of policies (default {POLICIES})")
    parser.add_argument("--knowledge", default="hidden,gradient", help="knowledge the fixed policies are offered")
    parser.add_argument("--seeds", default="0", help="episode seeds, e.g. 0-1 (default 0)")
    parser.add_argument("--phases", type=int, default=3, help="phases an episode (default 3)")
    parser.add_argument("--updates-per-phase", type=int, default=8, help="updates a phase (default 8)")
    parser.add_argument("--max-reward-examples", type=int, default=128, help="reward split size (default 128)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    import torch

    quiet_transformers()
    torch.set_num_threads(args.threads)
    real_runs = runs_dir().resolve()
    if not (real_runs / "teachers" / args.task).is_dir():
        parser.error(f"no {args.task} teacher in {real_runs / 'teachers'}: run agents/finetune_teacher.py --task {args.task}")
    alone_s, alone = run_mode(False, args, real_runs)
    shared_s, shared = run_mode(True, args, real_runs)
    key = lambda run: (run["policy"], run["seed"])  # noqa: E731
    by_key = {key(run): run for run in alone}
    equal = all({f: run[f] for f in COMPARED} == {f: by_key[key(run)][f] for f in COMPARED} for run in shared)
    phases = len(shared) * args.phases
    reused = sum(run["reused_phases"] for run in shared)
    print(f"{len(shared)} runs ({len(args.policies.split(','))} policies x seeds {args.seeds}), {args.phases} phases x "
          f"{args.updates_per_phase} updates, {args.threads} thread(s)")
    print(f"alone:  {alone_s:7.1f} s")
    print(f"shared: {shared_s:7.1f} s  ({reused} of {phases} phases restored, not trained)")
    print(f"ratio shared / alone: {shared_s / alone_s:.2f}; results equal to the bit: {equal}")


if __name__ == "__main__":
    main()
