#!/usr/bin/env bash
# Every number of the MatchSeg results table, in one run of the same code.
#   bash benchmarks/issue3_results.sh [DATA] [RUNS]
# Environment: UNIVERSAL (checkpoint of the universal row; default: the shipped one; "train" trains the v1
# recipe, 6000 steps, about 80 min on a 2-core CPU; scripts/train_universal.sh retrains the shipped v2),
# BUSI_MIN / OTHER_MIN (per-run compute budget in single-thread CPU minutes: 20 / 8), LANES (trainings run
# side by side, one thread each: 2), CACHE_SEED (a folder of <dataset>-<split>-128-handcrafted.pt files from an
# earlier run, to skip re-reading the images).
#
# In-domain rows: for each dataset, three networks are trained on its train split alone for the SAME
# compute budget (steps = minutes x single-thread steps per second measured on the development CPU:
# joint attention 0.935, cross-conv 1.074, U-Net 2.451 steps/s at batch 8, 128 px), no synthetic tasks.
# BUSI also gets the universal checkpoint fine-tuned on BUSI (800 steps, lr 5e-4).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
RUNS=${2:-runs}
BUSI_MIN=${BUSI_MIN:-20}
OTHER_MIN=${OTHER_MIN:-8}
LANES=${LANES:-2}
M=.venv/bin/matchseg
mkdir -p "$RUNS"
declare -A SPEED=([joint_attention]=0.935 [crossconv]=1.074 [none]=2.451)
declare -A SHORT=([joint_attention]=matchseg [crossconv]=crossconv [none]=unet)

job() {  # job NAME DATASET STEPS ARGS...
  local name=$1 d=$2 steps=$3; shift 3
  if [ -f "$RUNS/$name.safetensors" ]; then echo "have $RUNS/$name.safetensors"; return; fi
  if [ -n "${CACHE_SEED:-}" ]; then mkdir -p "$RUNS/$name/cache"; cp -n "$CACHE_SEED/$d"-*.pt "$RUNS/$name/cache/"; fi
  echo "$(date +%T) start $name ($steps steps)"
  $M train --data "$DATA" --out "$RUNS/$name" --datasets "$d" --steps "$steps" --threads 1 \
    --synthetic-fraction 0 --val-every $(( (steps + 3) / 4 )) --export "$RUNS/$name.safetensors" "$@" \
    > "$RUNS/$name.log" 2>&1
  echo "$(date +%T) done $name: $(tail -n 1 "$RUNS/$name/log.jsonl")"
}
throttle() { while [ "$(jobs -rp | wc -l)" -ge "$LANES" ]; do wait -n; done; }

if [ "${UNIVERSAL:-default}" = train ]; then
  $M train --data "$DATA" --out "$RUNS/universal" --steps 6000 --export "$RUNS/universal.safetensors"
  UNIVERSAL=$RUNS/universal.safetensors
fi
for d in busi kvasir wbc; do
  minutes=$OTHER_MIN; [ "$d" = busi ] && minutes=$BUSI_MIN
  for inter in joint_attention crossconv none; do
    steps=$(python3 -c "print(round($minutes * 60 * ${SPEED[$inter]}))")
    throttle; job "$d-${SHORT[$inter]}" "$d" "$steps" --interaction "$inter" &
  done
  if [ "$d" = busi ]; then
    throttle; job busi-universal-ft busi 800 --init default --lr 5e-4 &
  fi
done
wait
.venv/bin/python benchmarks/eval_matchseg.py --data "$DATA" --json "$RUNS/results.json" \
  --method universal="${UNIVERSAL:-default}" --method universal-random-support="${UNIVERSAL:-default}:random" \
  --method in-domain="$RUNS/{d}-matchseg.safetensors" --method in-domain-random-support="$RUNS/{d}-matchseg.safetensors:random" \
  --method no-joint-attention="$RUNS/{d}-crossconv.safetensors" --method unet="$RUNS/{d}-unet.safetensors" \
  --method universal-ft-busi="$RUNS/busi-universal-ft.safetensors" --only universal-ft-busi=busi
