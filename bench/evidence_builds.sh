#!/usr/bin/env bash
# The evidence tables' builds (docs/benchmark.md, "Toward evidence"), kept running in the
# background across sessions: two queues of one-thread builds (two processes on one seed list
# split its jobs between them; each job is locked by the process building it).
#
#   bash bench/evidence_builds.sh start    # start the queues not already running (nohup; logs in runs/logs/)
#   bash bench/evidence_builds.sh pause    # SIGSTOP every build (before the test suite)
#   bash bench/evidence_builds.sh resume   # SIGCONT them
#   bash bench/evidence_builds.sh ship     # write the tables with the seeds finished so far (computes nothing)
#   bash bench/evidence_builds.sh status   # what runs, and each table's finished seeds
#
# Needs the portable teachers in runs/teachers/ (fingerprints in docs/benchmark.md; the builds
# refuse another one) and KDENV_GLUE_DIR (default ../shared/data/glue).
set -euo pipefail
cd "$(dirname "$0")/.."
export KDENV_GLUE_DIR="${KDENV_GLUE_DIR:-$(cd .. && pwd)/shared/data/glue}"
PYTHON="${PYTHON:-.venv/bin/python}"
mkdir -p runs/logs

# One line per table: its name, then its build flags (the seeds last, so `ship` can replace them).
STSB_U8="--task stsb --phases 3 --updates-per-phase 8 --threads 1 --dev-examples 400 --output kdenv/tables/stsb_u8"
SST2_U8="--task sst2 --phases 3 --updates-per-phase 8 --threads 1 --max-train-examples 8000 --max-reward-examples 512 --dev-examples 400 --output kdenv/tables/sst2_u8"
STSB_K2_U64="--task stsb --knowledge hidden,gradient --phases 3 --updates-per-phase 64 --threads 1 --dev-examples 400 --output kdenv/tables/stsb_k2_u64"
TABLES=("stsb_u8|$STSB_U8|0-15" "sst2_u8|$SST2_U8|0-7" "stsb_k2_u64|$STSB_K2_U64|0")

# Each queue runs its builds one after the other. The pilots (seed 0 of sst2_u8 and of
# stsb_k2_u64) are done: SST-2 had the larger headroom, so it is the second table (8 seeds).
QUEUE_A=("$STSB_U8 --seeds 1-15")
QUEUE_B=("$SST2_U8 --seeds 1-7" "$STSB_U8 --seeds 1-15")

builds() { pgrep -f "agents/build_tree.py" || true; }

run_queue() {  # name, then the builds' flags
    local name=$1; shift
    if pgrep -f "evidence-queue-$name" > /dev/null; then
        echo "queue $name already running"; return
    fi
    local script="set -u; "
    for flags in "$@"; do
        script+="$PYTHON agents/build_tree.py $flags --no-progress >> runs/logs/queue_$name.log 2>&1; "
    done
    nohup bash -c "exec -a evidence-queue-$name bash -c '$script'" > /dev/null 2>&1 &
    echo "queue $name started (log runs/logs/queue_$name.log)"
}

case "${1:-status}" in
    start)
        run_queue a "${QUEUE_A[@]}"
        run_queue b "${QUEUE_B[@]}"
        ;;
    pause)
        for pid in $(builds); do kill -STOP "$pid"; done
        echo "paused: $(builds | tr '\n' ' ')"
        ;;
    resume)
        for pid in $(builds); do kill -CONT "$pid"; done
        echo "resumed: $(builds | tr '\n' ' ')"
        ;;
    ship)
        for entry in "${TABLES[@]}"; do
            IFS="|" read -r name flags seeds <<< "$entry"
            echo "== $name"
            $PYTHON agents/build_tree.py $flags --seeds "$seeds" --finished --no-progress 2>&1 | tail -2 || true
        done
        ;;
    status)
        ps -o pid,stat,etime,args -p "$(builds | paste -sd, -)" 2>/dev/null || echo "no build running"
        for entry in "${TABLES[@]}"; do
            IFS="|" read -r name _ _ <<< "$entry"
            if [ -f "kdenv/tables/$name/manifest.json" ]; then
                $PYTHON -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[2], 'seeds', m['seeds'])" \
                    "kdenv/tables/$name/manifest.json" "$name"
            else
                echo "$name: no table yet"
            fi
        done
        ;;
    *)
        echo "usage: bash bench/evidence_builds.sh start|pause|resume|ship|status" >&2
        exit 2
        ;;
esac
