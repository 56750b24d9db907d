"""Student-update throughput of the trainer against a bare PyTorch loop doing the same update, in
one run: examples per second per knowledge type, cached teacher against online, per precision and
batch size, then several students sharing one GPU.

    python bench/gpu_throughput.py --task mrpc --data-dir ../shared/data/glue

The bare loop is what one would write by hand for the same student update: the same student (3
layers of the packaged MiniLM, embeddings frozen as in the trainer), the same batches, AdamW,
clipping and autocast, with no knowledge modules, loss normaliser or statistics. Its ``ce`` loop
is the baseline of the trainer's ``ce`` row; its ``kd`` loop (hard labels plus temperature KL on
logits the teacher computes on the batch) is the baseline of the trainer's ``logits`` row with an
online teacher. Target: trainer / bare >= 0.8.

Per-phase extras of the environment (the per-type gradient norms of a phase's first update, the
snapshot kept for a non-finite rollback) are off here: they are per phase, not per update, and
bench/env_step.py measures them. Runs on the CPU too (slowly; `--device cpu`). The GPU runs and their
figures are in docs/gpu.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kdenv.cli import add_common_arguments
from kdenv.config import DataConfig, DistillConfig
from kdenv.engine.data import MODEL_INPUTS, BatchStream, load_task_data, to_device
from kdenv.engine.knowledge import KNOWLEDGE_TYPES, build_knowledge_modules
from kdenv.engine.models import load_classifier, load_tokenizer, student_from_teacher
from kdenv.engine.runtime import make_runtime, quiet_transformers
from kdenv.engine.tasks import get_task
from kdenv.engine.teacher_cache import OnlineTeacher, TeacherCache
from kdenv.engine.trainer import StudentTrainer
from kdenv.io import atomic_write

TYPES = ["ce", "logits", "hidden", "attention", "relation", "gradient", "gradient_cls"]


def parse_list(text: str, kind=str) -> list:
    return [kind(item) for item in text.split(",") if item.strip()]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, updates: int, warmup: int, repeats: int, device: torch.device) -> float:
    """Median seconds per update of ``step()`` over ``repeats`` runs of ``updates`` updates."""
    for _ in range(warmup):
        step()
    samples = []
    for _ in range(repeats):
        synchronize(device)
        tick = time.perf_counter()
        for _ in range(updates):
            step()
        synchronize(device)
        samples.append((time.perf_counter() - tick) / updates)
    return statistics.median(samples)


def bare_step(student, stream, runtime, teacher=None, temperature: float = 5.0):
    """One hand-written update: forward, loss, backward, clip, AdamW, schedule."""
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = runtime.grad_scaler()

    def step():
        batch = to_device(next(stream), runtime.device)
        inputs = {k: batch[k] for k in MODEL_INPUTS}
        with runtime.autocast():
            logits = student(**inputs).logits
        loss = F.cross_entropy(logits.float(), batch["labels"])
        if teacher is not None:
            with torch.no_grad(), runtime.autocast():
                target = teacher(**inputs).logits.float()
            loss = loss + F.kl_div(F.log_softmax(logits.float() / temperature, -1), F.softmax(target / temperature, -1),
                                   reduction="batchmean") * temperature ** 2
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

    return step


class Setup:
    """Teachers (sdpa, and eager for the attention-map types), data and caches for one precision."""

    def __init__(self, args, precision: str, cache_root: Path):
        self.args, self.runtime = args, make_runtime(args.device, precision)
        if args.cudnn_attention:  # make_runtime turns it off on CUDA; this measures why
            torch.backends.cuda.enable_cudnn_sdp(True)
        self.task = get_task(args.task)
        if self.task.is_regression:
            raise SystemExit(f"{self.task.name} is a regression task; the bare loop is written for classification: "
                             "use --task mrpc (or rte, sst2, cola)")
        tokenizer = load_tokenizer("minilm")
        self.data = load_task_data(DataConfig(task=self.task.name, data_dir=args.data_dir,
                                              max_train_examples=args.examples, cache_tokenization=False), tokenizer)
        self.teachers = {attention: load_classifier("minilm", self.task, attn_implementation=attention)
                         .to(self.runtime.device).eval() for attention in ("sdpa", "eager")}
        for teacher in self.teachers.values():
            teacher.requires_grad_(False)
        probe = student_from_teacher(self.teachers["eager"], num_layers=args.student_layers)
        keys = set().union(*(m.teacher_keys() for m in build_knowledge_modules(
            TYPES, DistillConfig(), self.task, probe, self.teachers["eager"].config).values()))
        self.cache = TeacherCache.open(cache_root / precision, self.teachers["eager"], self.task, self.data["train"], keys,
                                       self.runtime, self.data.pad_token_id, progress=not args.no_progress)

    def attention(self, names: list[str]) -> str:
        return "eager" if any(KNOWLEDGE_TYPES[n].needs_eager_attention for n in names) else "sdpa"

    def student(self, attention: str):
        torch.manual_seed(0)
        student = student_from_teacher(self.teachers[attention], num_layers=self.args.student_layers)
        student.bert.embeddings.requires_grad_(False)  # as the trainer's freeze_embeddings default
        return student.to(self.runtime.device).train()

    def trainer(self, names: list[str], batch_size: int, source: str) -> StudentTrainer:
        attention = self.attention(names)
        teacher_source = self.cache if source == "cached" else OnlineTeacher(self.teachers[attention], self.task, self.runtime)
        config = DistillConfig(batch_size=batch_size, measure_type_grad_norms=False, restore_on_non_finite=False)
        return StudentTrainer(self.student(attention), teacher_source, self.data, names, config, self.runtime, 100_000,
                              self.teachers[attention].config)


def measure_precision(args, precision: str, cache_root: Path, rows: list[dict]) -> None:
    setup = Setup(args, precision, cache_root)
    device = setup.runtime.device
    mixes = {name: [name] for name in args.types if name != "all"}
    if "all" in args.types:
        mixes["all"] = TYPES

    def record(kind, knowledge, source, batch_size, seconds):
        row = {"precision": precision, "batch": batch_size, "kind": kind, "knowledge": knowledge, "teacher": source,
               "s_per_update": seconds, "examples_per_s": batch_size / seconds}
        rows.append(row)
        print(f"  {precision} b{batch_size:<4d} {kind:7s} {knowledge:12s} {source:6s} {row['examples_per_s']:9.0f} ex/s",
              flush=True)

    for batch_size in args.batch_sizes:
        def new_stream(batch_size=batch_size):  # the trainer's stream seed: the bare loop sees the trainer rows' batch shapes
            return BatchStream(setup.data["train"], setup.data.pad_token_id, batch_size, seed=DistillConfig().seed)

        stream = new_stream()
        if args.shape_warmup:
            # One untimed epoch, so that every batch shape has met the kernels before any row is
            # timed: first-shape costs (kernel choice, plans) would otherwise fall on whichever row
            # runs first, which is the bare loop.
            warm = bare_step(setup.student("sdpa"), new_stream(), setup.runtime)
            for _ in range(stream.batches_per_epoch):
                warm()
        bare = {"ce": bare_step(setup.student("sdpa"), stream, setup.runtime),
                "kd": bare_step(setup.student("sdpa"), stream, setup.runtime, teacher=setup.teachers["sdpa"])}
        for name, step in bare.items():
            record("bare", name, "online" if name == "kd" else "-", batch_size,
                   timed(step, args.updates, args.warmup, args.repeats, device))
        for knowledge, names in mixes.items():
            for source in args.teachers:
                trainer = setup.trainer(names, batch_size, source)
                weights = {name: 1.0 for name in names}
                record("trainer", knowledge, source, batch_size,
                       timed(lambda t=trainer, w=weights: t.run_phase(w, 1), args.updates, args.warmup, args.repeats, device))
                del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _shared_gpu_worker(rank, args, names, barrier, queue):
    """One of several students on one GPU: builds its trainer, waits for the others, times."""
    torch.set_num_threads(1)
    quiet_transformers()
    with tempfile.TemporaryDirectory() as tmp:
        setup = Setup(args, args.shared_precision, Path(tmp))
        trainer = setup.trainer(names, args.shared_batch_size, "cached")
        weights = {name: 1.0 for name in names}
        for _ in range(args.warmup):
            trainer.run_phase(weights, 1)
        synchronize(setup.runtime.device)
        barrier.wait()
        tick = time.perf_counter()
        for _ in range(args.updates * args.repeats):
            trainer.run_phase(weights, 1)
        synchronize(setup.runtime.device)
        queue.put((rank, args.updates * args.repeats * args.shared_batch_size / (time.perf_counter() - tick)))


def measure_shared(args, rows: list[dict]) -> None:
    """Aggregate examples/s of K students training at once on one GPU, each in its own process."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    names = parse_list(args.shared_knowledge)
    for count in args.students:
        barrier, queue = context.Barrier(count), context.Queue()
        workers = [context.Process(target=_shared_gpu_worker, args=(rank, args, names, barrier, queue))
                   for rank in range(count)]
        for worker in workers:
            worker.start()
        results = [queue.get(timeout=900) for _ in workers]
        for worker in workers:
            worker.join()
        total = sum(rate for _, rate in results)
        rows.append({"precision": args.shared_precision, "batch": args.shared_batch_size, "kind": f"{count} students",
                     "knowledge": args.shared_knowledge, "teacher": "cached", "examples_per_s": total})
        print(f"  {count} students at once: {total:.0f} ex/s together", flush=True)


