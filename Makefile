# Quick start: `make demo` (set up + verify resnet50 + timing table), `make test` (set up + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup ext demo test test-compat bench clean gpu-image-venv gpu-prebuild gpu-dry-run

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

# The GPU machine's versions (requirements-gpu-image.txt) in one venv outside the tree, built once per
# machine (a CUDA build of torch 2.11: ~5 GB, ~2 minutes from the registry here) and rebuilt when the
# requirements change. It serves the compatibility lane and the prebuilt library.
GPU_IMAGE_VENV ?= $(HOME)/.cache/fused_resnet/venv-gpu-image
gpu-image-venv:
	@if cmp -s requirements-gpu-image.txt $(GPU_IMAGE_VENV)/requirements.txt 2>/dev/null; then \
	  echo "GPU-image venv: $(GPU_IMAGE_VENV) (up to date)"; \
	else \
	  echo "GPU-image venv: building $(GPU_IMAGE_VENV) (torch 2.11 CUDA build, a few minutes) ..."; \
	  rm -rf $(GPU_IMAGE_VENV) && $(PY) -m venv $(GPU_IMAGE_VENV) && \
	  $(GPU_IMAGE_VENV)/bin/pip install -q -r requirements-gpu-image.txt && \
	  cp requirements-gpu-image.txt $(GPU_IMAGE_VENV)/requirements.txt; \
	fi

# The compatibility lane: the invalidation/frontend/plan tests and the Triton interpreter tests on the
# GPU machine's versions, on this CPU (the package from this tree, not installed).
test-compat: gpu-image-venv
	@$(GPU_IMAGE_VENV)/bin/python -c "import torch, torchvision, triton, numpy; print('compatibility lane: torch', torch.__version__, 'torchvision', torchvision.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)"
	PYTHONPATH=$(CURDIR) $(GPU_IMAGE_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_workflows.py tests/test_workflows_modes.py tests/test_frontends.py tests/test_plans.py tests/test_finite.py tests/test_spare.py tests/test_cpu_graph.py
	@echo "the workflow matrix once more on the fused blocks alone (the CPU graph answers its no-grad calls above)"
	FUSED_RESNET_CPU_GRAPH=0 PYTHONPATH=$(CURDIR) $(GPU_IMAGE_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_workflows.py
	PYTHONPATH=$(CURDIR) TRITON_INTERPRET=1 $(GPU_IMAGE_VENV)/bin/python -m pytest -q -p no:cacheprovider -m interpreter tests

# What a GPU window carries (benchmarks/gpu_window.py): .gpu-prebuilt/ = the CUDA extension built here
# for the GPU machine's torch (it has nvcc, but building there costs its device time), the digest of
# the sources it was built from (the suite installs it only for the same sources) and the CUTLASS
# headers a JIT build there would need. Built against those carried headers, in the GPU-image venv,
# with its objects in .gpu-build/ (ignored, not carried: a rebuild after a csrc/ change recompiles
# only what changed). Rebuild after any change under csrc/.
gpu-prebuild: gpu-image-venv
	rm -rf .gpu-prebuilt && mkdir -p .gpu-prebuilt
	$(GPU_IMAGE_VENV)/bin/python benchmarks/gpu_window.py stage-headers
	CUTLASS_INCLUDE=$(CURDIR)/.gpu-prebuilt/cutlass/include TORCH_EXTENSIONS_DIR=$(CURDIR)/.gpu-build \
	  $(GPU_IMAGE_VENV)/bin/python benchmarks/prebuild_extension.py --out-dir .gpu-prebuilt
	$(GPU_IMAGE_VENV)/bin/python benchmarks/gpu_window.py plan

# Rehearse the GPU suite on this CPU: every phase's commands at tiny sizes, packed as a real run.
gpu-dry-run: setup
	PATH=$(CURDIR)/$(BIN):$$PATH bash benchmarks/gpu_suite.sh --dry-run out/gpu_dry_run

clean:
	rm -rf $(VENV) build *.egg-info
