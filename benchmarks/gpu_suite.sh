#!/usr/bin/env bash
# The GPU suite: ONE command for a GPU machine with no network (see benchmarks/README.md).
#
#   bash benchmarks/gpu_suite.sh OUT_DIR [--only PHASES] [--skip PHASES]
#
# Phases, in order of what matters most (each is skipped when SUITE_BUDGET_S, default 450 s, has too
# little left for it, so a cut-short run keeps what it finished; PHASES is a comma list):
#   build      info, JIT build of the CUDA extension (sm_80 + sm_90a kernels; build time measured)
#   kernels    GPU tests of the Hopper kernels (first, alone), then of the tactics (incl. NaN through
#              cuDNN's fused ReLU) and the Triton/CUTLASS conv classes
#   tune       python -m fused_resnet tune: every tactic per ResNet-50 fp16 conv shape, batch 256 and 32
#              -> this GPU's tactic table (used by every phase after it)
#   op         per-shape op benchmark, batch 256 and 32: conv_alone vs the op auto runs vs every tactic,
#              with the target bound (conv_alone + one residual read at the measured copy bandwidth)
#   model256   whole model, batch 256: torchvision_cl, torch.compile (freezing), fused_resnet
#   graphs     the CUDA-graph fault experiment (models dropped / kept / empty_cache disabled), then
#              the optimize() GPU tests (several models, dropped references, weight edits)
#   b1         batch 1: TorchScript vs fused_resnet without graphs; TorchScript graphs vs optimized
#   timm       timm resnet50 fp16 batch 256: timm eager vs fused
#   model32    whole model, batch 32 (same providers as model256)
#   others     ResNet-101 and ResNeXt-50 batch 256 vs torch.compile
#   b8         batch 8 and 32 with and without graphs (TorchScript, fused_resnet, optimized)
#   tests      the rest of the GPU tests
#   memcheck   compute-sanitizer memcheck: one fused block per backend, every sm90 config once
#   ncu        Nsight Compute basic metrics of 40 of auto's conv kernels at batch 256 (ncu_details.csv)
#   compile_max torch.compile max-autotune, batch 256 (only if much time is left)
#
# Installs nothing from the network: the project runs from this working tree (PYTHONPATH); CUTLASS
# headers come from CUTLASS_INCLUDE or a carried nvidia-cutlass wheel in .whl/. Writes to OUT_DIR:
# suite.log (the summary), one log per phase, results.json/csv (merged), the tuned tables.
set -u
OUT_DIR=${1:?usage: gpu_suite.sh OUT_DIR [--only PHASES] [--skip PHASES]}
shift
ONLY=""; SKIP=""
while [ $# -gt 0 ]; do
  case "$1" in
    --only) ONLY=",$2,"; shift ;;
    --skip) SKIP=",$2,"; shift ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/.."