def markdown(rows: list[dict], students: bool) -> str:
    lines = ["| precision | batch | knowledge | teacher | bare ex/s | trainer ex/s | trainer / bare |", "|---|---|---|---|---|---|---|"]
    bare = {(r["precision"], r["batch"], r["knowledge"]): r["examples_per_s"] for r in rows if r["kind"] == "bare"}
    for row in rows:
        if row["kind"] == "bare":
            continue
        if row["kind"] == "trainer":
            base_name = {"ce": "ce", "logits": "kd" if row["teacher"] == "online" else None}.get(row["knowledge"])
            base = bare.get((row["precision"], row["batch"], base_name))
            base_text, ratio = (f"{base:.0f}", f"{row['examples_per_s'] / base:.2f}") if base else ("", "")
            lines.append(f"| {row['precision']} | {row['batch']} | {row['knowledge']} | {row['teacher']} | {base_text} | "
                         f"{row['examples_per_s']:.0f} | {ratio} |")
    for (precision, batch, name), rate in bare.items():
        lines.append(f"| {precision} | {batch} | bare {name} loop | {'online' if name == 'kd' else '-'} | {rate:.0f} | | |")
    if students:
        lines += ["", "| students on one GPU | knowledge | precision | batch | ex/s together | × one student |", "|---|---|---|---|---|---|"]
        shared = [r for r in rows if r["kind"].endswith("students")]
        one = next((r["examples_per_s"] for r in shared if r["kind"] == "1 students"), None)
        for row in shared:
            gain = f"{row['examples_per_s'] / one:.2f}" if one else ""
            lines.append(f"| {row['kind'].split()[0]} | {row['knowledge']} | {row['precision']} | {row['batch']} | "
                         f"{row['examples_per_s']:.0f} | {gain} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="mrpc", help="GLUE classification task whose train batches are used")
    parser.add_argument("--examples", type=int, default=2000, help="train examples to cache and draw batches from")
    parser.add_argument("--student-layers", type=int, default=3, help="student = this many MiniLM layers")
    parser.add_argument("--precisions", type=lambda t: parse_list(t), default=["fp32", "bf16"],
                        help="comma list of precisions to measure (fp32, bf16, fp16)")
    parser.add_argument("--batch-sizes", type=lambda t: parse_list(t, int), default=[16, 64],
                        help="comma list of batch sizes")
    parser.add_argument("--types", type=lambda t: parse_list(t), default=[*TYPES, "all"],
                        help="comma list of knowledge types to time one by one ('all': every type at once)")
    parser.add_argument("--teachers", type=lambda t: parse_list(t), default=["cached", "online"],
                        help="teacher sources for the trainer rows: cached, online")
    parser.add_argument("--updates", type=int, default=20, help="updates per timed repeat")
    parser.add_argument("--warmup", type=int, default=5, help="untimed updates first (allocations, kernel choice)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    parser.add_argument("--students", type=lambda t: parse_list(t, int), default=[],
                        help="comma list of student counts sharing the GPU at once, each in its own process, e.g. "
                             "1,2,4 (default: not measured)")
    parser.add_argument("--shared-knowledge", default="ce,logits,hidden,gradient",
                        help="knowledge mix of the shared-GPU students")
    parser.add_argument("--shared-precision", default="bf16", help="precision of the shared-GPU students")
    parser.add_argument("--shared-batch-size", type=int, default=16, help="batch size of the shared-GPU students")
    parser.add_argument("--no-shape-warmup", dest="shape_warmup", action="store_false",
                        help="skip the untimed epoch that shows every batch shape to the kernels before timing")
    parser.add_argument("--cudnn-attention", action="store_true",
                        help="let SDPA use cuDNN attention (kdenv turns it off on CUDA; this shows the cost)")
    parser.add_argument("--json", type=Path, default=None, help="also write every row to this JSON file")
    add_common_arguments(parser.add_argument, precision=False)
    args = parser.parse_args(argv)
    unknown = set(args.types) - set(TYPES) - {"all"}
    if unknown:
        parser.error(f"unknown knowledge types {sorted(unknown)}; choose from {TYPES} or 'all'")
    if set(args.teachers) - {"cached", "online"}:
        parser.error("--teachers takes cached and/or online")
    quiet_transformers()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions:
            measure_precision(args, precision, Path(tmp), rows)
    if args.students:
        measure_shared(args, rows)
    runtime = make_runtime(args.device, args.precisions[0])
    print(f"\nthroughput on {runtime.describe()}, torch {torch.__version__}, {args.task}, student of "
          f"{args.student_layers} MiniLM layers, median of {args.repeats} x {args.updates} updates\n")
    print(markdown(rows, bool(args.students)))
    if args.json:
        with atomic_write(args.json) as handle:
            json.dump({"device": runtime.describe(), "torch": torch.__version__, "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
