"""Distil a student from a task's fine-tuned teacher with fixed knowledge weights.

    python agents/distill.py --task rte --knowledge gkd
    python agents/distill.py --task rte --knowledge logits=0.5,hidden=1,gradient=1

--knowledge takes a recipe (kd, pkd, gkd, gkd-cls; gkd-paper and gkd-cls-paper reproduce the
official GKD objective and training recipe), knowledge types (bare: weight 1), or type=weight
pairs; items may be mixed, later ones win. Types: ce, logits, hidden, hidden_cls, attention,
relation, gradient, gradient_cls. Weights apply to loss-normalised terms (see README) unless
--no-normalize-losses.

The teacher is fine-tuned first if runs/teachers/<task>/ holds none; its knowledge is cached
under runs/cache/ and reused. Results, config and TensorBoard logs go to
runs/distill/<task>/<knowledge>_<time>/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from kdenv.cli import (
    CLEAR_ERRORS,
    add_common_arguments,
    add_config_arguments,
    config_from_args,
    fail,
    given_fields,
    run_main,
)
from kdenv.config import ConfigError, DataConfig, DistillConfig, save_run_config, to_dict
from kdenv.engine.distillation import prepare_distillation, student_record
from kdenv.engine.recipes import RECIPES, parse_knowledge
from kdenv.engine.runtime import make_runtime, quiet_transformers
from kdenv.engine.tasks import TASKS, get_task
from kdenv.io import atomic_write, check_writable
from kdenv.paths import runs_dir

DATA_FLAGS = ("max_length", "reward_size", "max_reward_examples", "max_train_examples", "split_seed")
DISTILL_FLAGS = (
    "teacher_model", "student_layers", "student_init", "student_dropout", "fresh_head", "student_model",
    "freeze_embeddings", "distill_epochs", "batch_size", "learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm",
    "temperature", "normalize_losses", "teacher_mode", "cache_dtype", "cache_memory_budget_gb", "seed",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--task", required=True, help=f"GLUE task ({', '.join(TASKS)}) or a task file, path/to/task.yaml (docs/own_task.md)")
    add("--knowledge", default="kd", help=f"recipe ({', '.join(RECIPES)}) or type[=weight] list (default: kd)")
    add("--eval-every", type=int, default=None, help="updates between reward-split evaluations (default: once per epoch)")
    add("--output-dir", default=None, help="run folder (default runs/distill/<task>/<knowledge>_<time>)")
    add_common_arguments(add)
    add_config_arguments(parser, DataConfig, "data", "data and splits", DATA_FLAGS)
    add_config_arguments(parser, DistillConfig, "distill", "student, optimisation and losses (a *-paper recipe sets "
                         "its own; flags given here still win)", DISTILL_FLAGS,
                         rename={"distill_epochs": "epochs"})  # the one budget in passes this program has
    return parser.parse_args(argv)


@run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_transformers()
    try:
        task = get_task(args.task)
        recipe = parse_knowledge(args.knowledge)
        data_config = config_from_args(DataConfig, args, "data", task=task.ref, data_dir=args.data_dir)
        # The recipe's training settings (the *-paper recipes), then every flag the user gave.
        options = {name: {**recipe.options.get(name, {})} for name in recipe.options}
        config = config_from_args(DistillConfig, args, "distill", **recipe.training, knowledge_options=options,
                                  device=args.device, precision=args.precision)
        if args.eval_every is not None and args.eval_every < 1:
            raise ConfigError(f"--eval-every must be >= 1, not {args.eval_every}")
        runtime = make_runtime(args.device, args.precision)
        label = args.knowledge.replace(",", "+").replace("=", "")
        run_dir = Path(args.output_dir) if args.output_dir else runs_dir() / "distill" / task.name / f"{label}_{time.strftime('%Y%m%d-%H%M%S')}"
        check_writable(run_dir)
        print(f"distilling {task.name} with {recipe.weights} on {runtime.describe()}"
              + (f"; recipe settings {recipe.training}, overridden by {given_fields(args, 'distill')}" if recipe.training else ""))
        setup = prepare_distillation(data_config, config, list(recipe.weights), runtime, progress=not args.no_progress)
        trainer = setup.build_trainer()
        run_dir.mkdir(parents=True, exist_ok=True)
        save_run_config(run_dir / "config.yaml", {"distill": config.seed, "split": data_config.split_seed},
                        teacher=setup.teacher_record(), data=data_config, distill=config,
                        student=student_record(config),
                        knowledge={"spec": args.knowledge, "weights": recipe.weights})
    except CLEAR_ERRORS as error:
        return fail(error)
    total = trainer.total_updates
    eval_every = args.eval_every or trainer.stream.batches_per_epoch
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir))
    print(f"teacher knowledge: {setup.cache_reports}; {total} updates; logs: {run_dir}")
    bar = tqdm(total=total, desc=f"distil {task.name} ({args.knowledge})", disable=args.no_progress, unit="step")

    def log_update(step: int, terms: dict[str, float]) -> None:
        bar.update(1)
        for name, value in terms.items():
            writer.add_scalar(f"loss_weighted/{name}", value, step)

    history, status, start = [], "ok", time.perf_counter()
    while trainer.updates_done < total:
        stats = trainer.run_phase(recipe.weights, min(eval_every, total - trainer.updates_done), on_update=log_update)
        for name, value in stats.losses.items():
            writer.add_scalar(f"loss/{name}", value, trainer.updates_done)
        for name, value in stats.grad_norms.items():
            writer.add_scalar(f"grad_norm/{name}", value, trainer.updates_done)
        writer.add_scalar("train/learning_rate", stats.learning_rate, trainer.updates_done)
        reward = trainer.evaluate("reward")
        for name, value in reward.items():
            writer.add_scalar(f"reward/{name}", value, trainer.updates_done)
        history.append({"updates": trainer.updates_done, "phase": stats.as_dict(), "reward": reward})
        bar.write(f"update {trainer.updates_done}: reward {task.primary_metric} {reward[task.primary_metric]:.4f}")
        if stats.status != "ok":
            status = f"{stats.status}: {stats.message}"
            bar.write(f"stopped: {status}")
            break
    bar.close()
    dev = trainer.evaluate("dev")
    for name, value in dev.items():
        writer.add_scalar(f"dev/{name}", value, trainer.updates_done)
    writer.close()
    metric = task.primary_metric
    teacher_dev = setup.teacher_scores["dev"][metric]
    results = {
        "task": task.name,
        "knowledge": args.knowledge,
        "weights": recipe.weights,
        "status": status,
        "updates": trainer.updates_done,
        "wall_time_s": round(time.perf_counter() - start, 1),
        "dev": dev,
        "teacher_dev": setup.teacher_scores["dev"],
        "student_teacher_ratio": dev[metric] / teacher_dev if teacher_dev else None,
        "device": runtime.describe(),
        "teacher_knowledge": setup.cache_reports,
        "history": history,
        "config": {"data": to_dict(data_config), "distill": to_dict(config)},
    }
    with atomic_write(run_dir / "results.json") as handle:
        json.dump(results, handle, indent=2)
    print(f"dev {metric}: student {dev[metric]:.4f}, teacher {teacher_dev:.4f}; results in {run_dir / 'results.json'}")
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
