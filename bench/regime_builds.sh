#!/usr/bin/env bash
# The regime survey's builds (docs/benchmark.md, "Regimes"): tables that keep
# per-example outputs, in regimes that give time-varying knowledge selection its best chance, each
# built to 4 seeds, two one-thread processes sharing each seed in the background, resumable.
#
#   bash bench/regime_builds.sh estimate   # each regime's projected hours, before anything is built
#   bash bench/regime_builds.sh teachers   # fine-tune the teachers the regimes need (nohup; on a new machine)
#   bash bench/regime_builds.sh start      # start both queues (nohup; logs in runs/logs/regime_*.log)
#   bash bench/regime_builds.sh pause      # SIGSTOP every build (before the test suite); resume: SIGCONT
#   bash bench/regime_builds.sh resume
#   bash bench/regime_builds.sh ship       # write each table with the seeds finished so far (computes nothing)
#   bash bench/regime_builds.sh status     # what runs, and each table's shipped seeds
#   bash bench/regime_builds.sh carry      # before a session ends: pack the work folders (a seed half built
#                                          # included) into bench/carry/, to commit; `start` unpacks them
#   bash bench/regime_builds.sh scale [R]  # once regime R (default stsb_k2_u128) holds its planned seeds: its
#                                          # agent rows retrained, the live check (with the best fixed schedule)
#                                          # and the docs, the builds paused meanwhile (nohup; resumable)
#
# Needs KDENV_GLUE_DIR (default ../shared/data/glue). runs/ does not travel: on a new machine run
# `teachers` first; seeds already shipped are never rebuilt (each queue builds the seeds a table lacks).
# A seed takes about an hour with both queues on it, so one may be half built when a session ends:
# `carry` packs runs/trees/ (job files and provenance; a few hundred KB a seed with outputs; the folders of
# seeds a table already ships are left out) into
# bench/carry/trees.tar.gz, and `start` restores what runs/ lacks from it. The job files heal and
# check themselves, and a work folder made on another replay class is refused by the build (its
# provenance), so a carried seed continues only where it replays exactly.
set -euo pipefail
cd "$(dirname "$0")/.."
export KDENV_GLUE_DIR="${KDENV_GLUE_DIR:-$(cd .. && pwd)/shared/data/glue}"
PYTHON="${PYTHON:-.venv/bin/python}"
mkdir -p runs/logs

# The regimes (name, build flags, seeds) are defined once, in kdenv/benchmark/regimes.py (REGIMES), which
# agents/regimes.py surveys; this script asks it for each regime's flags and seeds.
# Both queues build the same regimes in the same order, so two one-thread processes share each seed's jobs
# (a job another process holds is skipped, then waited for): a seed lands in about half its one-process time,
# within one session, since runs/ (and a half-built seed) does not travel between machines.
# The long horizon first (to 16 seeds: at 4 its out-of-sample interval was above 0, and its seeds must be
# built on the replay class of the first four), then the cheapest way to four regimes of 4 seeds: more
# decisions (6 phases, ~38 one-thread min a seed), RTE (its teacher fine-tuned by queue a first, as
# `teachers` does, where runs/ lacks it), the control (~128 min a seed: 512 leaves scored on 1,000 dev
# examples each; it also sizes the cpu budget's reward), and last the capacity gap (~134 min a seed).
QUEUE_A=(stsb_k2_u128 stsb_logits_p6_u64 rte_u8 stsb_u8_o stsb_l1_u64)
QUEUE_B=("${QUEUE_A[@]}")

flags_of() { $PYTHON -m kdenv.benchmark.regimes flags "$1"; }
seeds_of() { $PYTHON -m kdenv.benchmark.regimes seeds "$1"; }

unshipped() {  # the regime's seeds that its shipped table does not hold yet, comma-separated (may be empty)
    $PYTHON - "kdenv/tables/$1/manifest.json" "$(seeds_of "$1")" <<'PY'
import json, os, sys
from kdenv.cli import parse_seeds
have = set(json.load(open(sys.argv[1]))["seeds"]) if os.path.exists(sys.argv[1]) else set()
print(",".join(str(seed) for seed in parse_seeds(sys.argv[2]) if seed not in have))
PY
}

