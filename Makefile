# Quick start: `make demo` (set up + verify resnet50 + timing table), `make test` (set up + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup ext demo test bench clean gpu-prebuild gpu-dry-run

# Building the CUDA extension needs no GPU: nvcc for sm_80/sm_90 without querying a device.
export CUDA_HOME ?= /usr/local/cuda
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0

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
# Compile (or reuse the cached build of) the CUDA extension and print nvcc's resource report
# (registers, spills per kernel), then one line per Hopper sm90 kernel (registers, stack/local
# bytes, shared memory, HGMMA count; from cuobjdump). Skipped with a note where there is no nvcc.
ext: setup
	@if [ -x "$$CUDA_HOME/bin/nvcc" ]; then \
	  echo "building the CUDA extension (csrc/, sm_80 + sm_90a; minutes the first time, cached after) ..."; \
	  $(BIN)/python -c "import fused_resnet._ext as e; print('built', e.build(verbose=True))" > $(VENV)/ext_build.log 2>&1; \
	  rc=$$?; grep -E "ptxas info *: Used|spill stores" $(VENV)/ext_build.log | sed 's/^ *//; s/, [0-9]* bytes cmem.*//' | sort | uniq -c; \
	  tail -n 3 $(VENV)/ext_build.log; \
	  if [ $$rc -eq 0 ]; then $(BIN)/python -c "import fused_resnet._ext as e; print(e.sm90_report())" || rc=$$?; fi; \
	  exit $$rc; \
	else echo "nvcc not found at $$CUDA_HOME: the CUDA extension is not built (its tests skip)"; fi

test: setup ext
	$(BIN)/python -m pytest -q tests
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -m interpreter tests

bench: setup
	$(BIN)/python -m fused_resnet bench --device cpu --model resnet50 --batch 8 --out benchmarks/results/cpu_resnet50 --plot benchmarks/results/cpu_resnet50.png

# The CUDA extension prebuilt for the GPU machine's torch (it has nvcc but building there costs its
# device time), into .gpu-prebuilt/ (ignored; take it along with the tree): a venv with that torch,
# its own TORCH_EXTENSIONS_DIR, the library named for the torch version the GPU machine reports, its
# source digest (the suite uses it only for the same sources), and the CUTLASS headers for the JIT
# fallback. Tens of minutes on 2 cores; rebuild after any change under csrc/.
GPU_TORCH ?= 2.11.0
GPU_TORCH_VERSION ?= 2.11.0+cu130
gpu-prebuild: setup
	$(PY) -m venv .gpu-prebuilt/venv
	.gpu-prebuilt/venv/bin/pip install -q --no-deps torch==$(GPU_TORCH) numpy ninja nvidia-cutlass==4.2.0.0 \
	  typing-extensions sympy mpmath filelock jinja2 MarkupSafe networkx fsspec setuptools
	rm -rf .gpu-prebuilt/cutlass_include
	cp -r "$$($(BIN)/python -c 'import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), "source", "include"))')" .gpu-prebuilt/cutlass_include
	TORCH_EXTENSIONS_DIR=$(CURDIR)/.gpu-prebuilt/torch_extensions .gpu-prebuilt/venv/bin/python \
	  benchmarks/prebuild_extension.py .gpu-prebuilt/_C-torch$(GPU_TORCH_VERSION).so

# Rehearse the GPU suite on this CPU: every phase's commands at tiny sizes, packed as a real run.
gpu-dry-run: setup
	PATH=$(CURDIR)/$(BIN):$$PATH bash benchmarks/gpu_suite.sh --dry-run out/gpu_dry_run

clean:
	rm -rf $(VENV) build *.egg-info
