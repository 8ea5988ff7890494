#!/usr/bin/env bash
# CPU-scale reproduction of DAT's central claim (`make reproduce`): train the default Fashion-MNIST
# run (stage one = adversarial training, then stage two = DAT) and evaluate the stage-one model and
# the stage-two model the authors keep (the best-FID checkpoint, SPEC "curriculum") with the same
# seeds and the same sampling T. Claim: stage two makes FID at least
# 2x lower while AutoAttack robust accuracy stays within 3 points.
#
#   bash scripts/reproduce.sh [training overrides ...]
#
# Stage two starts from a stage one trained to its plateau (12 short epochs: PGD robust accuracy
# on the validation images levels off near 69% from epoch 7), as the authors start it from their
# best 300-epoch stage-one model. With the default run's 2 stage-one epochs the robust classifier
# is still improving, so stage two's gain is mixed with that of more training (README).
#
# Environment knobs (defaults = the documented run):
#   STAGE1_EPOCHS=12        stage-one (adversarial training) epochs of 200 batches
#   STAGE2_EPOCHS=3         stage-two (DAT) epochs of 200 batches
#   OUT=outputs/reproduce   run directory (checkpoints/, eval_stage1/, eval_best-fid/, table.md)
#   AA_N=1000               AutoAttack examples (the first N of the test split)
#   AA_ATTACKS=[apgd-ce,apgd-t]  custom attack list, or AA_ATTACKS=standard for the full ensemble
#   FID_SAMPLES=5000        class-conditional samples for FID / IS
#   NUM_REAL=10000          real train images for the FID statistics
#   TEST_SIZE=null          test images for clean accuracy / ECE (null: the full test split)
#   SKIP_TRAIN=1            reuse the checkpoints already in $OUT
#   EVAL_ARGS="..."         extra overrides for both evaluations (space separated)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/reproduce}
STAGE1_EPOCHS=${STAGE1_EPOCHS:-12}
STAGE2_EPOCHS=${STAGE2_EPOCHS:-3}
AA_N=${AA_N:-1000}
AA_ATTACKS=${AA_ATTACKS:-[apgd-ce,apgd-t]}
FID_SAMPLES=${FID_SAMPLES:-5000}
NUM_REAL=${NUM_REAL:-10000}
TEST_SIZE=${TEST_SIZE:-null}
read -r -a EXTRA_EVAL <<< "${EVAL_ARGS:-}"

if [ "$AA_ATTACKS" = "standard" ]; then
  AA_OPTS=("autoattack.version=standard")
else
  AA_OPTS=("autoattack.attacks=$AA_ATTACKS" "autoattack.n_restarts=1")
fi

mkdir -p "$OUT"
TRAIN_CMD=("$PY" -m dat_lightning.train "hydra.run.dir=$OUT" "stage1_epochs=$STAGE1_EPOCHS"
           "stage2_epochs=$STAGE2_EPOCHS" "$@")
if [ "${SKIP_TRAIN:-0}" != 1 ]; then
  echo ">>> ${TRAIN_CMD[*]}"
  start=$(date +%s)
  "${TRAIN_CMD[@]}"
  echo $(( $(date +%s) - start )) > "$OUT/train_wall_time_s"
fi
for stage in stage1 best-fid; do
  [ -f "$OUT/checkpoints/$stage.ckpt" ] || { echo "missing $OUT/checkpoints/$stage.ckpt (did training finish?)"; exit 1; }
done

# One sampling setting for both models: the run's test-time T and step size.
read -r STEPS STEP_SIZE < <("$PY" - "$OUT/checkpoints/best-fid.ckpt" <<'PYEOF'
import sys
from dat_lightning.checkpoints import read_checkpoint
s = read_checkpoint(sys.argv[1])["dat_config"]["sampling"]
print(s["steps"], s["step_size"])
PYEOF
)

