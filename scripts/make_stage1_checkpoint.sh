#!/usr/bin/env bash
# A stage-one model the package ships (src/dat_lightning/weights): a config's own stage one alone,
# 1200 steps (stage1_epochs=6), deterministic on the CPU. The CPU default's stage two starts from
# fmnist_wrn10_stage1.ckpt (no overrides), `make reproduce`'s from fmnist_wrn10_silu_stage1.ckpt
# (+experiment=fmnist_reproduce). `make stage1-checkpoint` makes both; tests/test_shipped_stage_one.py
# (slow) runs this again and checks the weights bit for bit.
#
# usage: scripts/make_stage1_checkpoint.sh [OUT_FILE] [RUN_DIR] [training overrides ...]
#        (RUN_DIR must not exist yet)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-src/dat_lightning/weights/fmnist_wrn10_stage1.ckpt}
RUN_DIR=${2:-outputs/stage1_checkpoint}
shift $(( $# < 2 ? $# : 2 ))
if [ -e "$RUN_DIR" ]; then
  echo "error: $RUN_DIR exists; remove it (or name another run directory) to make the checkpoint afresh" >&2
  exit 1
fi
"$PY" -m dat_lightning.train stage1_epochs=6 stage2_epochs=0 summary.enabled=false "hydra.run.dir=$RUN_DIR" "$@"
cp "$RUN_DIR/checkpoints/stage1.ckpt" "$OUT"
echo "stage-one checkpoint written: $OUT"
