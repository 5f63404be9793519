# wavebench: every user-facing command is a make target or a `python -m` module.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: setup demo test ui clean tables table-cifar10 table-ablation table-wddm table-dvdp table-ddim plots bench-perf slurm-up slurm-down

setup: $(STAMP)

# Re-installs only when pyproject.toml changes (the stamp is older than it).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: setup
	$(BIN)/python -m bench.demo

test: setup
	$(BIN)/python -m pytest -q tests

ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --default-artifact-root $(CURDIR)/mlartifacts --host 127.0.0.1 --port 5000

# Paper-style tables from the MLflow store (our runs beside the published numbers), written to reports/out/.
table-cifar10: setup
	$(BIN)/python -m reports.table --table cifar10
table-ablation: setup
	$(BIN)/python -m reports.table --table ablation
table-wddm: setup
	$(BIN)/python -m reports.table --table wddm
table-dvdp: setup
	$(BIN)/python -m reports.table --table dvdp
table-ddim: setup
	$(BIN)/python -m reports.table --table ddim
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