for stage in stage1 best-fid; do
  EVAL_CMD=("$PY" -m dat_lightning.evaluate "ckpt=$OUT/checkpoints/$stage.ckpt" "hydra.run.dir=$OUT/eval_$stage"
            "metrics=[clean,autoattack,fid,calibration]" "test_size=$TEST_SIZE" "seed=0"
            "sampling.steps=$STEPS" "sampling.step_size=$STEP_SIZE" "sampling.num_samples=$FID_SAMPLES"
            "fid.extractor=cifar_resnet18" "fid.num_real=$NUM_REAL" "autoattack.n_examples=$AA_N" "${AA_OPTS[@]}"
            "${EXTRA_EVAL[@]}")
  echo ">>> ${EVAL_CMD[*]}"
  "${EVAL_CMD[@]}"
done

"$PY" - "$OUT" "${TRAIN_CMD[*]}" <<'PYEOF'
import json
import sys
from pathlib import Path

from dat_lightning.checkpoints import read_checkpoint

out, train_cmd = Path(sys.argv[1]), sys.argv[2]
r1, r2 = (json.loads((out / f"eval_{s}" / "report.json").read_text()) for s in ("stage1", "best-fid"))
m1, m2 = r1["metrics"], r2["metrics"]
aa, fid = m2["autoattack"]["threat_model"], m2["fid"]
name = fid["extractor"]
samp = fid["sampling"]
best, first = (read_checkpoint(out / "checkpoints" / f"{s}.ckpt") for s in ("best-fid", "stage1"))
wall = out / "train_wall_time_s"
train_wall = f"{int(wall.read_text()) / 60:.1f} min" if wall.is_file() else "n/a"


def pct(x):
    return f"{100 * x:.2f}"


rows = [
    (f"clean accuracy (%, {m2['clean']['n_examples']} test images)", pct(m1["clean"]["accuracy"]), pct(m2["clean"]["accuracy"])),
    (f"AutoAttack {aa['norm']} eps={aa['eps']:g} robust accuracy (%, first {aa['n_examples']} test images, "
     f"{'+'.join(aa['attacks'])})", pct(m1["autoattack"]["robust_accuracy"]), pct(m2["autoattack"]["robust_accuracy"])),
    (f"FID, offline extractor {name} ({fid['num_samples']} class-conditional samples vs {fid['num_real']} train images)",
     f"{m1['fid'][f'fid_{name}']:.2f}", f"{m2['fid'][f'fid_{name}']:.2f}"),
    (f"IS, offline extractor {name} ({fid['is_splits']} splits)", f"{m1['fid'][f'is_{name}']:.2f}", f"{m2['fid'][f'is_{name}']:.2f}"),
    ("ECE (20 bins, %)", pct(m1["calibration"]["ece"]), pct(m2["calibration"]["ece"])),
    ("evaluation wall time (min)", f"{r1['wall_time_s']['total'] / 60:.1f}", f"{r2['wall_time_s']['total'] / 60:.1f}"),
]
fid_ratio = m1["fid"][f"fid_{name}"] / m2["fid"][f"fid_{name}"]
robust_change = 100 * (m2["autoattack"]["robust_accuracy"] - m1["autoattack"]["robust_accuracy"])
lines = [
    "| | stage one (AT) | stage two (DAT, best-FID checkpoint) |",
    "|---|---:|---:|",
    *[f"| {a} | {b} | {c} |" for a, b, c in rows],
    "",
    f"Sampling: T={samp['steps']} steps of size {samp['step_size']:g} from seeds `{samp['seeds']}`, the same seeds "
    f"and T for both models. Scores from {name} are not Inception FID/IS.",
    f"Stage two = the best-FID checkpoint of the run (epoch {best['epoch']}, global step {best['global_step']}; "
    f"stage one ended at global step {first['global_step']}).",
    f"Training (both stages, one run): `{train_cmd}`, wall time {train_wall}.",
    f"Claim: FID stage one / stage two = {fid_ratio:.2f} (needs >= 2): {'holds' if fid_ratio >= 2 else 'does NOT hold'}; "
    f"robust accuracy change = {robust_change:+.2f} points (needs >= -3): {'holds' if robust_change >= -3 else 'does NOT hold'}.",
]
table = "\n".join(lines) + "\n"
(out / "table.md").write_text(table)
print("\n" + table)
print(f"written to {out / 'table.md'}")
PYEOF
