"""Evaluate knowledge-selection policies against each other: every policy runs as a full
distillation (same teacher, same initial student, same budget, same seeds) and is scored on GLUE
dev, with teacher–student consistency metrics.

    python agents/evaluate.py --task rte --seeds 0-2 \
        --policies kd,gkd,gkd-cls,pkd,all,none,random-hard,random-soft,agent:runs/rte/a2c_default/agent.zip

Policies: fixed ones (all, none, random-hard, random-soft, linear-increase, linear-decrease,
only-<type>[+<type>...] (a constant subset, e.g. only-hidden+gradient), schedule-<subset>/<subset>/...
(one subset a phase, none for no teacher knowledge, e.g. schedule-hidden+gradient/gradient/hidden: a
table's open-loop schedule), and the recipes kd, pkd, gkd, gkd-cls) and agent:<path to agent.zip> (trained by agents/train.py or agents/train_table.py;
the agent may come from another task: it needs only the same knowledge set).
Each fixed policy gets an environment offering the types it needs (recipes: their own types;
others: --knowledge); agents get the knowledge set they were trained with.

Every policy is compared with one baseline (--baseline; default the best non-agent policy on dev)
seed by seed: the paired difference of the dev metric and of the reward-split metric, with its
bootstrap 95% interval over the seeds.

Writes runs/eval/<task>/<time>/: results.md and results.csv (mean ± std over seeds of the dev
metric, teacher score, student/teacher ratio, label / probability / saliency loyalty, wall time
per run, the paired differences), metric_by_policy.png, schedule_<agent>.png (mean learned schedule over seeds),
runs.json and TensorBoard events. Finished runs are kept under runs/eval/<task>/cache/ and reused
when the same policy, seed and configuration come again, so a killed evaluation resumes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kdenv.cli import (
    CLEAR_ERRORS,
    add_common_arguments,
    add_config_arguments,
    add_seed_arguments,
    chosen_seeds,
    config_from_args,
    fail,
    given_fields,
    run_main,
)
from kdenv.config import (
    BUDGETS,
    DataConfig,
    DistillConfig,
    EnvConfig,
    budget_env_fields,
    budget_help_defaults,
)
from kdenv.decision.evaluation import EvaluationRequest, evaluate_policies
from kdenv.decision.evaluation_report import write_report
from kdenv.engine.runtime import quiet_transformers
from kdenv.engine.tasks import TASKS, get_task
from kdenv.jobs import JobRunner, add_job_arguments
from kdenv.paths import runs_dir

DEFAULT_POLICIES = "kd,gkd,gkd-cls,pkd,all,none,random-hard,random-soft"
DATA_FLAGS = ("max_length", "reward_size", "max_reward_examples", "max_train_examples", "split_seed")
DISTILL_FLAGS = ("teacher_model", "student_layers", "student_init", "student_dropout", "fresh_head", "student_model",
                 "teacher_mode", "seed")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--task", required=True, help=f"GLUE task ({', '.join(TASKS)}) or a task file, path/to/task.yaml (docs/own_task.md)")
    add("--policies", default=DEFAULT_POLICIES, help=f"comma list of policies (default {DEFAULT_POLICIES})")
    add_seed_arguments(add, 3, "episode seeds per policy",
                       "first episode seed of --num-seeds (default 0); e.g. 4 to judge a table agent on seeds its "
                       "table never held")
    add("--preset", choices=list(BUDGETS), default="cpu",
        help="run budget (the same definitions as agents/train.py); flags below override it")
    add("--baseline", default=None, metavar="POLICY",
        help="the policy every other is compared with seed by seed (paired differences with bootstrap 95%% "
             "intervals); one of --policies (default: the non-agent policy with the best mean dev metric, which "
             "is chosen on these very seeds: name it in advance for a fair test)")
    add("--output-dir", default=None, help="default runs/eval/<task>/<time>")
    add("--unsafe-load-agents", action="store_true",
        help="also unpickle what kdenv cannot rebuild from an agent zip. Unpickling runs any code the file holds: use "
             "only for agent files you trust. Without it such a file is refused (agent files written by kdenv never "
             "need it)")
    add("--no-share-prefixes", action="store_true",
        help="train every run's phases in full (default: a seed's runs go to one process, and a phase an earlier "
             "run of the seed trained with the same actions is restored instead of trained again: bit-exact on the "
             "CPU; each result counts its reused_phases)")
    add_common_arguments(add)
    add_job_arguments(add)
    preset = budget_help_defaults()  # each --preset's value, shown in the help
    add_config_arguments(parser, EnvConfig, "env", "episode budget and knowledge of non-recipe fixed policies",
                         ("knowledge", "phases", "updates_per_phase"), defaults=preset)
    add_config_arguments(parser, DataConfig, "data", "data and splits", DATA_FLAGS,
                         defaults=preset)
    add_config_arguments(parser, DistillConfig, "distill", "student and teacher", DISTILL_FLAGS,
                         rename={"seed": "student-seed"},
                         defaults=preset)
    return parser.parse_args(argv)


def request_from_args(args: argparse.Namespace) -> EvaluationRequest:
    """The evaluation the flags ask for: the --preset's budget, overridden by the flags given."""
    task = get_task(args.task)
    budget = BUDGETS[args.preset]
    data = config_from_args(DataConfig, args, "data", task=task.ref, data_dir=args.data_dir,
                            max_reward_examples=budget.max_reward_examples)
    distill = config_from_args(DistillConfig, args, "distill", student_layers=budget.student_layers,
                               teacher_model=budget.teacher_model, device=args.device, precision=args.precision)
    env = config_from_args(EnvConfig, args, "env", **budget_env_fields(budget, given_fields(args, "env")))
    out = Path(args.output_dir) if args.output_dir else runs_dir() / "eval" / task.name / time.strftime("%Y%m%d-%H%M%S")
    return EvaluationRequest(
        policies=[p.strip() for p in args.policies.split(",") if p.strip()],
        seeds=chosen_seeds(args, 0), data=data, distill=distill,
        budget={"phases": env.phases, "updates_per_phase": env.updates_per_phase, "episode_epochs": env.episode_epochs},
        knowledge=env.knowledge, out=out, baseline=args.baseline, unsafe_load_agents=args.unsafe_load_agents,
        progress=not args.no_progress, share_prefixes=not args.no_share_prefixes)


@run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_transformers()
    try:
        request = request_from_args(args)
        result = evaluate_policies(request, JobRunner.from_args(args), args.device, args.precision)
    except CLEAR_ERRORS as error:
        return fail(error)
    print(write_report(result, "python agents/evaluate.py " + " ".join(sys.argv[1:] if argv is None else argv)))
    print(f"results in {request.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
