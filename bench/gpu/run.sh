#!/usr/bin/env bash
# Run THERE (the GPU machine) from the repository root, with .gpu carried (bench/gpu/pack.sh):
#   bash bench/gpu/run.sh STAGE [STAGE ...]
# Stages, in the order one lease runs them:
#   tests      pytest -m gpu (tests/test_gpu.py), with the measured CPU/CUDA differences
#   quick      bf16, batch 16 only, with and without cuDNN attention
#   bench      bench/gpu_throughput.py (trainer vs bare loop, fp32/bf16, batch 16/64, 1-4 students)
#   teacher    agents/finetune_teacher.py --task mrpc on the GPU
#   steps      bench/step_cost.py and bench/env_step.py on mrpc, fp32 and bf16 (needs the teacher)
#   e2e-start  agents/train_a2c.py --task mrpc --preset gpu (MiniLM teacher, 3-layer student,
#              4 environments) in the background, in its own session so that it outlives the call
#   e2e-wait   waits for it (at most E2E_WAIT seconds, default 540), then packs its run folder
#   tree-teacher  agents/finetune_teacher.py --task $TREE_TASK (default stsb) in fp32 on the GPU
#   tree-start    times every action's phase at TREE_U_MAX updates (default 32), picks the longest
#                 phase in {32, 24, 16, 8} whose 4-seed build fits TREE_BUDGET seconds (default 780)
#                 with the seeds side by side, and starts one whole-tree job per seed in the background
#   tree-wait     waits for the jobs (at most TREE_WAIT seconds, default 540), then packs the records
#   tree-table    writes the table (kdenv/tables/<task>_h100_u<U>) and replays seed 0's oracle schedule
# Logs and results go to $OUT (the device tool brings them back), or to runs/gpu without it.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT" runs
. bench/gpu/setup.sh || { echo "setup failed"; exit 1; }
E2E_DIR=runs/mrpc/a2c_gpu_preset
TREE_TASK=${TREE_TASK:-stsb}
TREE_SEEDS=${TREE_SEEDS:-0 1 2 3}
tree_args() {  # the tree's setup: fp32 on the GPU, 2 torch threads per process
  echo --task "$TREE_TASK" --phases 3 --updates-per-phase "$(cat runs/tree_u 2>/dev/null || echo "${TREE_U_MAX:-32}")" \
    --threads 2 --device cuda --precision fp32 --no-progress
}
pack_trees() {
  tar czf "$OUT/trees_$TREE_TASK.tar.gz" runs/trees runs/tree_u runs/tree_*.log 2>/dev/null; ls -la "$OUT"
}
for stage in "$@"; do
  echo "=== $stage $(date +%T)"
  case $stage in
    tests)
      KDENV_GPU_REPORT=$OUT/gpu_report.json python3 -m pytest -m gpu tests/test_gpu.py -v -p no:cacheprovider 2>&1 \
        | tee "$OUT/tests.log" | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error" ;;
    bench)
      python3 bench/gpu_throughput.py --task mrpc --students 1,2,4 --json "$OUT/throughput.json" --no-progress 2>&1 \
        | tee "$OUT/throughput.log" | tail -40 ;;
    quick)
      for flag in "" --cudnn-attention; do
        python3 bench/gpu_throughput.py --task mrpc --precisions bf16 --batch-sizes 16 --types ce,logits,gradient,all \
          --warmup 2 $flag --no-progress 2>&1 | tail -13
      done 2>&1 | tee "$OUT/quick.log" ;;
    teacher)
      python3 agents/finetune_teacher.py --task mrpc --no-progress 2>&1 | tee "$OUT/teacher.log" | tail -15
      cp runs/teachers/mrpc/*.json "$OUT/" 2>/dev/null ;;
    steps)
      for precision in fp32 bf16; do
        python3 bench/step_cost.py --task mrpc --precision "$precision" --no-progress 2>&1 | tail -12
        python3 bench/env_step.py --task mrpc --precision "$precision" --no-progress 2>&1 | tail -8
      done 2>&1 | tee "$OUT/steps.log" ;;
    e2e-start)
      setsid nohup python3 agents/train_a2c.py --task mrpc --preset gpu --teacher-model minilm --student-layers 3 \
        --n-envs 4 --output-dir "$E2E_DIR" --no-progress > runs/e2e.log 2>&1 < /dev/null &
      sleep 45; tail -5 runs/e2e.log ;;
    e2e-wait)
      deadline=$((SECONDS + ${E2E_WAIT:-540}))
      while pgrep -f "train_a2c.py --task mrpc --preset gpu" > /dev/null && [ $SECONDS -lt $deadline ]; do sleep 10; done
      pgrep -f "train_a2c.py --task mrpc --preset gpu" > /dev/null && echo "still running" || echo "finished"
      cp runs/e2e.log "$OUT/e2e.log"; tail -40 runs/e2e.log
      tar czf "$OUT/e2e_run.tar.gz" --exclude='*.zip' "$E2E_DIR" 2>/dev/null; ls -la "$OUT" ;;
    tree-teacher)
      python3 agents/finetune_teacher.py --task "$TREE_TASK" --device cuda --precision fp32 --no-progress 2>&1 \
        | tee "$OUT/teacher_$TREE_TASK.log" | tail -8
      cp runs/teachers/"$TREE_TASK"/*.json "$OUT/" 2>/dev/null ;;
    tree-start)
      rm -f runs/tree_u
      python3 agents/build_tree.py $(tree_args) --estimate 2>&1 | tee "$OUT/tree_estimate.log" | tail -4
      python3 - "$OUT/tree_estimate.log" "${TREE_U_MAX:-32}" "${TREE_BUDGET:-780}" > runs/tree_u <<'PY' || exit 1
import re, sys
text = open(sys.argv[1]).read()
line = re.search(r"one phase .*? s: (.*); dev evaluation of a leaf: ([0-9.]+) s", text)
phases = [float(x.split()[-1]) for x in line.group(1).split(", ")]
dev, u_max, budget = float(line.group(2)), int(sys.argv[2]), float(sys.argv[3])
per_update = (sum(phases) / len(phases)) / u_max  # the reward-split evaluation counted as updates: conservative
for u in (32, 24, 16, 8):
    seconds = 1.3 * (584 * per_update * u + 512 * dev)  # 4 seeds side by side measured ~1.3x slower apiece (guess)
    if u <= u_max and seconds <= budget:
        break
print(u)
print(f"U={u}: ~{seconds:.0f} s per seed, seeds side by side", file=sys.stderr)
PY
      for seed in $TREE_SEEDS; do
        setsid nohup python3 agents/build_tree.py $(tree_args) --job "$seed:" > "runs/tree_$seed.log" 2>&1 < /dev/null &
      done
      sleep 20; tail -n 3 runs/tree_*.log ;;
    tree-wait)
      deadline=$((SECONDS + ${TREE_WAIT:-540}))
      while pgrep -f "build_tree.py --task $TREE_TASK" > /dev/null && [ $SECONDS -lt $deadline ]; do sleep 10; done
      pgrep -f "build_tree.py --task $TREE_TASK" > /dev/null && echo "still running" || echo "finished"
      tail -n 2 runs/tree_*.log; pack_trees ;;
    tree-table)
      table=kdenv/tables/${TREE_TASK}_h100_u$(cat runs/tree_u)
      python3 agents/build_tree.py $(tree_args) --seeds "${TREE_SEEDS// /,}" --job-depth 0 --output "$table" 2>&1 \
        | tee "$OUT/tree_table.log" | tail -4
      python3 agents/validate_table.py --table "$table" --seed 0 --device cuda --no-progress 2>&1 | tee "$OUT/tree_validate.log" | tail -4
      python3 agents/oracle.py --table "$table" --output-dir "$OUT/oracle" 2>&1 | tail -30
      cp -r "$table" "$OUT/"; pack_trees ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
echo "=== done $(date +%T)"
