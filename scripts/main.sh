#!/usr/bin/env bash
# The main job, offline: build a reference bank from the built-in (generated) sample data,
# show it, and retrieve the references most similar to a new image.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-matchseg-demo}
rm -rf "$OUT/bank"
.venv/bin/matchseg sample "$OUT/sample" -n 8 --overwrite
.venv/bin/matchseg bank add "$OUT/bank" --images "$OUT/sample/images" --masks "$OUT/sample/masks"
.venv/bin/matchseg bank info "$OUT/bank"
.venv/bin/python -c "
from napari_matchseg.sample_data import make_sample
from napari_matchseg.image_io import write_image
write_image('$OUT/query.png', make_sample('ultrasound', 1, seed=42)[0][1], overwrite=True)"
echo "references most similar to $OUT/query.png (an unseen synthetic ultrasound image):"
.venv/bin/matchseg retrieve "$OUT/bank" "$OUT/query.png" -k 5
