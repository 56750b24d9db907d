"""Distil a student from a task's fine-tuned teacher with fixed knowledge weights.

    python agents/distill.py --task rte --knowledge gkd
    python agents/distill.py --task rte --knowledge logits=0.5,hidden=1,gradient=1

--knowledge takes a preset (kd, pkd, gkd, gkd-cls), knowledge types (bare: weight 1), or
type=weight pairs; items may be mixed. Types: ce, logits, hidden, attention, relation, gradient,
gradient_cls. Weights apply to loss-normalised terms (see README) unless --no-normalize.

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

from kdenv.cli import add_common_arguments
from kdenv.config import DataConfig, DistillConfig, save_run_config, to_dict
from kdenv.data import DataError
from kdenv.distillation import build_distillation
from kdenv.io import atomic_write
from kdenv.knowledge import KnowledgeError
from kdenv.models import ModelError
from kdenv.paths import runs_dir
from kdenv.presets import PRESETS, parse_knowledge
from kdenv.runtime import make_runtime, quiet_transformers
from kdenv.tasks import TASKS, get_task


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    data, distill = DataConfig(), DistillConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--task", required=True, help=f"GLUE task: {', '.join(TASKS)}")
    add("--knowledge", default="kd", help=f"preset ({', '.join(PRESETS)}) or type[=weight] list (default: kd)")
    add("--epochs", type=float, default=distill.epochs, help=f"passes over the train split (default {distill.epochs})")
    add("--eval-every", type=int, default=None, help="updates between reward-split evaluations (default: once per epoch)")
    add("--student-layers", type=int, default=distill.student_layers,
        help=f"student = this many evenly spaced teacher layers (default {distill.student_layers})")
    add("--student-model", default=None, help="instead: a pre-trained model (hub id or folder) with the teacher's vocabulary")
    add("--train-embeddings", action="store_true", help="also train the student's embeddings (frozen by default, as in GKD)")
    add("--batch-size", type=int, default=distill.batch_size, help=f"training batch size (default {distill.batch_size})")
    add("--lr", type=float, default=distill.learning_rate, help=f"peak AdamW learning rate (default {distill.learning_rate})")
    add("--temperature", type=float, default=distill.temperature, help=f"softmax temperature of `logits` (default {distill.temperature})")
    add("--no-normalize", action="store_true", help="use raw loss magnitudes instead of normalised ones")
    add("--teacher-mode", choices=("cache", "online"), default=distill.teacher_mode,
        help="serve teacher knowledge from the on-disk cache (default) or run the teacher every batch")
    add("--cache-dtype", choices=("float16", "float32"), default=distill.cache_dtype, help="storage of cached teacher tensors")
    add("--cache-memory-gb", type=float, default=distill.cache_memory_budget_gb,
        help=f"above this size the cache is memory-mapped instead of loaded (default {distill.cache_memory_budget_gb})")
    add("--max-train-examples", type=int, default=None, help="cap the train split (quick runs)")
    add("--max-length", type=int, default=data.max_length, help=f"maximum tokens per example (default {data.max_length})")
    add("--seed", type=int, default=distill.seed, help=f"seed of student training (default {distill.seed})")
    add("--output-dir", default=None, help="run folder (default runs/distill/<task>/<knowledge>_<time>)")
    add_common_arguments(add)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_transformers()
    try:
        task = get_task(args.task)
        recipe = parse_knowledge(args.knowledge)
        data_config = DataConfig(task=task.name, data_dir=args.data_dir, max_length=args.max_length,
                                 max_train_examples=args.max_train_examples)
        config = DistillConfig(
            student_layers=args.student_layers, student_model=args.student_model,
            freeze_embeddings=not args.train_embeddings, epochs=args.epochs, batch_size=args.batch_size,
            learning_rate=args.lr, temperature=args.temperature, knowledge_options=recipe.options,
            normalize_losses=not args.no_normalize, teacher_mode=args.teacher_mode, cache_dtype=args.cache_dtype,
            cache_memory_budget_gb=args.cache_memory_gb, seed=args.seed, device=args.device, precision=args.precision,
        )
        runtime = make_runtime(args.device, args.precision)
        names = list(recipe.weights)
        label = args.knowledge.replace(",", "+").replace("=", "")
        run_dir = Path(args.output_dir) if args.output_dir else runs_dir() / "distill" / task.name / f"{label}_{time.strftime('%Y%m%d-%H%M%S')}"
        print(f"distilling {task.name} with {recipe.weights} on {runtime.describe()}")
        setup = build_distillation(data_config, config, names, runtime, progress=not args.no_progress)
    except (DataError, ModelError, KnowledgeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    trainer = setup.trainer
    total = trainer.total_updates
    eval_every = args.eval_every or trainer.stream.batches_per_epoch
    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_config(run_dir / "config.yaml", {"distill": config.seed, "split": data_config.split_seed},
                    data=data_config, distill=config)
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