queue() {  # name, then regimes: each regime's unshipped seeds one at a time, shipping each seed as it finishes
    local name=$1; shift
    if pgrep -f "regime-queue-$name" > /dev/null; then echo "queue $name already running"; return; fi
    local script="set -u; " regime seed
    for regime in "$@"; do
        # each regime's projected hours first, in queue a's log, before its build starts
        # a regime on a task whose teacher runs/ lacks: queue a fine-tunes it first (queue b's builds of it
        # fail at once without it and b goes on to the next regime)
        local task; task=$(flags_of "$regime" | sed -E 's/.*--task ([a-z0-9_]+).*/\1/')
        [ "$name" = a ] && [ ! -f "runs/teachers/$task/kdenv.json" ] && \
            script+="[ -f runs/teachers/$task/kdenv.json ] || $PYTHON agents/finetune_teacher.py --task $task --no-progress >> runs/logs/regime_teachers.log 2>&1; "
        [ "$name" = a ] && script+="echo == $regime: projected cost >> runs/logs/regime_$name.log; $PYTHON agents/build_tree.py $(flags_of "$regime") --seeds $(seeds_of "$regime") --estimate --no-progress >> runs/logs/regime_$name.log 2>&1; "
        for seed in $(unshipped "$regime" | tr ',' ' '); do
            script+="$PYTHON agents/build_tree.py $(flags_of "$regime") --seeds $seed --no-progress >> runs/logs/regime_$name.log 2>&1; "
        done
    done
    nohup bash -c "exec -a regime-queue-$name bash -c '$script'" > /dev/null 2>&1 &
    echo "queue $name started: $* (log runs/logs/regime_$name.log)"
}

