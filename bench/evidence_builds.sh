#!/usr/bin/env bash
# The evidence tables' builds (docs/history.md, "How the evidence was built"), kept running in the
# background across sessions: two queues of one-thread builds (two processes on one seed list
# split its jobs between them; each job is locked by the process building it).
#
#   bash bench/evidence_builds.sh teachers # fine-tune the two tables' teachers by their recipes (nohup; on a new machine)
#   bash bench/evidence_builds.sh start    # start the queues not already running (nohup; logs in runs/logs/)
#   bash bench/evidence_builds.sh retrain-sst2 # sst2_u8's agent rows, once it is complete (queue b runs it; resumable)
#   bash bench/evidence_builds.sh pause    # SIGSTOP every build (before the test suite)
#   bash bench/evidence_builds.sh resume   # SIGCONT them
#   bash bench/evidence_builds.sh ship     # write the tables with the seeds finished so far (computes nothing)
#   bash bench/evidence_builds.sh status   # what runs, and each table's finished seeds
#   bash bench/evidence_builds.sh unshipped stsb_u8 # the seeds of a table's range it does not hold yet
#   bash bench/evidence_builds.sh finish   # once every seed is built: the leaderboard and the live check (nohup)
#
# Needs the teachers in runs/teachers/ and KDENV_GLUE_DIR (default ../shared/data/glue). runs/ does
# not travel: on a new machine, `teachers` fine-tunes them again by the tables' recipes. In the
# portable mode that gives the same bits on machines of one replay class (docs/numerics.md) and
# other bits on another class (an AMD CPU for tables begun on an Intel one): seeds built there
# join the tables with their own teacher and numerics recorded per seed.
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

# Each queue runs its builds one after the other, of the seeds in a table's range that the shipped
# table does not hold yet (so a new machine never rebuilds a shipped seed). The pilots (seed 0 of
# sst2_u8 and of stsb_k2_u64) are done: SST-2 had the larger headroom, so it is the second table
# (8 seeds). Queue a builds stsb_u8; queue b finishes sst2_u8 first, then joins a on stsb_u8 (two
# processes on one seed list split its jobs).
unshipped() {  # table name: its range's seeds not in the shipped table, comma-separated (may be empty);
    local entry name seeds  # fails (so `x=$(unshipped ...)` stops the script) if it cannot tell
    for entry in "${TABLES[@]}"; do
        IFS="|" read -r name _ seeds <<< "$entry"
        if [ "$name" = "$1" ]; then
            $PYTHON - "kdenv/tables/$name/manifest.json" "$seeds" <<'PY'
import json, os, sys
from kdenv.cli import parse_seeds
have = set(json.load(open(sys.argv[1]))["seeds"]) if os.path.exists(sys.argv[1]) else set()
print(",".join(str(seed) for seed in parse_seeds(sys.argv[2]) if seed not in have))
PY
            return
        fi
    done
    echo "no table $1 in TABLES" >&2
    return 1
}

builds() { pgrep -f "agents/build_tree.py" || true; }
# What `pause` stops: the builds and the finish step's drivers and Ray workers (not Ray's own services).
heavy() { builds; pgrep -f "agents/finetune_teacher.py|agents/leaderboard.py|agents/live_check.py|agents/evaluate.py|^ray::" || true; }

# After the builds (docs/history.md, "How the evidence was built"): every agent row retrained on the two new
# tables (k = 4 folds, 5 agent seeds, tuned rows searched inside each fold, the across-tasks pair),
# as one-thread Ray jobs; the leaderboard written over the new and the old tables; then the best
# agent row on stsb_u8 played live on 16 new seeds against the best constant. Each step resumes.
NEW_TABLES="stsb_u8,sst2_u8"
BOARD_TABLES="stsb_u8,sst2_u8,stsb_h100_u8,mrpc,stsb"
FINISH="$PYTHON agents/leaderboard.py --retrain --tables $NEW_TABLES --ray --no-progress \
 && $PYTHON agents/leaderboard.py --tables $BOARD_TABLES --no-progress \
 && $PYTHON agents/live_check.py --table stsb_u8 --row best --ray --no-progress"

run_queue() {  # name, then its commands (run one after the other, each logged to the queue's log)
    local name=$1; shift
    if pgrep -f "evidence-queue-$name" > /dev/null; then
        echo "queue $name already running"; return
    fi
    local script="set -u; "
    for command in "$@"; do
        script+="$command >> runs/logs/queue_$name.log 2>&1; "
    done
    nohup bash -c "exec -a evidence-queue-$name bash -c '$script'" > /dev/null 2>&1 &
    echo "queue $name started (log runs/logs/queue_$name.log)"
}

