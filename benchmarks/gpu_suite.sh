#!/usr/bin/env bash
# The GPU suite: ONE command for a GPU machine with no network (see benchmarks/README.md).
#
#   bash benchmarks/gpu_suite.sh OUT_DIR [--tune] [--skip-tests] [--tests PYTEST_K_EXPR] [--only PHASES]
#
# --only takes a comma list of phases (default all): memcheck, graphs, tests, op, model_b256, model_b1,
# graphs_b1, compile_b256 (--tune adds the tune phase). For a short rerun of what a first run lacked.
#
# Installs nothing from the network: the project runs from this working tree (PYTHONPATH), wheels
# for anything missing may sit in .whl/ beside it. Phases, each guarded by the time left of
# SUITE_BUDGET_S (default 450 s) so the suite ends inside ~8 minutes and a cut-short run still
# leaves its results: info -> CUDA extension JIT build -> compute-sanitizer memcheck -> CUDA-graph check
# (benchmarks/graph_check.py; rerun under memcheck if it fails) -> GPU tests ->
# [--tune: autotune table for resnet50 fp16, used by what follows] -> per-shape op benchmark
# (resnet50 fp16, batch 32/256) -> model benchmark (resnet50 fp16: batch 256; batch 1 with and without
# CUDA graphs; torch.compile at batch 256 if time is left). Writes to OUT_DIR: suite.log, gpu_tests.log, memcheck.log,
# graph_check.log (graph_memcheck.log),
# results.json, results.csv, results.png, backend_<gpu>.json (faster backend per conv shape), and
# with --tune triton_<gpu>.json. Safe to rerun.
set -u
OUT_DIR=${1:?usage: gpu_suite.sh OUT_DIR [--tune] [--skip-tests] [--tests PYTEST_K_EXPR] [--only PHASES]}
shift
TUNE=0; TESTS=1; TEST_K=""; ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tune) TUNE=1 ;;
    --skip-tests) TESTS=0 ;;
    --tests) TEST_K=$2; shift ;;
    --only) ONLY=",$2,"; shift ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/.."
mkdir -p "$OUT_DIR"
RAW=$(mktemp -d)
START=$(date +%s)
BUDGET=${SUITE_BUDGET_S:-450}
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
want() { [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]]; }  # is phase $1 selected?
say() { echo "[gpu_suite +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT_DIR/suite.log"; }
: > "$OUT_DIR/suite.log"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/fused_resnet_site .whl/*.whl && \
    export PYTHONPATH=/tmp/fused_resnet_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONDONTWRITEBYTECODE=1

say "info"
python3 -m fused_resnet info 2>&1 | tee -a "$OUT_DIR/suite.log"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv 2>&1 | tee -a "$OUT_DIR/suite.log"
# A copy of the tree without git history cannot name its commit: pass FUSED_RESNET_GIT_SHA=<sha>.
export FUSED_RESNET_GIT_SHA=${FUSED_RESNET_GIT_SHA:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
echo "git: $FUSED_RESNET_GIT_SHA" | tee -a "$OUT_DIR/suite.log"

say "CUDA extension: JIT build (nvcc, CUTLASS headers from the carried nvidia-cutlass wheel)"
python3 -c "import fused_resnet._ext as e; print('built', e.build(verbose=True))" > "$RAW/ext_build.log" 2>&1
say "extension build exit $?"
grep -E "ptxas info *: Used|spill stores|error|built" "$RAW/ext_build.log" | sed 's/^ *//; s/, [0-9]* bytes cmem.*//' \
  | sort | uniq -c | head -n 30 >> "$OUT_DIR/suite.log"

if ! want memcheck; then
  :
elif command -v compute-sanitizer >/dev/null; then
  say "compute-sanitizer memcheck on one fused Bottleneck"
  timeout 120 compute-sanitizer --tool memcheck --error-exitcode 3 python3 benchmarks/memcheck_block.py \
    > "$OUT_DIR/memcheck.log" 2>&1
  say "memcheck exit $? : $(grep -E 'ERROR SUMMARY|memcheck block' "$OUT_DIR/memcheck.log" | tr '\n' ' ')"
else
  say "compute-sanitizer not found: memcheck skipped"
fi

