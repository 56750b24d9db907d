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
# Logs and results go to $OUT (the device tool brings them back), or to runs/gpu without it.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT" runs
. bench/gpu/setup.sh || { echo "setup failed"; exit 1; }
E2E_DIR=runs/mrpc/a2c_gpu_preset
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
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
echo "=== done $(date +%T)"