case "${1:-status}" in
    teachers)
        if pgrep -f "evidence-teachers" > /dev/null; then echo "teachers already being fine-tuned"; exit 0; fi
        # The new tables' teacher recipes, as their manifests record them (validate_table's rebuild command).
        TEACHERS=$($PYTHON - "$NEW_TABLES" "$PYTHON" <<'PY'
import sys
from kdenv.benchmark.table import resolve_table
from kdenv.benchmark.validate import rebuild_teacher
commands = [rebuild_teacher(resolve_table(name)).replace("python ", sys.argv[2] + " ", 1) + " --no-progress"
            for name in sys.argv[1].split(",")]
print(" && ".join(commands))
PY
)
        echo "$TEACHERS"
        nohup bash -c "exec -a evidence-teachers bash -c '{ $TEACHERS; } >> runs/logs/teachers.log 2>&1'" > /dev/null 2>&1 &
        echo "teachers started (log runs/logs/teachers.log): start the queues when it ends"
        ;;
    start)
        if [ ! -f runs/teachers/stsb/kdenv.json ] || [ ! -f runs/teachers/sst2/kdenv.json ]; then
            echo "no teachers in runs/teachers/ on this machine: bash bench/evidence_builds.sh teachers, then start" >&2
            exit 1
        fi
        stsb=$(unshipped stsb_u8); sst2=$(unshipped sst2_u8)
        BUILD="$PYTHON agents/build_tree.py"
        QUEUE_A=(); QUEUE_B=()
        [ -n "$sst2" ] && QUEUE_B+=("$BUILD $SST2_U8 --seeds $sst2 --no-progress")
        # Once sst2_u8 holds all its seeds, queue b retrains its agent rows (one thread, resumable;
        # finish then reuses them), before it joins queue a on stsb_u8.
        QUEUE_B+=("bash $0 retrain-sst2")
        STSB_BUILD="$BUILD $STSB_U8 --seeds $stsb --no-progress"
        [ -n "$stsb" ] && QUEUE_A+=("$STSB_BUILD") && QUEUE_B+=("$STSB_BUILD")
        echo "to build: stsb_u8 seeds ${stsb:-none}; sst2_u8 seeds ${sst2:-none}"
        [ ${#QUEUE_A[@]} -gt 0 ] && run_queue a "${QUEUE_A[@]}"
        [ ${#QUEUE_B[@]} -gt 0 ] && run_queue b "${QUEUE_B[@]}"
        if [ -z "$stsb$sst2" ]; then echo "every seed is shipped: bash bench/evidence_builds.sh finish"; fi
        ;;
    retrain-sst2)  # queue b's step: sst2_u8's agent rows, once the table holds all its seeds
        missing=$(unshipped sst2_u8)
        if [ -n "$missing" ]; then echo "sst2_u8 lacks seeds $missing: not retraining its agent rows yet" >&2; exit 1; fi
        $PYTHON agents/leaderboard.py --retrain --tables sst2_u8 --output runs/leaderboard_sst2_u8 --no-progress
        ;;
    unshipped)  # a table's seeds still to build (the helper start and finish use; tested)
        unshipped "${2:?usage: bash bench/evidence_builds.sh unshipped TABLE}"
        ;;
    pause)
        for pid in $(heavy); do kill -STOP "$pid"; done
        echo "paused: $(heavy | tr '\n' ' ')"
        ;;
    resume)
        for pid in $(heavy); do kill -CONT "$pid"; done
        echo "resumed: $(heavy | tr '\n' ' ')"
        ;;
    ship)
        for entry in "${TABLES[@]}"; do
            IFS="|" read -r name flags seeds <<< "$entry"
            echo "== $name"
            $PYTHON agents/build_tree.py $flags --seeds "$seeds" --finished --no-progress 2>&1 | tail -2 || true
        done
        ;;
    finish)
        if pgrep -f "evidence-finish" > /dev/null; then echo "finish already running"; exit 0; fi
        if [ -n "$(builds)" ]; then echo "builds still run: finish when they are done" >&2; exit 1; fi
        $0 ship
        # Each new table must hold every seed of its range in TABLES.
        short=""
        for name in ${NEW_TABLES//,/ }; do
            missing=$(unshipped "$name")
            [ -n "$missing" ] && short+="${short:+; }$name lacks seeds $missing"
        done
        if [ -n "$short" ]; then echo "not yet: $short (bash bench/evidence_builds.sh start)" >&2; exit 1; fi
        nohup bash -c "exec -a evidence-finish bash -c '{ $FINISH; } >> runs/logs/finish.log 2>&1'" > /dev/null 2>&1 &
        echo "finish started (log runs/logs/finish.log): $FINISH"
        ;;
    status)
        ps -o pid,stat,etime,args -p "$(heavy | paste -sd, -)" 2>/dev/null || echo "no build running"
        for entry in "${TABLES[@]}"; do
            IFS="|" read -r name _ _ <<< "$entry"
            if [ -f "kdenv/tables/$name/manifest.json" ]; then
                $PYTHON - "kdenv/tables/$name" "$name" <<'PY'
import sys
from kdenv.benchmark.table import Table
from kdenv.benchmark.validate import seed_record
from kdenv.numerics import replay_class
table = Table.load(sys.argv[1])
groups = {}
for seed in table.seeds:
    record = seed_record(table, seed)
    groups.setdefault(f"{replay_class(record['numerics'])}, teacher {record['teacher']}", []).append(seed)
print(sys.argv[2], "seeds", table.seeds, "|", "; ".join(f"{seeds}: {where}" for where, seeds in groups.items()))
PY
            else
                echo "$name: no table yet"
            fi
        done
        # The agent rows retrained so far on the new tables (kdenv/results/leaderboard/).
        $PYTHON - "$NEW_TABLES" <<'PY'
import sys
from pathlib import Path
from kdenv.benchmark.table import resolve_table
from kdenv.commands.leaderboard import AGENTS, load_result, parse_args, result_path
defaults = parse_args([])  # what finish retrains with: the default folds, agent seeds and results folder
for name in sys.argv[1].split(","):
    table, done = resolve_table(name), []
    for agent in AGENTS:
        result = load_result(result_path(Path(defaults.results_dir), name, agent), table, defaults.k)
        if result is not None:
            trained = sum(len(values) for values in result["returns"].values())
            done.append(f"{agent} {trained}/{defaults.agent_seeds * len(table.seeds)}")
    print(f"{name} agent rows (held-out seed x agent seed results): {', '.join(done) or 'none yet'}")
PY
        ;;
    *)
        echo "usage: bash bench/evidence_builds.sh teachers|start|retrain-sst2|pause|resume|ship|status|unshipped TABLE|finish" >&2
        exit 2
        ;;
esac
