#!/usr/bin/env bash
# Retrain the embedded default (napari_matchseg/checkpoints/matchseg_universal.safetensors) from ../shared/data.
#   bash scripts/train_universal.sh [DATA] [RUNS]
# Three stages, each resumable (re-running skips a finished stage and resumes an interrupted one from last.pt):
#   1. a plain U-Net (the MatchSeg network without its interaction) on BUSI train: 11,770 steps, 1 thread;
#   2. the same U-Net on the train splits of BUSI, Kvasir-SEG and WBC: 9,000 steps, 2 threads;
#   3. MatchSeg grown from it (Joint Attention added with zero-initialised new paths, every U-Net weight kept)
#      on the three train splits plus 25 % synthetic tasks, which teach it to read its supports: STEPS3 steps.
# Why U-Net first: on a CPU the support-free network does 2.6x the steps per second, and the grown network starts
# from what it learned (docs/benchmarks.md, "BUSI: MatchSeg started from the U-Net").
# On the 2-core development CPU: 87 + 44 + 54 minutes (measured). Output: RUNS/universal-v2.safetensors (fp16).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
RUNS=${2:-runs/universal-v2}
STEPS3=${STEPS3:-4600}
M=.venv/bin/matchseg
mkdir -p "$RUNS"

stage() {  # stage NAME ARGS...: one training run, skipped when its export exists
  local name=$1; shift
  if [ -f "$RUNS/$name.safetensors" ]; then echo "have $RUNS/$name.safetensors"; return; fi
  echo "$(date +%T) start $name"
  $M train --data "$DATA" --out "$RUNS/$name" --export "$RUNS/$name.safetensors" "$@"
  echo "$(date +%T) done $name: $(tail -n 1 "$RUNS/$name/log.jsonl")"
}

stage busi-unet --datasets busi --interaction none --steps 11770 --val-every 1471 --synthetic-fraction 0 \
  --threads 1
stage mixed-unet --datasets busi kvasir wbc --init "$RUNS/busi-unet.safetensors" --lr 5e-4 --steps 9000 \
  --val-every 1500 --synthetic-fraction 0 --threads 2
stage universal-v2 --datasets busi kvasir wbc --init "$RUNS/mixed-unet.safetensors" \
  --interaction joint_attention --lr 5e-4 --steps "$STEPS3" --val-every $(( (STEPS3 + 7) / 8 )) \
  --synthetic-fraction 0.25 --threads 2
echo "ship it: cp $RUNS/universal-v2.safetensors napari_matchseg/checkpoints/matchseg_universal.safetensors"
