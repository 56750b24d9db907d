"""The portable numerics mode's speed cost (kdenv/numerics.py), measured in one run.

    python bench/numerics.py                 # 2 torch threads, 3 alternating repeats
    python bench/numerics.py --threads 1 --repeats 5

Each repeat runs the same workload in two fresh processes, one with KDENV_NUMERICS=native and one
in the portable mode (the pins must be set before torch starts, hence processes): updates of a
3-layer student made from the packaged MiniLM on batches of 16 STS-B-length sequences (32
tokens), a plain update and a GKD-style one (the input gradient with create_graph, then its
double backward), and a dev-scoring pass (no gradients, batch 64). Prints seconds per step in each
mode and the ratio portable / native (target: at most 1.2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKLOAD = """
import json, time, kdenv, torch
from kdenv import numerics
from kdenv.engine.models import load_classifier, student_from_teacher
from kdenv.engine.tasks import get_task

torch.set_num_threads(THREADS)
torch.manual_seed(0)
teacher = load_classifier("minilm", get_task("stsb"), attn_implementation="eager")
student = student_from_teacher(teacher, num_layers=3).train()
optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
ids = torch.randint(1000, 20000, (16, 32))
labels = torch.rand(16) * 5

def plain():
    loss = torch.nn.functional.mse_loss(student(input_ids=ids).logits.squeeze(-1), labels)
    optimizer.zero_grad(); loss.backward(); optimizer.step()

def gkd():
    embeddings = student.bert.embeddings(input_ids=ids)
    out = student(inputs_embeds=embeddings).logits.squeeze(-1)
    (grad,) = torch.autograd.grad(out.sum(), embeddings, create_graph=True)
    loss = torch.nn.functional.mse_loss(out, labels) + grad.pow(2).mean()
    optimizer.zero_grad(); loss.backward(); optimizer.step()

def score():
    with torch.no_grad():
        student.eval(); student(input_ids=torch.randint(1000, 20000, (64, 32))); student.train()

result = {"numerics": numerics.describe()}
for name, step, n in (("plain", plain, 8), ("gkd", gkd, 4), ("score", score, 8)):
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(n):
        step()
    result[name] = (time.perf_counter() - start) / n
print(json.dumps(result))
"""


def run(mode: str, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")}
    env["KDENV_NUMERICS"] = mode
    code = WORKLOAD.replace("THREADS", str(threads))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in both modes (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats, medians reported (default 3)")
    args = parser.parse_args()
    samples: dict[str, list[dict]] = {"native": [], "portable": []}
    for _ in range(args.repeats):
        for mode in ("native", "portable"):
            samples[mode].append(run(mode, args.threads))
    capability = {mode: rows[0]["numerics"]["aten_cpu_capability"] for mode, rows in samples.items()}
    print(f"CPU: {samples['native'][0]['numerics']['cpu']}; torch {samples['native'][0]['numerics']['torch']}; "
          f"{args.threads} thread(s); ATen kernels: native {capability['native']}, portable {capability['portable']}")
    print("| step | native s | portable s | portable / native |\n|---|---|---|---|")
    for name in ("plain", "gkd", "score"):
        native = statistics.median(row[name] for row in samples["native"])
        portable = statistics.median(row[name] for row in samples["portable"])
        print(f"| {name} | {native:.3f} | {portable:.3f} | **{portable / native:.2f}** |")


if __name__ == "__main__":
    main()