mkdir -p "$OUT_DIR"
RAW="$OUT_DIR/raw"; mkdir -p "$RAW"
START=$(date +%s)
BUDGET=${SUITE_BUDGET_S:-450}
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
say() { echo "[gpu_suite +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT_DIR/suite.log"; }
want() {  # want PHASE MIN_LEFT_S: selected, not skipped, and enough time left
  [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]] || return 1
  [[ "$SKIP" != *",$1,"* ]] || return 1
  if [ "$(left)" -lt "$2" ]; then say "phase $1 skipped: $(left) s left, needs $2"; return 1; fi
}
: > "$OUT_DIR/suite.log"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/fused_resnet_site .whl/*.whl && \
    export PYTHONPATH=/tmp/fused_resnet_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# A library prebuilt for exactly this torch and these sources (benchmarks/prebuild_extension.py)
# saves the build; one built from other sources is left unused (its kernels are not this tree's).
TORCH_V=$(python3 -c "import torch; print(torch.__version__)" 2>/dev/null)
PRE=".whl/_C-torch$TORCH_V.so"
if [ -f "$PRE" ] && ! ls fused_resnet/_C*.so >/dev/null 2>&1; then
  if [ "$(cat "$PRE.digest" 2>/dev/null)" = "$(python3 -c "from fused_resnet import _sources; print(_sources.digest())")" ]; then
    cp "$PRE" fused_resnet/_C.so
  else
    echo "prebuilt $PRE: built from other sources than this tree's; building instead" | tee -a "$OUT_DIR/suite.log"
  fi
fi
export PYTHONDONTWRITEBYTECODE=1
export MAX_JOBS=${MAX_JOBS:-16}
# A copy of the tree without git history cannot name its commit: pass FUSED_RESNET_GIT_SHA=<sha>.
export FUSED_RESNET_GIT_SHA=${FUSED_RESNET_GIT_SHA:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}

bench() {  # bench NAME ARGS... : one `python -m fused_resnet bench` call into $RAW/NAME.json
  local name=$1; shift
  say "bench $name: $*"
  timeout $(( $(left) > 20 ? $(left) - 10 : 10 )) python3 -m fused_resnet bench "$@" --out "$RAW/$name" \
    > "$RAW/$name.log" 2>&1
  local rc=$?
  say "$name exit $rc"
  grep -E "^(provider|-{5}|torch|fused|compile|optimized|timm|conv|eager|triton|cuda|  .*failed)|auto meets|over target" \
    "$RAW/$name.log" >> "$OUT_DIR/suite.log"
  [ "$rc" = 0 ] || tail -n 15 "$RAW/$name.log" >> "$OUT_DIR/suite.log"
}
gpu_tests() {  # gpu_tests NAME TIMEOUT_S PYTEST_K
  say "GPU tests $1 (-k '$3')"
  timeout "$2" python3 -m pytest -q --maxfail=3 --tb=short -m gpu tests -p no:cacheprovider -rf -k "$3" \
    > "$RAW/tests_$1.log" 2>&1
  say "GPU tests $1 exit $? : $(tail -n 1 "$RAW/tests_$1.log")"
}

if want build 0; then
  say "info"
  python3 -m fused_resnet info 2>&1 | tee -a "$OUT_DIR/suite.log"
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv \
    2>&1 | tee -a "$OUT_DIR/suite.log"
  echo "git: $FUSED_RESNET_GIT_SHA" | tee -a "$OUT_DIR/suite.log"
  t0=$(date +%s)
  if ls fused_resnet/_C*.so >/dev/null 2>&1; then
    # A library built ahead for this machine's torch (see benchmarks/README.md): no build here. If it
    # does not load, status() says why and JIT-builds, as it would for a user.
    say "CUDA extension: prebuilt $(ls fused_resnet/_C*.so | head -n 1): loading it"
    python3 -c "import fused_resnet._ext as e; print(e.status())" > "$RAW/ext_build.log" 2>&1
    say "extension: $(tail -n 1 "$RAW/ext_build.log") ($(( $(date +%s) - t0 )) s)"
  else
    say "CUDA extension: JIT build, $MAX_JOBS jobs (sm_80 + sm_90a kernels)"
    python3 -c "import fused_resnet._ext as e; print('built', e.build(verbose=True))" > "$RAW/ext_build.log" 2>&1
    say "extension build exit $? in $(( $(date +%s) - t0 )) s"
  fi
  grep -E "ptxas info *: Used|spill stores|error" "$RAW/ext_build.log" | sed 's/^ *//; s/, [0-9]* bytes cmem.*//' \
    | sort | uniq -c | head -n 40 >> "$OUT_DIR/suite.log"
fi

# 1. Hopper kernels and measured tactics (the product).
# The Hopper kernels first, alone: pytest runs a file in order, and the Triton/cuDNN class tests
# before them in tests/test_gpu.py (236 cases, Triton compiles) could eat the whole timeout.
if want kernels 200; then
  gpu_tests sm90 90 "sm90"
  gpu_tests tactics 100 "eager_tactics or conv_classes"
fi
if want tune 180; then
  TB=$(( $(left) * 30 / 100 ))
  say "tune resnet50 fp16 batch 256,32 (budget ${TB} s)"
  timeout $(( TB + 60 )) python3 -m fused_resnet tune --model resnet50 --batch 256,32 --dtype fp16 --runs 10 \
    --budget-s "$TB" > "$RAW/tune.log" 2>&1
  say "tune exit $? : $(tail -n 1 "$RAW/tune.log")"
  cp fused_resnet/tuned/backend_*.json "$OUT_DIR/" 2>/dev/null
