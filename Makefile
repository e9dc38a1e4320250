# make test / make demo / make bench: each creates .venv (Python 3.11) and installs what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
PYTEST_ARGS ?=

.PHONY: test test-slow demo bench notebooks venv data clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian's Fashion-MNIST IDX files, when missing and we are root (tests that need them skip otherwise);
# Debian's chromium, the headless browser that tests/test_report.py renders the HTML report in;
# Debian's slurm-wlm and munge: tests/test_study.py starts a real one-node SLURM (tests/slurm_cluster.py).
data:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ] && [ ! -f $(FMNIST)/train-images-idx3-ubyte ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
	      || echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST tests will skip"; \
	  else echo "note: not root, Fashion-MNIST not installed; its tests will skip"; fi; \
	fi
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
	      || echo "warning: could not install chromium; the report's browser test will skip"; \
	  else echo "note: not root, chromium not installed; the report's browser test will skip"; fi; \
	fi
	@if [ ! -x /usr/sbin/slurmctld ] || [ ! -x /usr/sbin/munged ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) >/dev/null 2>&1 \
	      || echo "warning: could not install slurm-wlm and munge; the SLURM tests will skip"; \
	  else echo "note: not root, SLURM not installed; the SLURM tests will skip"; fi; \
	fi

test: venv data
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: venv data
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

demo: venv data
	$(BIN)/landscape-train --runs-dir runs --overwrite
	$(BIN)/landscape-eval runs/p-sat-digits-eps0.1-s0/best.pt

bench: venv data
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/train_overhead.py
	$(BIN)/python benchmarks/spectrum_vs_pyhessian.py
	$(BIN)/python benchmarks/peers_exact.py
	$(BIN)/python benchmarks/surface_cost.py
	$(BIN)/python benchmarks/distributed_scaling.py

# Re-execute notebooks/*.ipynb in their full (reader's) mode and rewrite them with their outputs (minutes);
# run it after results/sat-study/ changes, then commit the notebooks.
notebooks: venv
	$(BIN)/python notebooks/execute.py

clean:
	rm -rf $(VENV) runs .pytest_cache
