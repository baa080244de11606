#!/usr/bin/env bash
# The GPU suite: ONE command for a lent GPU machine with no network (benchmarks/README.md, "GPU suite").
#
#   bash benchmarks/gpu_suite.sh OUT_DIR [--only PHASES] [--skip PHASES] [--with memcheck,ncu,compile_max]
#   bash benchmarks/gpu_suite.sh --dry-run OUT_DIR     # rehearsal on a CPU: every phase, tiny, no timing
#
# Phases, their predicted seconds, caps and what comes back: benchmarks/gpu_suite.py (its --help).
set -u
cd "$(dirname "$0")/.."
exec python3 benchmarks/gpu_suite.py "$@"
