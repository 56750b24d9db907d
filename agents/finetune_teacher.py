"""Fine-tune the teacher of a GLUE task and save it under runs/teachers/<task>/.

    python agents/finetune_teacher.py --task rte --data-dir ../shared/data/glue

Reuses an existing teacher unless --force is given. Later commands (distillation, the
environment) load the teacher from the same place.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kdenv.cli import add_common_arguments
from kdenv.config import DataConfig, FinetuneConfig
from kdenv.data import DataError
from kdenv.models import ModelError
from kdenv.paths import teacher_dir
from kdenv.runtime import make_runtime, quiet_transformers
from kdenv.tasks import TASKS, get_task
from kdenv.teacher import finetune_teacher, teacher_metadata


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    data, tune = DataConfig(), FinetuneConfig()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--task", required=True, help=f"GLUE task: {', '.join(TASKS)}")
    parser.add_argument("--model", default=tune.model,
                        help="base model: 'minilm' (packaged all-MiniLM-L6-v2, offline), a hub id, or a local folder")
    parser.add_argument("--epochs", type=int, default=tune.epochs, help="passes over the train split")
    parser.add_argument("--batch-size", type=int, default=tune.batch_size, help="training batch size")
    parser.add_argument("--lr", type=float, default=tune.learning_rate, help="peak AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=tune.weight_decay, help="AdamW weight decay (not on biases/LayerNorm)")
    parser.add_argument("--warmup-ratio", type=float, default=tune.warmup_ratio, help="share of updates spent in linear warmup")
    parser.add_argument("--max-length", type=int, default=data.max_length, help="maximum tokens per example (truncation)")
    parser.add_argument("--reward-size", type=float, default=data.reward_size,
                        help="share of train held out as the reward split (a count if >= 1); training never sees it")
    parser.add_argument("--split-seed", type=int, default=data.split_seed, help="seed of the train/reward split")
    parser.add_argument("--select-on", choices=("reward", "dev"), default="reward",
                        help="split whose metric picks the best epoch; 'reward' keeps GLUE dev for final evaluation only")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many updates (for smoke tests)")
    parser.add_argument("--seed", type=int, default=tune.seed, help="training seed (shuffling, dropout, classifier init)")
    parser.add_argument("--output-dir", default=None, help="where to save the teacher; default runs/teachers/<task>")
    parser.add_argument("--force", action="store_true", help="fine-tune again even if a teacher exists")
    add_common_arguments(parser.add_argument, "hide the progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_transformers()
    try:
        task = get_task(args.task)
        output = teacher_dir(task.name) if args.output_dir is None else Path(args.output_dir)
        existing = teacher_metadata(task.name, output)
        if existing is not None and not args.force:
            print(f"teacher for {task.name} already at {output} "
                  f"(dev {existing['primary_metric']} {existing['dev'][existing['primary_metric']]:.4f}); --force to redo")
            return 0
        reward_size = int(args.reward_size) if args.reward_size >= 1 else args.reward_size
        data_config = DataConfig(task=task.name, data_dir=args.data_dir, max_length=args.max_length,
                                 reward_size=reward_size, split_seed=args.split_seed)
        finetune_config = FinetuneConfig(
            model=args.model, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
            weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, seed=args.seed,
            device=args.device, precision=args.precision, max_steps=args.max_steps,
        )
        runtime = make_runtime(args.device, args.precision)
        print(f"fine-tuning {args.model} on {task.name} on {runtime.describe()}")
        metadata = finetune_teacher(data_config, finetune_config, runtime, select_on=args.select_on,
                                    directory=output,
                                    progress=not args.no_progress)
    except (DataError, ModelError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    metric = metadata["primary_metric"]
    print(json.dumps({"dev": metadata["dev"], "reward": metadata["reward"], "best_epoch": metadata["best_epoch"],
                      "wall_time_s": metadata["wall_time_s"]}, indent=2))
    print(f"saved teacher to {output}: dev {metric} {metadata['dev'][metric]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
