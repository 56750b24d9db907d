"""Cost of one student update per knowledge type, cached vs online teacher, relative to a plain
fine-tuning update (hard labels only) of the same student, all measured in one run.

    python bench/step_cost.py --data-dir ../shared/data/glue --task rte

Teacher: the packaged all-MiniLM-L6-v2 as a classifier (the cost does not depend on whether it
was fine-tuned); student: 3 of its layers. Every measurement starts from the same trainer
snapshot, so all configurations see the same batches. Prints a markdown table of the median
seconds per update over the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdenv.cli import add_common_arguments
from kdenv.config import DataConfig, DistillConfig
from kdenv.engine.data import load_task_data
from kdenv.engine.knowledge import build_knowledge_modules
from kdenv.engine.models import load_classifier, load_tokenizer, student_from_teacher
from kdenv.engine.runtime import make_runtime, quiet_transformers
from kdenv.engine.tasks import get_task
from kdenv.engine.teacher_cache import OnlineTeacher, TeacherCache
from kdenv.engine.trainer import StudentTrainer

TYPES = ["ce", "logits", "hidden", "attention", "relation", "gradient", "gradient_cls"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="rte", help="GLUE task whose train batches are used")
    parser.add_argument("--examples", type=int, default=96, help="train examples to cache and draw batches from")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size")
    parser.add_argument("--updates", type=int, default=3, help="updates per timed repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per configuration (median reported)")
    add_common_arguments(parser.add_argument)
    args = parser.parse_args()
    quiet_transformers()
    runtime = make_runtime(args.device, args.precision)
    task = get_task(args.task)
    tokenizer = load_tokenizer("minilm")
    data = load_task_data(DataConfig(task=task.name, data_dir=args.data_dir, max_train_examples=args.examples), tokenizer)
    teacher = load_classifier("minilm", task, attn_implementation="eager").to(runtime.device).eval()
    config = DistillConfig(batch_size=args.batch_size, measure_type_grad_norms=False, restore_on_non_finite=False)
    probe_student = student_from_teacher(teacher, num_layers=3)
    keys = set().union(*(m.teacher_keys() for m in build_knowledge_modules(TYPES, config, task, probe_student, teacher.config).values()))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cache = TeacherCache.open(Path(tmp) / "cache", teacher, task, data["train"], keys, runtime, data.pad_token_id,
                                   progress=not args.no_progress)
        cache_seconds = time.perf_counter() - start
        sources = {"cached": cache, "online": OnlineTeacher(teacher, task, runtime)}
        mixes = {name: {name: 1.0} for name in TYPES}
        mixes["all (mix)"] = {name: 1.0 for name in TYPES}
        trainers, origins = {}, {}
        for source_name, source in sources.items():
            trainer = StudentTrainer(student_from_teacher(teacher, num_layers=3), source, data, TYPES, config, runtime,
                                     1000, teacher.config)
            trainer.run_phase({name: 1.0 for name in TYPES}, 1)  # warm-up (allocations, first-call costs)
            trainers[source_name], origins[source_name] = trainer, trainer.snapshot()
        samples: dict[tuple[str, str], list[float]] = {}
        # Cached and online alternate inside every repeat, so that drift in machine load hits both alike.
        for mix_name, weights in mixes.items():
            for _ in range(args.repeats):
                for source_name, trainer in trainers.items():
                    trainer.restore(origins[source_name])
                    if runtime.device.type == "cuda":
                        torch.cuda.synchronize()
                    tick = time.perf_counter()
                    trainer.run_phase(weights, args.updates)
                    if runtime.device.type == "cuda":
                        torch.cuda.synchronize()
                    samples.setdefault((source_name, mix_name), []).append((time.perf_counter() - tick) / args.updates)
            for source_name in trainers:
                print(f"  {source_name:6s} {mix_name:12s} {statistics.median(samples[(source_name, mix_name)]):.3f} s/update",
                      flush=True)
        timings = {key: statistics.median(values) for key, values in samples.items()}
    baseline = timings[("cached", "ce")]
    lengths = data["train"].lengths
    print(f"\nstep cost on {runtime.describe()}, torch {torch.__version__}, {task.name} batches of {args.batch_size} "
          f"(mean length {lengths.mean():.0f} tokens), median of {args.repeats}×{args.updates} updates")
    print(f"teacher knowledge cache for {len(lengths)} examples built in {cache_seconds:.1f} s "
          f"({cache.info.bytes / 1e6:.0f} MB)\n")
    print("| knowledge | cached s/update | × plain | online s/update | × plain | online / cached |")
    print("|---|---|---|---|---|---|")
    for mix_name in mixes:
        cached, online = timings[("cached", mix_name)], timings[("online", mix_name)]
        print(f"| {mix_name} | {cached:.3f} | {cached / baseline:.2f} | {online:.3f} | {online / baseline:.2f} | {online / cached:.2f} |")


if __name__ == "__main__":
    main()
