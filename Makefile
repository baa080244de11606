# Quick start: `make demo` (set up + verify resnet50 + timing table), `make test` (set up + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python -m fused_resnet demo

# Two runs: the suite (eager path, AOT compiles for sm_80/sm_90), then the Triton kernels' numerics
# under the interpreter (TRITON_INTERPRET must be set before kernels are defined: its own process).
test: setup
	$(BIN)/python -m pytest -q tests
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -m interpreter tests

bench: setup
	$(BIN)/python -m fused_resnet bench --device cpu --model resnet50 --batch 8 --out benchmarks/results/cpu_resnet50 --plot benchmarks/results/cpu_resnet50.png

clean:
	rm -rf $(VENV) build *.egg-info
