# Sourced by scripts/compare.sh and scripts/reproduce.sh: the Fashion-MNIST judge's weights.
# JUDGE (default: fmnist_cnn_judge.pt in $DAT_CACHE, as `make train` makes it) is trained once
# (~4 min on 2 cores, run directory $1/judge) when the file is absent.
JUDGE=${JUDGE:-${DAT_CACHE:-$HOME/.cache/dat_lightning}/fmnist_cnn_judge.pt}

ensure_judge() {
  if [ ! -f "$JUDGE" ]; then
    echo ">>> the Fashion-MNIST judge (once): $JUDGE"
    "$PY" -m dat_lightning.judge "out=$JUDGE" "hydra.run.dir=$1/judge"
  fi
}