fi
want op 150 && bench op --level op --model resnet50 --batch 256,32 --dtype fp16 --runs 20 \
  --providers conv_alone,conv_bn_relu,fused_resnet,tactics
want model256 100 && bench model256 --model resnet50 --dtype fp16 --batch 256 --runs 20 \
  --providers torchvision_cl,compile,fused_resnet

# 2. Plan once, run many.
if want graphs 90; then
  for opt in "--drop-models" "" "--drop-models --no-empty-cache"; do
    timeout 60 python3 benchmarks/graph_check.py --providers torchvision_cl,torchscript,fused_resnet $opt \
      > "$RAW/graph_check$(echo $opt | tr -d ' -').log" 2>&1
    say "graph_check $opt exit $? : $(grep -E '^graph check|Error|illegal' "$RAW/graph_check$(echo $opt | tr -d ' -').log" | tail -n 2 | tr '\n' ' ')"
  done
  gpu_tests optimize 90 "optimize or cuda_graph"
fi
if want b1 60; then
  bench b1 --model resnet50 --dtype fp16 --batch 1 --runs 50 --providers torchscript,fused_resnet,optimized
  bench b1_graphs --model resnet50 --dtype fp16 --batch 1 --runs 50 --cuda-graphs --providers torchscript,optimized
fi

# 3. timm.
want timm 40 && bench timm --model timm/resnet50 --dtype fp16 --batch 256 --runs 20 --providers timm,fused_resnet

# Second-order measurements, as time allows.
want model32 40 && bench model32 --model resnet50 --dtype fp16 --batch 32 --runs 30 \
  --providers torchvision_cl,compile,fused_resnet
want others 90 && bench others --model resnet101,resnext50_32x4d --dtype fp16 --batch 256 --runs 10 \
  --providers compile,fused_resnet
if want b8 40; then
  bench b8 --model resnet50 --dtype fp16 --batch 8,32 --runs 30 --providers torchscript,fused_resnet,optimized
  bench b8_graphs --model resnet50 --dtype fp16 --batch 8,32 --runs 30 --cuda-graphs --providers torchscript,optimized
fi
want tests 60 && gpu_tests rest $(( $(left) - 30 )) "not sm90 and not eager_tactics and not conv_classes and not optimize"
if want memcheck 130 && command -v compute-sanitizer >/dev/null; then
  timeout 120 compute-sanitizer --tool memcheck --error-exitcode 3 python3 benchmarks/memcheck_block.py \
    > "$RAW/memcheck.log" 2>&1
  say "memcheck exit $? : $(grep -E 'ERROR SUMMARY|memcheck block|memcheck sm90' "$RAW/memcheck.log" | tr '\n' ' ')"
fi
if want ncu 120 && command -v ncu >/dev/null; then
  # Kernel-level profile of the convs auto runs at batch 256 (one timed run per shape): duration,
  # SM and memory throughput per kernel, for the slowest shapes' main loop vs epilogue question.
  say "ncu: auto's conv kernels, resnet50 fp16 batch 256"
  timeout 110 ncu --set basic --launch-skip 10 --launch-count 40 -o "$RAW/ncu" -f \
    python3 -m fused_resnet bench --level op --model resnet50 --batch 256 --dtype fp16 --providers fused_resnet \
    --runs 1 > "$RAW/ncu.log" 2>&1
  say "ncu exit $?"
  ncu --import "$RAW/ncu.ncu-rep" --page details --csv > "$OUT_DIR/ncu_details.csv" 2>/dev/null
fi
want compile_max 200 && bench compile_max --model resnet50 --dtype fp16 --batch 256 --runs 20 \
  --providers compile_max,fused_resnet

python3 benchmarks/merge_results.py "$OUT_DIR/results" "$RAW"/*.json >> "$OUT_DIR/suite.log" 2>&1
say "done"