if want graphs; then
  # All providers but TorchScript (h100-run1: its capture broke an earlier torchvision graph).
  say "CUDA graphs: capture + replay of each benchmark provider, batch 1 (benchmarks/graph_check.py)"
  timeout 240 python3 benchmarks/graph_check.py --providers torchvision,torchvision_cl,fused_triton,fused_cuda,fused_resnet \
    > "$OUT_DIR/graph_check.log" 2>&1
  rc=$?
  say "graph check exit $rc : $(grep -E '^graph check|^\[|DIFFERS|Error' "$OUT_DIR/graph_check.log" | tail -n 3 | tr '\n' ' ')"
  # Torch-only attempt at the same fault (no fused_resnet import; did not fault in h100-run2).
  for opt in "" --own-stream; do
    timeout 90 python3 benchmarks/repro_graph_fault.py $opt >> "$OUT_DIR/graph_check.log" 2>&1
    say "repro_graph_fault.py $opt exit $? : $(grep -E 'ok$|repro|Error' "$OUT_DIR/graph_check.log" | tail -n 2 | tr '\n' ' ')"
  done
fi

if [ "$TESTS" = 1 ] && want tests; then
  say "GPU tests (pytest -m gpu), $(left) s left"
  timeout $(( $(left) * 45 / 100 )) python3 -m pytest -v -s --tb=short -m gpu tests -p no:cacheprovider -rf \
    ${TEST_K:+-k "$TEST_K"} \
    > "$OUT_DIR/gpu_tests.log" 2>&1
  say "GPU tests exit $? : $(tail -n 1 "$OUT_DIR/gpu_tests.log")"
fi

if [ "$TUNE" = 1 ]; then
  # Tuned configs go into the working tree's table (so the benchmarks below use them) and to OUT_DIR.
  TB=$(( $(left) * 40 / 100 ))
  say "autotune resnet50 fp16 batch 256,32,1 (budget ${TB} s)"
  timeout $(( TB + 60 )) python3 benchmarks/tune.py --model resnet50 --batch 256,32,1 --dtype fp16 \
    --budget-s "$TB" > "$RAW/tune.log" 2>&1
  say "tune exit $?: $(tail -n 1 "$RAW/tune.log")"
  grep -c "autotuning" "$RAW/tune.log" | xargs echo "shapes tuned:" >> "$OUT_DIR/suite.log"
  cp fused_resnet/tuned/triton_*.json "$OUT_DIR/" 2>/dev/null
fi

if [ "$(left)" -gt 120 ] && want op; then
  say "op benchmark: resnet50 conv shapes, fp16, batch 1, 32 and 256"
  timeout $(( $(left) - 90 )) python3 -m fused_resnet bench --level op --model resnet50 --batch 1,32,256 --dtype fp16 \
    --providers conv_alone,conv_bn_relu,cudnn_fused,fused_triton,fused_cuda --runs 20 --out "$RAW/op" > "$RAW/op.log" 2>&1
  say "op benchmark exit $?"; grep -E "^(provider|-{5}|conv|cudnn|fused)" "$RAW/op.log" >> "$OUT_DIR/suite.log"
  python3 benchmarks/backend_table.py "$RAW/op.json" >> "$OUT_DIR/suite.log" 2>&1  # into fused_resnet/tuned/
  cp fused_resnet/tuned/backend_*.json "$OUT_DIR/" 2>/dev/null
fi

# One bench call per setting, cheapest first, so a cut-short run keeps what it finished.
bench() {  # bench NAME MIN_LEFT_S ARGS...
  local name=$1 need=$2; shift 2
  if [ "$(left)" -gt "$need" ] && want "$name"; then
    say "model benchmark $name: $*"
    timeout $(( $(left) - 10 )) python3 -m fused_resnet bench --model resnet50 --dtype fp16 "$@" \
      --out "$RAW/$name" > "$RAW/$name.log" 2>&1
    local rc=$?
    say "$name exit $rc"; grep -E "^(provider|-{5}|torch|fused|compile|  .*failed)" "$RAW/$name.log" >> "$OUT_DIR/suite.log"
    [ "$rc" = 0 ] || tail -n 15 "$RAW/$name.log" >> "$OUT_DIR/suite.log"
  fi
}
bench model_b256 60 --batch 256 --runs 20 --providers torchvision,torchvision_cl,torchscript,fused_triton,fused_cuda,fused_resnet
bench model_b1 40 --batch 1 --runs 50 --providers torchvision,torchvision_cl,torchscript,fused_triton,fused_cuda,fused_resnet
bench graphs_b1 40 --batch 1 --runs 50 --cuda-graphs --providers torchvision,torchvision_cl,torchscript,fused_triton,fused_cuda,fused_resnet
bench compile_b256 100 --batch 256 --runs 20 --providers torchvision_cl,compile,fused_triton,fused_resnet

python3 benchmarks/merge_results.py "$OUT_DIR/results" "$RAW"/*.json >> "$OUT_DIR/suite.log" 2>&1
say "done"
tail -n 40 "$OUT_DIR/suite.log" | grep -E "^(provider|-|fused|conv|torch|compile)" | tail -n 30
