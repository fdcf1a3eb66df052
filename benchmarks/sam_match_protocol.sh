#!/usr/bin/env bash
# Issue 40: row (d) of the semi-supervised comparison (pseudo-labels refined by LiteMedSAM, SAM-Match) against
# (b) labelled-only fine-tuning and (c) the mean teacher, paired on the same draw of the labelled images, cut into
# steps of at most ~45 min on the 2-core development CPU that each leave their result behind:
#   bash benchmarks/sam_match_protocol.sh start          # the start checkpoint, trained without DATASET (resumable)
#   bash benchmarks/sam_match_protocol.sh encode         # LiteMedSAM embeddings of DATASET's train split (resumable)
#   bash benchmarks/sam_match_protocol.sh draw SEED      # rows (a), (b), (c3), (d) of one draw -> results JSON
#   bash benchmarks/sam_match_protocol.sh table S1 S2..  # paired differences over the draws -> results JSON
# Everything but the results lives in CACHE (default ~/.cache/napari-matchseg/sam-match, outside the work tree),
# so a step cut off by the end of a session is run again and continues: finished trainings, rows and pseudo-labels
# are reused, a cut-off training resumes from its last.pt, encoded images are skipped.
# Environment: DATASET (busi), ROUNDS (2), STEPS (300 per round; (b) gets ROUNDS x STEPS, (c3) and (d) as many on
# top of it), LOO_STEPS (2400), START (the start checkpoint of the draws: the leave-one-out run's best.safetensors),
# THREADS (2), DEVICE (auto), DATA (../shared/data), RESULTS (benchmarks/results).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
DATASET=${DATASET:-busi}
CACHE=${CACHE:-$HOME/.cache/napari-matchseg/sam-match}
RESULTS=${RESULTS:-benchmarks/results}
ROUNDS=${ROUNDS:-2}
STEPS=${STEPS:-300}
LOO_STEPS=${LOO_STEPS:-2400}
THREADS=${THREADS:-2}
DEVICE=${DEVICE:-auto}
PY=.venv/bin/python
declare -A OTHERS=([busi]="kvasir wbc" [kvasir]="busi wbc" [wbc]="busi kvasir")
LOO=$CACHE/loo/no-$DATASET
START=${START:-$LOO/best.safetensors}
mkdir -p "$CACHE" "$RESULTS"

case ${1:-} in
  start)
    # shellcheck disable=SC2086  # OTHERS holds a list of datasets
    .venv/bin/matchseg train --data "$DATA" --out "$LOO" --datasets ${OTHERS[$DATASET]} --steps "$LOO_STEPS" \
      --val-every $(( (LOO_STEPS + 3) / 4 )) --threads "$THREADS" --device "$DEVICE" ;;
  encode)
    $PY benchmarks/encode_split.py --data "$DATA" --dataset "$DATASET" --split train --cache "$CACHE" \
      --device "$DEVICE" ;;
  draw)
    seed=${2:?draw SEED}
    [ -f "$START" ] || { echo "no start checkpoint $START: run '$0 start' first" >&2; exit 2; }
    $PY benchmarks/bench_semi.py --data "$DATA" --dataset "$DATASET" --threads "$THREADS" --device "$DEVICE" \
      --seed "$seed" --rows a,b,c3,d --rounds "$ROUNDS" --steps "$STEPS" --checkpoint "$START" \
      --features "$CACHE" --work "$CACHE/draw-$seed" --json "$RESULTS/sam_match_seed${seed}_$DATASET.json" ;;
  table)
    shift
    [ $# -gt 0 ] || { echo "table SEED [SEED ...]" >&2; exit 2; }
    runs=()
    for s in "$@"; do runs+=("$CACHE/draw-$s"); done
    $PY benchmarks/semi_subsets.py --data "$DATA" --dataset "$DATASET" --threads "$THREADS" --device "$DEVICE" \
      --runs "${runs[@]}" --json "$RESULTS/sam_match_$DATASET.json" ;;
  *)
    sed -n '2,13p' "$0" >&2; exit 2 ;;
esac
