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

from kdenv import numerics
from kdenv.cli import CLEAR_ERRORS, add_common_arguments, add_config_arguments, config_from_args, fail, run_main
from kdenv.config import DataConfig, FinetuneConfig
from kdenv.engine.runtime import make_runtime, quiet_transformers
from kdenv.engine.tasks import TASKS, get_task
from kdenv.engine.teacher import finetune_teacher, has_weights, teacher_metadata
from kdenv.io import check_writable
from kdenv.paths import teacher_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--task", required=True, help=f"GLUE task ({', '.join(TASKS)}) or a task file, path/to/task.yaml (docs/own_task.md)")
    add("--select-on", choices=("reward", "dev"), default="reward",
        help="split whose metric picks the best epoch; 'reward' (default) keeps GLUE dev for final evaluation only")
    add("--output-dir", default=None, help="where to save the teacher (default runs/teachers/<task>)")
    add("--force", action="store_true", help="fine-tune again even if a teacher exists (also replaces a damaged one)")
    add_common_arguments(add, "hide the progress bar")
    add_config_arguments(parser, FinetuneConfig, "finetune", "fine-tuning")
    add_config_arguments(parser, DataConfig, "data", "data and splits (students must use the same split)",
                         ("max_length", "reward_size", "split_seed", "max_train_examples"))
    return parser.parse_args(argv)


@run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_transformers()
    try:
        task = get_task(args.task)
        output = teacher_dir(task.name) if args.output_dir is None else Path(args.output_dir)
        data_config = config_from_args(DataConfig, args, "data", task=task.ref, data_dir=args.data_dir)
        finetune_config = config_from_args(FinetuneConfig, args, "finetune", device=args.device, precision=args.precision)
        if not args.force:
            existing = teacher_metadata(task.name, output)
            if existing is not None and not has_weights(output):
                print(f"the teacher in {output} has its record but no weights: fine-tuning it again")
            elif existing is not None:
                print(f"teacher for {task.name} already at {output} "
                      f"(dev {existing['primary_metric']} {existing['dev'][existing['primary_metric']]:.4f}); --force to redo")
                return 0
        check_writable(output)
        runtime = make_runtime(args.device, args.precision)
        if runtime.device.type == "cpu":  # a teacher's fingerprint keys every table built with it
            numerics.require_portable("fine-tuning a teacher")
        print(f"fine-tuning {finetune_config.model} on {task.name} on {runtime.describe()}; numerics "
              f"{numerics.requested_mode()}")
        metadata = finetune_teacher(data_config, finetune_config, runtime, select_on=args.select_on,
                                    directory=output, progress=not args.no_progress)
    except CLEAR_ERRORS as error:
        return fail(error)
    metric = metadata["primary_metric"]
    print(json.dumps({"dev": metadata["dev"], "reward": metadata["reward"], "best_epoch": metadata["best_epoch"],
                      "wall_time_s": metadata["wall_time_s"]}, indent=2))
    print(f"saved teacher to {output}: dev {metric} {metadata['dev'][metric]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
