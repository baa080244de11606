"""The GPU suite: every GPU check of the open work in one command that fits one short window.

    bash benchmarks/gpu_suite.sh OUT_DIR [--only PHASES] [--skip PHASES] [--with OPTIONAL] [--budget-s N]
    bash benchmarks/gpu_suite.sh --dry-run OUT_DIR      (on a CPU: every phase's commands, tiny, no timing)

The GPU machine comes in short windows (minutes, each command at most 10 of them, a few files back),
so the suite:
- runs the phases in order of weight, each in its own processes under a hard cap (its guard), and
  skips a phase whose cap no longer fits the budget (default 560 s: with the machine's start, one
  10-minute command);
- prints its plan first: each phase's predicted seconds (from the committed GPU logs, see
  benchmarks/NOTES.md) and the total, as `planned device seconds: N`;
- packs OUT_DIR after every phase, so a run killed at any point keeps every finished phase:
  suite.log (the summary), raw.tar.gz (every log and bench JSON), results.json/.csv (merged bench
  rows) and this GPU's tactic table (backend_<gpu>.json, written by the tune phase and used by every
  phase after it). At most 8 files.
- takes the library prebuilt for the GPU machine's torch along (`make gpu-prebuild`; used only when
  its source digest matches this tree's) and installs it before the first phase, so every phase
  loads it; else the build phase JIT-builds it under its cap from the carried CUTLASS headers and
  the phases after it load that build. No other phase ever builds (FUSED_RESNET_JIT=0).
- exits 0 only when every principal phase ran and no step failed (1 otherwise), and says which.
- keeps a faulting Hopper config out of tune and the op bench: sm90_health.py runs every config
  once; the ones not reported ok go into FUSED_RESNET_SM90_EXCLUDE for the later phases.

--dry-run first copies exactly what a window carries (tracked files and the carry paths, see
benchmarks/gpu_window.py) into a scratch tree, prints the device command, the carry and its bytes,
checks every csrc/ translation unit against the carried CUTLASS headers alone ("jit headers: ok"),
then runs from that copy every phase on the CPU with stand-ins at tiny sizes (bench: resnet18 32x32
batch 1 on CPU; pytest: --collect-only of each selection, which must not be empty; GPU-only
programs: their argument parsing), packs exactly as a real run would, and checks what would come
back.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field

import gpu_window

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
MAX_FILES = 8  # files that come back from the GPU machine
DEFAULT_BUDGET_S = 560  # one 10-minute command, less the machine's start (1-2 minutes)


@dataclass
class Step:
    kind: str  # "bench", "tune", "pytest", "script", "info", "build"
    name: str
    args: list = field(default_factory=list)
    env: dict = field(default_factory=dict)


@dataclass
class Phase:
    name: str
    predict_s: int  # expected seconds on the GPU machine, from the committed logs (NOTES.md)
    cap_s: int  # hard limit for the whole phase: its processes are killed past it
    what: str
    steps: list
    optional: bool = False  # only with --with NAME (a second window): sanitizer, ncu, max-autotune


def _bench(name, *args):
    return Step("bench", name, list(args))


R50 = ["--model", "resnet50", "--dtype", "fp16"]

# Predicted seconds: h100-run1/2 and h200-run1..3 suite logs (model bench at batch 256: 14-20 s;
# batch 1: 12-15 s; with torch.compile: 35-37 s; GPU test selections: 27-140 s, now with on-device
# comparisons; tune of 24 shapes x up to 11 tactics, capped by its own --budget-s), each plus ~8 s of
# Python and torch start per process.
PHASES = [
    Phase("build", 25, 300, "load the prebuilt CUDA extension (JIT-build under this cap if it does not match)",
          [Step("build", "ext_build")]),
    Phase("info", 15, 40, "versions, GPU, backends (FUSED_RESNET_JIT=0: reports, never builds)",
          [Step("info", "info", env={"FUSED_RESNET_JIT": "0"})]),
    Phase("sm90", 75, 110, "Hopper kernels alone: every config once (health), then their GPU tests "
                           "(the registry's sm90 cases included)",
          [Step("script", "sm90_health", ["benchmarks/sm90_health.py"], env={"CUDA_LAUNCH_BLOCKING": "1"}),
           Step("pytest", "sm90", ["sm90"])]),
    Phase("nan", 30, 60, "every registered eager/CUTLASS sm80 tactic vs float64, NaN kept where torch.relu keeps it "
                         "(sm90 tactics run in the sm90 phase; Triton's JIT compiles do not fit the window: "
                         "its conv classes run in the tests phase)",
          [Step("pytest", "nan", ["every_tactic_on_gpu and not triton and not sm90"])]),
    Phase("tune", 130, 160, "every tactic per ResNet-50 fp16 conv shape, batch 256 and 32 -> this GPU's table",
          [Step("tune", "tune", R50[:2] + ["--batch", "256,32", "--dtype", "fp16", "--runs", "10",
                                          "--budget-s", "100"])]),
    Phase("op", 60, 90, "per conv shape: cuDNN's bare conv vs the op auto runs vs every tactic, batch 256 and 32",
          [_bench("op", "--level", "op", *R50, "--batch", "256,32", "--runs", "20",
                  "--providers", "conv_alone,conv_bn_relu,fused_resnet,tactics")]),
    Phase("model256", 50, 80, "whole model, batch 256: channels_last eager, torch.compile (freezing), fused",
          [_bench("model256", *R50, "--batch", "256", "--runs", "20",
                  "--providers", "torchvision_cl,compile,fused_resnet")]),
    Phase("b1", 35, 60, "batch 1: TorchScript vs fused without graphs; with CUDA graphs vs optimize()",
          [_bench("b1", *R50, "--batch", "1", "--runs", "50", "--providers", "torchscript,fused_resnet,optimized"),
           _bench("b1_graphs", *R50, "--batch", "1", "--runs", "50", "--cuda-graphs",
                  "--providers", "torchscript,optimized")]),
    Phase("graphs", 60, 90, "the CUDA-graph fault experiment (dropped/kept models, empty_cache), optimize() tests",
          [Step("script", "graph_check_drop", ["benchmarks/graph_check.py", "--providers",
                                               "torchvision_cl,torchscript,fused_resnet", "--drop-models"]),
           Step("script", "graph_check_keep", ["benchmarks/graph_check.py", "--providers",
                                               "torchvision_cl,torchscript,fused_resnet"]),
           Step("script", "graph_check_nocache", ["benchmarks/graph_check.py", "--providers",
                                                  "torchvision_cl,torchscript,fused_resnet", "--drop-models",
                                                  "--no-empty-cache"]),
           Step("pytest", "optimize", ["optimize or cuda_graph"])]),
    # Second-order, as time allows (each skipped when its cap no longer fits).
    Phase("tests", 90, 120, "the other GPU tests (tactics, conv classes, backends, timm, workflows on CUDA)",
          [Step("pytest", "rest", ["not sm90 and not optimize and not cuda_graph and not every_tactic_on_gpu"])]),
    Phase("timm", 30, 50, "timm resnet50 fp16 batch 256: timm eager vs fused",
          [_bench("timm", "--model", "timm/resnet50", "--dtype", "fp16", "--batch", "256", "--runs", "20",
                  "--providers", "timm,fused_resnet")]),
    Phase("model32", 45, 70, "whole model, batch 32",
          [_bench("model32", *R50, "--batch", "32", "--runs", "30", "--providers", "torchvision_cl,compile,fused_resnet")]),
    Phase("others", 80, 110, "ResNet-101 and ResNeXt-50 batch 256 vs torch.compile",
          [_bench("others", "--model", "resnet101,resnext50_32x4d", "--dtype", "fp16", "--batch", "256", "--runs", "10",
                  "--providers", "compile,fused_resnet")]),
    Phase("memcheck", 100, 130, "compute-sanitizer memcheck: a fused block per backend, every sm90 config",
          [Step("script", "memcheck", ["benchmarks/memcheck_block.py"])], optional=True),
    Phase("ncu", 100, 120, "Nsight Compute: auto's conv kernels at batch 256 (slowest shapes)",
          [Step("script", "ncu", ["-m", "fused_resnet", "bench", "--level", "op", *R50, "--batch", "256",
                                  "--providers", "fused_resnet", "--runs", "1"])], optional=True),
    Phase("compile_max", 200, 240, "torch.compile max-autotune, batch 256",
          [_bench("compile_max", *R50, "--batch", "256", "--runs", "20", "--providers", "compile_max,fused_resnet")],
          optional=True),
]
PRINCIPAL = ("build", "info", "sm90", "nan", "tune", "op", "model256", "b1", "graphs")


class Suite:
    def __init__(self, out_dir: str, budget_s: int, dry: bool):
        self.out = os.path.abspath(out_dir)
        os.makedirs(self.out, exist_ok=True)
        # Raw logs live outside OUT_DIR (only the packed archive comes back).
        self.raw = os.path.join(tempfile.mkdtemp(prefix="gpu_suite_"), "raw")
        os.makedirs(self.raw)
        self.budget, self.dry, self.start = budget_s, dry, time.monotonic()
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = ROOT + (os.pathsep + self.env["PYTHONPATH"] if self.env.get("PYTHONPATH") else "")
        self.env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        self.env.setdefault("MAX_JOBS", str(os.cpu_count() or 8))
        self.env["FUSED_RESNET_GIT_SHA"] = gpu_window.git_sha(ROOT)  # (.git does not travel: passed in)
        cutlass = gpu_window.carried_include(ROOT)
        if os.path.isdir(cutlass):  # carried headers for the JIT fallback (the GPU machine has no wheel)
            self.env.setdefault("CUTLASS_INCLUDE", cutlass)
        self.env["FUSED_RESNET_JIT"] = "0"  # only the build phase builds (Suite.build)
        self.log_path = os.path.join(self.out, "suite.log")
        open(self.log_path, "w").close()

    # --- bookkeeping -------------------------------------------------------------------------------
    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def say(self, msg: str) -> None:
        line = f"[gpu_suite +{time.monotonic() - self.start:.0f}s] {msg}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def run(self, argv: list, log: str, timeout: float, env: dict = None) -> int:
        """Run argv in its own process group; kill the whole group past ``timeout`` (a hung pytest exit
        or an inductor worker cannot outlive its phase). Returns the exit status (124 on timeout)."""
        with open(os.path.join(self.raw, log), "ab") as f:
            f.write(f"$ {shlex.join(argv)}\n".encode())
            f.flush()
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**self.env, **(env or {})})
            try:
                return proc.wait(timeout=max(timeout, 1))
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                f.write(f"\n[gpu_suite] killed after {timeout:.0f} s\n".encode())
                return 124

    def tail(self, log: str, n: int = 1) -> str:
        try:
            with open(os.path.join(self.raw, log), errors="replace") as f:
                lines = [ln.rstrip() for ln in f if ln.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def pack(self) -> None:
        """OUT_DIR as it would come back now: suite.log, raw.tar.gz, merged results, this GPU's table."""
        tmp = os.path.join(self.out, "raw.tar.gz.tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.raw, arcname="raw")
        os.replace(tmp, os.path.join(self.out, "raw.tar.gz"))
        jsons = sorted(glob.glob(os.path.join(self.raw, "*.json")))
        if jsons:
            rows = []
            for p in jsons:
                try:
                    with open(p) as f:
                        rows += json.load(f)
                except (OSError, ValueError):
                    continue
            with open(os.path.join(self.out, "results.json"), "w") as f:
                json.dump(rows, f, indent=1)
        files = [p for p in glob.glob(os.path.join(self.out, "**"), recursive=True) if os.path.isfile(p)]
        if len(files) > MAX_FILES:
            self.say(f"WARNING: {len(files)} files in OUT_DIR, only {MAX_FILES} come back")

    # --- steps -------------------------------------------------------------------------------------
    def step(self, phase: Phase, st: Step, deadline: float) -> int:
        # (A dry run on a slow CPU is not held to the device budget, only to each phase's cap.)
        timeout = max(1.0, deadline - time.monotonic() if self.dry else min(deadline - time.monotonic(), self.left()))
        log = f"{st.name}.log"
        if st.kind == "build":
            return self.build(timeout, log)
        if st.kind == "info":
            return self.run([PY, "-m", "fused_resnet", "info"], log, timeout, st.env)
        if st.kind == "pytest":
            sel = st.args[0]
            argv = [PY, "-m", "pytest", "-q", "--maxfail=3", "--tb=short", "-m", "gpu", "tests", "-p",
                    "no:cacheprovider", "-rf", "-k", sel]
            if self.dry:
                argv.insert(3, "--collect-only")
            rc = self.run(argv, log, timeout, st.env)
            if self.dry and rc == 0 and "no tests collected" in self.tail(log, 3):
                rc = 5
            return rc
        if st.kind in ("bench", "tune"):
            argv = [PY, "-m", "fused_resnet", st.kind, *st.args]
            if st.kind == "tune":
                argv += ["--out", self.out]
            else:
                argv += ["--out", os.path.join(self.raw, st.name)]
            if self.dry:
                rc = self.parse_check(st.kind, argv[4:], log)
                if rc or st.kind == "tune":  # tune measures GPUs only: its arguments are what can be checked
                    return rc
                argv = [PY, "-m", "fused_resnet", "bench", *_cpu_stand_in(st.args),
                        "--out", os.path.join(self.raw, st.name)]
            return self.run(argv, log, timeout, st.env)
        if st.kind == "script":
            argv = [PY, *st.args]
            if phase.name == "memcheck" and not self.dry:
                argv = ["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "3", *argv]
            if phase.name == "ncu" and not self.dry:
                # auto's conv kernels only (no cuDNN benchmark trials, no peak measurement), clocks as they run
                argv = ["ncu", "--set", "basic", "--clock-control", "none", "--kernel-name",
                        "regex:conv|Conv|gemm|Gemm|cutlass|fused", "--launch-count", "40",
                        "-o", os.path.join(self.raw, "ncu"), "-f", *argv]
            if self.dry:
                argv = [PY, *st.args[:1], "--help"] if st.args[0].endswith(".py") else [PY, *st.args[:2], "--help"]
            return self.run(argv, log, timeout, st.env)
        raise ValueError(st.kind)

    def parse_check(self, cmd: str, argv: list, log: str) -> int:
        """The real run's arguments must parse (flags, providers) — what a dry run can check of a GPU command."""
        code = ("import sys; from fused_resnet.__main__ import build_parser; from fused_resnet.bench import "
                "unknown_providers; a = build_parser().parse_args(sys.argv[1:]); "
                "bad = unknown_providers(a.providers.split(',')) if getattr(a, 'providers', None) else []; "
                "print('arguments ok' if not bad else f'unknown providers {bad}'); sys.exit(2 if bad else 0)")
        return self.run([PY, "-c", code, cmd, *argv], log, 60)

    def install_prebuilt(self) -> None:
        """Before the first phase: the prebuilt library whose recorded source digest is this tree's ->
        fused_resnet/_C.so, which every phase's processes load (no torch import here: no time spent)."""
        digest = runpy.run_path(os.path.join(ROOT, "fused_resnet", "_sources.py"))["digest"]()
        libs = sorted(glob.glob(os.path.join(ROOT, gpu_window.PREBUILT, "_C-torch*.so")))
        for lib in libs:
            try:
                with open(lib + ".digest") as f:
                    recorded = f.read().strip()
            except OSError:
                continue
            if recorded == digest:
                shutil.copy(lib, os.path.join(ROOT, "fused_resnet", "_C.so"))
                self.say(f"prebuilt {os.path.basename(lib)} matches this tree's sources: installed for every phase")
                return
        self.say(f"prebuilt {', '.join(map(os.path.basename, libs))} built from other sources" if libs else
                 "no prebuilt library (make gpu-prebuild)")
        self.say("  the build phase JIT-builds under its cap; later phases load that build")

    def build(self, timeout: float, log: str) -> int:
        """Load the installed library; if it does not load (or there is none), JIT-build it under the
        cap from the carried headers and install the result for the phases after this one."""
        if self.dry:
            return self.run([PY, "-c", "import fused_resnet._ext as e; print(e.status())"], log, timeout)
        code = ("import shutil, sys; import fused_resnet._ext as e; ok, why = e.status(); print(ok, why); "
                "from torch.utils import cpp_extension as c; "
                "ok and 'JIT-built' in why and shutil.copy(c._get_build_directory('fused_resnet_cuda', False) "
                "+ '/fused_resnet_cuda.so', 'fused_resnet/_C.so'); sys.exit(0 if ok else 1)")
        return self.run([PY, "-c", code], log, timeout, {"FUSED_RESNET_JIT": "1"})

    # --- the run -----------------------------------------------------------------------------------
    def plan(self, phases: list) -> int:
        total = sum(p.predict_s for p in phases)
        self.say(f"plan ({'dry run on the CPU' if self.dry else 'GPU'}), budget {self.budget} s:")
        t = 0
        for p in phases:
            t += p.predict_s
            self.say(f"  {p.name:11s} ~{p.predict_s:4d} s (cap {p.cap_s:3d} s, by +{t:4d} s)  {p.what}")
        principal = sum(p.predict_s for p in phases if p.name in PRINCIPAL)
        self.say(f"planned device seconds: {principal} (principal phases: {', '.join(PRINCIPAL)}); "
                 f"all selected phases: {total}")
        return principal

    def execute(self, phases: list) -> dict:
        """Run the phases; returns {phase name: failed steps} for the phases that ran."""
        ran = {}
        self.install_prebuilt()
        for phase in phases:
            if phase.cap_s > self.left() and not self.dry:
                self.say(f"phase {phase.name} skipped: {self.left():.0f} s left, its cap is {phase.cap_s} s")
                continue
            failures = ran[phase.name] = 0
            t0 = time.monotonic()
            deadline = t0 + phase.cap_s
            self.say(f"phase {phase.name}: {phase.what}")
            for st in phase.steps:
                rc = self.step(phase, st, deadline)
                self.say(f"  {st.name} exit {rc}: {self.tail(f'{st.name}.log')[:300]}")
                failures = ran[phase.name] = failures + (rc != 0)
                if st.name == "sm90_health":
                    self.exclude_failed_sm90()
                if time.monotonic() > deadline:
                    self.say(f"  phase {phase.name} reached its cap ({phase.cap_s} s)")
                    break
            if phase.name == "tune":
                tables = glob.glob(os.path.join(self.out, "backend_*.json"))
                if tables:  # the phases after this one follow this GPU's fresh table
                    self.env["FUSED_RESNET_TABLE"] = tables[0]
            self.say(f"phase {phase.name} done in {time.monotonic() - t0:.0f} s (predicted {phase.predict_s})")
            self.pack()
        return ran

    def exclude_failed_sm90(self) -> None:
        lines = self.tail("sm90_health.log", 10_000).split(" | ")
        if self.dry or any(ln.startswith("sm90 health:") for ln in lines):  # no sm_90 GPU or no library
            return
        ok = {ln.split()[1].rstrip(":") for ln in lines if ln.startswith("ok ")}
        names = [c.name for c in runpy.run_path(os.path.join(ROOT, "fused_resnet", "_sm90_configs.py"))["CONFIGS"]]
        excluded = [n for n in names if n not in ok]
        if excluded:
            self.env["FUSED_RESNET_SM90_EXCLUDE"] = ",".join(excluded)
            self.say(f"  sm90 configs excluded from tune and op (failed or not reached): {', '.join(excluded)}")


def _kill_group(proc) -> None:
    """SIGTERM the process group, a few seconds' grace, then SIGKILL whatever of it is left (the
    leader may exit while its children, e.g. compile workers, live on)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if sig == signal.SIGTERM:
            time.sleep(2)


def _cpu_stand_in(args: list) -> list:
    """A bench call's CPU stand-in: same level, resnet18 at 32x32, batch 1, one run, CPU providers."""
    flags = [a for a in args if a != "--cuda-graphs"]  # an error on a CPU
    opts = dict(zip(flags[::2], flags[1::2]))
    level = opts.get("--level", "model")
    timm = opts.get("--model", "").startswith("timm/")
    providers = ("conv_alone,fused_resnet" if level == "op" else
                 "timm,fused_resnet" if timm else "torchvision,fused_resnet")
    return ["--device", "cpu", "--level", level, "--model", "timm/resnet18" if timm else "resnet18",
            "--image-size", "32", "--batch", "1", "--dtype", "fp32", "--runs", "1", "--providers", providers]


def check_out_dir(out: str) -> list:
    """Problems with what would come back: at most 8 files, 2 folders deep, each under 16 MiB."""
    problems = []
    files = [p for p in glob.glob(os.path.join(out, "**"), recursive=True) if os.path.isfile(p)]
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files (at most {MAX_FILES} come back)")
    for p in files:
        rel = os.path.relpath(p, out)
        if rel.count(os.sep) > 2:
            problems.append(f"{rel}: more than 2 folders deep")
        if os.path.getsize(p) >= 16 * 2 ** 20:
            problems.append(f"{rel}: {os.path.getsize(p) / 2 ** 20:.1f} MiB (under 16 MiB come back)")
    return problems


def select(only: str, skip: str, with_: str) -> list:
    names = {p.name for p in PHASES}
    for arg in (only, skip, with_):
        unknown = set(filter(None, arg.split(","))) - names
        if unknown:
            raise SystemExit(f"gpu_suite: unknown phase(s) {', '.join(sorted(unknown))}; phases: {', '.join(p.name for p in PHASES)}")
    chosen = []
    for p in PHASES:
        if only and p.name not in only.split(","):
            continue
        if p.name in skip.split(","):
            continue
        if p.optional and p.name not in with_.split(",") and p.name not in only.split(","):
            continue
        chosen.append(p)
    return chosen


def rehearse_window(argv: list, out_dir: str) -> int:
    """The dry run's first half: copy exactly what a window carries into a scratch tree (staging the
    CUTLASS headers if this tree has none yet), print the device command, the carry and its bytes,
    check the JIT build's headers there, then run the rehearsal from the copy (no .git: the sha is
    passed in as on the GPU machine). Returns the rehearsal's exit status."""
    if not os.path.isdir(gpu_window.carried_include(ROOT)):
        print(f"staging the CUTLASS headers into {gpu_window.HEADERS} (make gpu-prebuild does this too) ...",
              flush=True)
        gpu_window.stage_headers(ROOT)
    rc = gpu_window.plan(ROOT)
    scratch = tempfile.mkdtemp(prefix="gpu_window_")
    try:
        t0 = time.monotonic()
        nbytes = gpu_window.scratch_copy(scratch, ROOT)
        print(f"scratch tree: {nbytes} bytes copied in {time.monotonic() - t0:.0f} s (tracked files + carry)",
              flush=True)
        t0 = time.monotonic()
        n, errors = gpu_window.check_headers(scratch, jobs=os.cpu_count() or 2)
        for e in errors:
            print(f"jit headers: FAIL {e}")
        print(f"jit headers: {'ok' if not errors else 'FAIL'} ({n} translation units, "
              f"{time.monotonic() - t0:.0f} s)", flush=True)
        env = {**os.environ, "FUSED_RESNET_GIT_SHA": gpu_window.git_sha(ROOT)}
        inner = [PY, os.path.join(scratch, "benchmarks", "gpu_suite.py"), "--in-window", *argv,
                 os.path.abspath(out_dir)]
        rc_inner = subprocess.run(inner, cwd=scratch, env=env).returncode
        return 1 if rc or errors or rc_inner else 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_suite", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("out_dir", help='where the results go: "$OUT" on the GPU machine (only it comes back: '
                                    "at most 8 files)")
    ap.add_argument("--dry-run", action="store_true", help="on a CPU: every phase's commands, tiny, no timing, "
                                                           "from a copy of what a window carries")
    ap.add_argument("--in-window", action="store_true", help=argparse.SUPPRESS)  # the dry run's inner run
    ap.add_argument("--only", default="", help="comma list of phases to run")
    ap.add_argument("--skip", default="", help="comma list of phases to leave out")
    ap.add_argument("--with", dest="with_", default="", help="optional phases to add: memcheck, ncu, compile_max")
    ap.add_argument("--budget-s", type=int, default=int(os.environ.get("SUITE_BUDGET_S", DEFAULT_BUDGET_S)),
                    help=f"device seconds for the whole run (default {DEFAULT_BUDGET_S})")
    args = ap.parse_args(argv)
    phases = select(args.only, args.skip, args.with_)
    if args.dry_run and not args.in_window:
        passed = [a for a in (argv if argv is not None else sys.argv[1:]) if a != args.out_dir]
        return rehearse_window(passed, args.out_dir)
    suite = Suite(args.out_dir, args.budget_s, args.dry_run)
    planned = suite.plan(phases)
    ran = suite.execute(phases)
    suite.pack()
    problems = check_out_dir(suite.out)
    for p in problems:
        suite.say(f"OUT_DIR: {p}")
    principal = [p.name for p in phases if p.name in PRINCIPAL]
    missing = [n for n in principal if n not in ran]
    failed = [n for n, f in ran.items() if f]
    suite.say(f"done: {sum(ran.values())} step(s) failed; OUT_DIR holds {', '.join(sorted(os.listdir(suite.out)))}")
    suite.say(f"principal phases: {len(principal) - len(missing)} of {len(principal)} ran"
              + (f"; not run: {', '.join(missing)}" if missing else "")
              + (f"; phases with failed steps: {', '.join(failed)}" if failed else ""))
    if args.dry_run and planned > DEFAULT_BUDGET_S:
        # The dry run's verdict: every command ran (or parsed), the plan fits, what comes back fits.
        suite.say(f"DRY RUN FAIL: planned {planned} s > {DEFAULT_BUDGET_S} s")
        return 1
    return 1 if missing or failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
