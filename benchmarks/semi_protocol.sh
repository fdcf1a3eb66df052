#!/usr/bin/env bash
# Issue 6's clean protocol in one resumable command: the five-draw table of docs/benchmarks.md ("Clean protocol
# over five labelled subsets").
#   bash benchmarks/semi_protocol.sh [DATA] [RUNS]
# For each of busi and kvasir: a start checkpoint trained without that dataset (leave one dataset out), then for
# every labelled draw (--seed) the rows (a), (b), (b2) and (c3) of bench_semi.py, then semi_subsets.py over the
# draws (paired differences on test and val). Everything lands under RUNS (default runs): loo/no-D, semi-seedS/D,
# semi_seedS_D.json, semi_subsets_D.json. Run it again after an interruption: finished trainings, rows and draws
# are reused, a cut-off training resumes from its last.pt. Other settings need another RUNS folder (bench_semi.py
# refuses a reused row that was trained differently).
# Environment: SEEDS (draws: "0 1 2 3 4"), ROWS (a,b,b2,c3), ROUNDS (3), STEPS (400 per round; (b) gets
# ROUNDS x STEPS, as do (b2) and (c3) on top of it), LOO_STEPS (2400), DEVICE (auto: cuda, then mps, then cpu),
# THREADS (1: the two datasets run side by side, one CPU thread each).
# Time on the 2-core development CPU at the defaults: 44-55 min for the two start checkpoints, then 60-90 min
# per draw; on a GPU, raise STEPS and LOO_STEPS.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
RUNS=${2:-runs}
SEEDS=${SEEDS:-0 1 2 3 4}
ROWS=${ROWS:-a,b,b2,c3}
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-400}
LOO_STEPS=${LOO_STEPS:-2400}
DEVICE=${DEVICE:-auto}
THREADS=${THREADS:-1}
PY=.venv/bin/python
declare -A OTHERS=([busi]="kvasir wbc" [kvasir]="busi wbc")
mkdir -p "$RUNS"

protocol() {  # protocol DATASET: everything for one dataset, logged to RUNS/semi_protocol_D.log
  local d=$1 loo=$RUNS/loo/no-$1 runs=()
  # (a finished training returns at once; a cut-off one resumes from its last.pt)
  # shellcheck disable=SC2086  # OTHERS holds a list of datasets
  .venv/bin/matchseg train --data "$DATA" --out "$loo" --datasets ${OTHERS[$d]} --steps "$LOO_STEPS" \
    --val-every $(( (LOO_STEPS + 3) / 4 )) --threads "$THREADS" --device "$DEVICE"
  for s in $SEEDS; do
    $PY benchmarks/bench_semi.py --data "$DATA" --dataset "$d" --threads "$THREADS" --device "$DEVICE" \
      --seed "$s" --rows "$ROWS" --rounds "$ROUNDS" --steps "$STEPS" --checkpoint "$loo/best.safetensors" \
      --work "$RUNS/semi-seed$s" --json "$RUNS/semi_seed${s}_$d.json"
    runs+=("$RUNS/semi-seed$s")
  done
  $PY benchmarks/semi_subsets.py --data "$DATA" --dataset "$d" --threads "$THREADS" --device "$DEVICE" \
    --runs "${runs[@]}" \
    --json "$RUNS/semi_subsets_$d.json"
}

for d in busi kvasir; do
  echo "$(date +%T) $d: log in $RUNS/semi_protocol_$d.log"
  protocol "$d" > "$RUNS/semi_protocol_$d.log" 2>&1 &
done
status=0
for job in $(jobs -p); do wait "$job" || status=1; done
for d in busi kvasir; do
  echo "== $d"; grep -E "^$d (test|val)" "$RUNS/semi_protocol_$d.log" || tail -n 5 "$RUNS/semi_protocol_$d.log"
done
exit $status