case "${1:-status}" in
    estimate)
        for name in $($PYTHON -m kdenv.benchmark.regimes names); do
            echo "== $name (seeds $(seeds_of "$name"))"
            $PYTHON agents/build_tree.py $(flags_of "$name") --seeds "$(seeds_of "$name")" --estimate --no-progress 2>&1 | grep -E "^(per seed|one phase|tree for)"
        done
        ;;
    teachers)
        if pgrep -f "regime-teachers" > /dev/null; then echo "teachers already being fine-tuned"; exit 0; fi
        CMD=""
        for task in stsb rte; do
            [ -f "runs/teachers/$task/kdenv.json" ] || CMD+="$PYTHON agents/finetune_teacher.py --task $task --no-progress; "
        done
        [ -n "$CMD" ] || { echo "every teacher is here"; exit 0; }
        nohup bash -c "exec -a regime-teachers bash -c '{ $CMD } >> runs/logs/regime_teachers.log 2>&1'" > /dev/null 2>&1 &
        echo "teachers started (log runs/logs/regime_teachers.log): start the queues when it ends"
        ;;
    carry)
        mkdir -p bench/carry
        [ -d runs/trees ] || { echo "nothing to carry: no runs/trees"; exit 0; }
        # the seeds a table already ships are never built again: their work folders stay behind
        EXCLUDE=()
        for name in $($PYTHON -m kdenv.benchmark.regimes names); do
            dir=$($PYTHON agents/build_tree.py $(flags_of "$name") --seeds 0 --work-dir 2>/dev/null | tail -1) || continue
            shipped=$($PYTHON - "kdenv/tables/$name/manifest.json" <<'PY'
import json, os, sys
print(" ".join(str(s) for s in json.load(open(sys.argv[1]))["seeds"]) if os.path.exists(sys.argv[1]) else "")
PY
)
            for seed in $shipped; do EXCLUDE+=("--exclude=trees/${dir#*runs/trees/}/seed$seed"); done
        done
        tar -czf bench/carry/trees.tar.gz.tmp --exclude='*.lock' --exclude='*.tmp' "${EXCLUDE[@]}" -C runs trees
        mv bench/carry/trees.tar.gz.tmp bench/carry/trees.tar.gz
        echo "packed runs/trees into bench/carry/trees.tar.gz ($(du -h bench/carry/trees.tar.gz | cut -f1)): commit it"
        ;;
    start)  # both queues; `start a` or `start b` for one
        if [ -f bench/carry/trees.tar.gz ]; then  # work folders carried from an earlier session, where runs/ lacks them
            mkdir -p runs && tar -xzf bench/carry/trees.tar.gz -C runs --skip-old-files
            echo "restored carried work folders into runs/trees (existing files kept)"
        fi
        [ "${2:-a}" = a ] && queue a "${QUEUE_A[@]}"
        [ "${2:-b}" = b ] && queue b "${QUEUE_B[@]}"
        ;;
    scale)  # the survey's best regime at scale (§5): agents retrained on its measured reward, then the live check
        regime="${2:-stsb_k2_u128}"
        seeds_of "$regime" > /dev/null || exit 2
        missing=$(unshipped "$regime")
        if [ -n "$missing" ]; then echo "not yet: $regime lacks seeds $missing (bash bench/regime_builds.sh start)" >&2; exit 1; fi
        if pgrep -f "regime-scale" > /dev/null; then echo "scale already running"; exit 0; fi
        nohup bash -c "exec -a regime-scale bash $0 _scale $regime >> runs/logs/regime_scale.log 2>&1" > /dev/null 2>&1 &
        echo "scale of $regime started (log runs/logs/regime_scale.log); the builds are paused until it ends"
        ;;
    _scale)  # run by `scale`, in the background: the builds wait (SIGSTOP) and resume however it ends
        regime="$2"
        pkill -STOP -f "agents/build_tree.py" || true
        trap 'pkill -CONT -f "agents/build_tree.py" || true' EXIT
        echo "== $(date -u +%FT%TZ) $regime: the agent rows, on the reward measured for the regime"
        $PYTHON agents/leaderboard.py --tables "$regime" --retrain --ray --no-progress --output "runs/board_$regime"
        echo "== $(date -u +%FT%TZ) $regime: the live check on 16 new seeds, with the best fixed schedule"
        $PYTHON agents/live_check.py --table "$regime" --row best --extra open-loop --ray --no-progress \
            --output-dir "runs/live/$regime/best"
        mkdir -p "docs/live/$regime"
        cp "runs/live/$regime/best/live_check.md" "runs/live/$regime/best/live_check.json" "docs/live/$regime/"
        cp "runs/live/$regime/best/eval/results.md" "docs/live/$regime/live_runs.md"
        $PYTHON agents/regimes.py --docs > /dev/null
        echo "== $(date -u +%FT%TZ) done: commit kdenv/results/leaderboard/$regime, docs/live/$regime and the docs"
        ;;
    pause) pkill -STOP -f "agents/build_tree.py" || true; echo "paused" ;;
    resume) pkill -CONT -f "agents/build_tree.py" || true; echo "resumed" ;;
    ship)
        for name in $($PYTHON -m kdenv.benchmark.regimes names); do
            $PYTHON agents/build_tree.py $(flags_of "$name") --seeds "$(seeds_of "$name")" --finished --no-progress 2>&1 | grep -vE "Warning|^\s*$" | tail -2
        done
        ;;
    status)
        pgrep -af "agents/build_tree.py" | grep -v "regime-queue\|pgrep" | cut -c1-200 || echo "no build runs"
        for name in $($PYTHON -m kdenv.benchmark.regimes names); do
            missing=$(unshipped "$name")
            echo "$name: seeds $(seeds_of "$name"), not shipped: $missing"
            [ -n "$missing" ] || continue
            # a seed begun: its job files (one per first action), how many are complete, and when last written
            dir=$($PYTHON agents/build_tree.py $(flags_of "$name") --seeds 0 --work-dir 2>/dev/null | tail -1) || continue
            for seed in ${missing//,/ }; do
                [ -d "$dir/seed$seed" ] || continue
                $PYTHON - "$dir/seed$seed" "$seed" <<'PY'
import json, pathlib, sys, time
folder, jobs = pathlib.Path(sys.argv[1]), sorted(pathlib.Path(sys.argv[1]).glob("prefix-*.jsonl"))
def items(path):  # a torn last line (a build writing) is skipped; the build itself heals its files
    for line in path.read_text().splitlines():
        try:
            yield json.loads(line)
        except ValueError:
            continue
def state(path):  # (nodes recorded, whether the job's own prefix is marked complete)
    name = path.stem[len("prefix-"):]  # prefix-0-3.jsonl: the job of actions 0 then 3; prefix-root: the root's
    prefix = [] if name == "root" else [int(a) for a in name.split("-")]
    found = list(items(path))
    return sum("depth" in item for item in found), any(item.get("complete") is True and item.get("history") == prefix
                                                       for item in found)
states = [state(job) for job in jobs]
last = max((job.stat().st_mtime for job in jobs), default=None)
ago = "" if last is None else f", last written {int((time.time() - last) / 60)} min ago"
print(f"  seed {sys.argv[2]} begun: {sum(done for _, done in states)} of {len(jobs)} job files complete, "
      f"{sum(nodes for nodes, _ in states)} nodes recorded{ago}")
PY
            done
        done
        ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
esac
