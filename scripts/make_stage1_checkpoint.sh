#!/usr/bin/env bash
# The stage-one model that the CPU default's stage two starts from, shipped as
# src/dat_lightning/weights/fmnist_wrn10_stage1.ckpt: the default's own stage one alone, 1200 steps
# (stage1_epochs=6), deterministic on the CPU. `make stage1-checkpoint` runs this;
# tests/test_shipped_stage_one.py (slow) runs it again and checks the weights bit for bit.
#
# usage: scripts/make_stage1_checkpoint.sh [OUT_FILE] [RUN_DIR]   (RUN_DIR must not exist yet)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-src/dat_lightning/weights/fmnist_wrn10_stage1.ckpt}
RUN_DIR=${2:-outputs/stage1_checkpoint}
if [ -e "$RUN_DIR" ]; then
  echo "error: $RUN_DIR exists; remove it (or name another run directory) to make the checkpoint afresh" >&2
  exit 1
fi
"$PY" -m dat_lightning.train stage1_epochs=6 stage2_epochs=0 summary.enabled=false "hydra.run.dir=$RUN_DIR"
cp "$RUN_DIR/checkpoints/stage1.ckpt" "$OUT"
echo "stage-one checkpoint written: $OUT"
