#!/usr/bin/env bash
# The main job, offline: build a reference bank from the built-in (generated) sample data, propose a mask for
# each held-back sample image with the shipped MatchSeg checkpoint, and write the masks and an overlay picture.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-matchseg-demo}
.venv/bin/matchseg demo --out "$OUT"
.venv/bin/matchseg bank info "$OUT/bank"
