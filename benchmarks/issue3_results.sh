#!/usr/bin/env bash
# Every number of the MatchSeg results table, from scratch, in one run of the same code.
#   bash benchmarks/issue3_results.sh [DATA] [RUNS] [STEPS]
# DATA defaults to ../shared/data, RUNS to runs/, STEPS (per training) to 6000 (the shipped checkpoint's).
# On the 2-core CPU of the development machines one training of 6000 steps takes about 80 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
RUNS=${2:-runs}
STEPS=${3:-6000}
M=.venv/bin/matchseg
$M train --data "$DATA" --out "$RUNS/universal" --steps "$STEPS" --export "$RUNS/universal.safetensors"
methods=(--method universal="$RUNS/universal.safetensors" --method universal-random-support="$RUNS/universal.safetensors:random")
for d in busi kvasir wbc; do
  $M train --data "$DATA" --out "$RUNS/only-$d" --datasets $d --steps "$STEPS" --export "$RUNS/only-$d.safetensors"
  methods+=(--method "only-$d=$RUNS/only-$d.safetensors")
done
$M train --data "$DATA" --out "$RUNS/crossconv" --interaction crossconv --steps "$STEPS" --export "$RUNS/crossconv.safetensors"
$M train --data "$DATA" --out "$RUNS/unet" --interaction none --steps "$STEPS" --export "$RUNS/unet.safetensors"
methods+=(--method no-joint-attention="$RUNS/crossconv.safetensors" --method unet="$RUNS/unet.safetensors")
.venv/bin/python benchmarks/eval_matchseg.py --data "$DATA" "${methods[@]}" --json "$RUNS/results.json"
