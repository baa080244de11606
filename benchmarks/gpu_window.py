"""What a GPU window receives and runs: the carry, the device command, and their rehearsal.

    python benchmarks/gpu_window.py stage-headers      the CUTLASS headers the JIT build needs -> .gpu-prebuilt/cutlass
    python benchmarks/gpu_window.py check-headers [ROOT]   every csrc/ translation unit against the carried headers alone
    python benchmarks/gpu_window.py plan               the device command, the carry paths and their bytes

A GPU window is one command of at most 10 minutes, run in a copy of the working tree (tracked files,
untracked files git does not ignore) plus at most 8 named ignored paths, 64 MiB in all; `.git` does
not travel and only files written under `$OUT` come back. So:

- the carry is `.gpu-prebuilt/` alone: the extension built ahead for the GPU machine's torch
  (`make gpu-prebuild`: `_C-torch<version>.so` and the digest of the sources it was built from) and
  the CUTLASS headers a JIT build there would need (CUTLASS's `include/` and `tools/util/include/`:
  the machine has nvcc but no nvidia-cutlass wheel). Never a venv;
- the device command writes under "$OUT" and passes the git sha in (FUSED_RESNET_GIT_SHA);
- the dry run (`gpu_suite.sh --dry-run`) copies exactly what travels into a scratch tree, checks the
  headers there (`check-headers`) and runs the suite's rehearsal from that copy.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import runpy
import shutil
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREBUILT = ".gpu-prebuilt"
CARRY = (PREBUILT,)  # ignored paths that travel with the tree (at most 8)
MAX_CARRY_PATHS = 8
MAX_TRAVEL_BYTES = 60 * 2 ** 20  # the window takes 64 MiB; keep a margin
HEADERS = os.path.join(PREBUILT, "cutlass")  # include/ and tools/util/include/, as in CUTLASS's tree
ARCHS = ("-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a")
COMMAND_TIMEOUT_S = 600


def carried_include(root: str = ROOT) -> str:
    """CUTLASS_INCLUDE for a tree that carries the headers (tools/util/include sits beside it, where
    fused_resnet._sources.include_dirs looks for it)."""
    return os.path.join(root, HEADERS, "include")


def stage_headers(root: str = ROOT) -> str:
    """Copy CUTLASS's include/ and tools/util/include/ from the nvidia-cutlass wheel into the carry."""
    import cutlass_library  # the wheel: only on the machine that prepares the carry

    src = os.path.join(os.path.dirname(cutlass_library.__file__), "source")
    dest = os.path.join(root, HEADERS)
    shutil.rmtree(dest, ignore_errors=True)
    for part in ("include", os.path.join("tools", "util", "include")):
        shutil.copytree(os.path.join(src, part), os.path.join(dest, part))
    return dest


def travelling_files(root: str = ROOT) -> list:
    """Tree-relative paths of what a window copies: git's tracked and untracked-but-not-ignored files,
    then every file under the carry paths."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True, timeout=60).stdout.decode()
    files = [p for p in out.split("\0") if p and os.path.isfile(os.path.join(root, p))]
    for carry in CARRY:
        for dirpath, _, names in os.walk(os.path.join(root, carry)):
            files += [os.path.relpath(os.path.join(dirpath, n), root) for n in names]
    return files


def carry_problems(root: str = ROOT) -> list:
    """Why the carry could not travel: too many paths, a venv inside, a path that is not ignored."""
    problems = []
    if len(CARRY) > MAX_CARRY_PATHS:
        problems.append(f"{len(CARRY)} carry paths (at most {MAX_CARRY_PATHS})")
    for carry in CARRY:
        for dirpath, _, names in os.walk(os.path.join(root, carry)):
            if "pyvenv.cfg" in names:
                problems.append(f"{os.path.relpath(dirpath, root)} is a venv: it never fits a window")
    return problems


def scratch_copy(dest: str, root: str = ROOT) -> int:
    """Copy what travels into ``dest``; returns its bytes."""
    total = 0
    for rel in travelling_files(root):
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(root, rel), target)
        total += os.path.getsize(target)
    return total


def git_sha(root: str = ROOT) -> str:
    """The tree's short sha, or FUSED_RESNET_GIT_SHA (a copy without .git: the window's tree)."""
    if os.environ.get("FUSED_RESNET_GIT_SHA"):
        return os.environ["FUSED_RESNET_GIT_SHA"]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


def device_command(sha: str) -> str:
    return f'FUSED_RESNET_GIT_SHA={sha} bash benchmarks/gpu_suite.sh "$OUT"'


def _translation_units(root: str) -> list:
    sources = runpy.run_path(os.path.join(root, "fused_resnet", "_sources.py"))
    return sources["source_files"](), sources


def check_headers(root: str = ROOT, include: str = None, jobs: int = 2, only: tuple = ()) -> tuple:
    """Preprocess every csrc/ translation unit (``only``: those whose name contains one of these), for
    each target arch, with csrc/, the carried CUTLASS headers, torch's and CUDA's own include folders
    and nothing else (no wheel): what a JIT build on the GPU machine would find. Returns (translation
    units checked, [error lines])."""
    import torch.utils.cpp_extension as cpp  # (torch's headers exist on the GPU machine)

    include = include or carried_include(root)
    tus, sources = _translation_units(root)
    tus = [tu for tu in tus if not only or any(o in tu for o in only)]
    cuda_home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    if not os.path.exists(nvcc):
        return len(tus), [f"nvcc not found at {nvcc} (set CUDA_HOME): the headers cannot be checked"]
    incs = sources["include_dirs"](include)
    base = [f"-I{d}" for d in [os.path.join(root, "csrc")] + incs[1:]]
    torch_incs = [f"-I{d}" for d in cpp.include_paths("cuda")] + [f"-I{sysconfig.get_paths()['include']}",
                                                                  f"-I{os.path.join(cuda_home, 'include')}"]
    flags = [f for f in sources["cuda_flags"]() if not f.startswith(("-Xptxas", "-gencode"))]
    cmds = []
    for tu in tus:
        path = os.path.join(root, "csrc", tu)
        if tu.endswith(".cpp"):
            cmds.append((tu, ["c++", "-M", "-std=c++17", *base, *torch_incs, path, "-o", os.devnull]))
        else:
            cmds += [(f"{tu} [{arch.split('code=')[1]}]", [nvcc, "-M", *flags, arch, *base, path, "-o", os.devnull])
                     for arch in ARCHS]

    def run(item):
        name, argv = item
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        if r.returncode:
            err = next((ln for ln in r.stderr.splitlines() if "error" in ln), r.stderr.strip()[-300:])
            return f"{name}: {err}"
        return None

    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        errors = [e for e in pool.map(run, cmds) if e]
    return len(tus), errors


def plan(root: str = ROOT) -> int:
    """Print the window's command, carry and bytes; returns 1 if it could not travel."""
    files = travelling_files(root)
    tree = sum(os.path.getsize(os.path.join(root, f)) for f in files
               if not f.startswith(tuple(c + os.sep for c in CARRY)))
    carried = sum(os.path.getsize(os.path.join(root, f)) for f in files) - tree
    print(f"device command: {device_command(git_sha(root))}   (timeout {COMMAND_TIMEOUT_S} s)")
    print(f"carry: {' '.join(CARRY)}")
    print(f"carry bytes: {tree + carried}  (tree {tree}, carried {carried}; limit {MAX_TRAVEL_BYTES})")
    lib = [f for f in files if f.startswith(PREBUILT + os.sep + "_C-torch") and f.endswith(".so")]
    print(f"prebuilt library: {', '.join(lib) if lib else 'none (make gpu-prebuild; else a JIT build of minutes)'}")
    problems = carry_problems(root) + ([f"{tree + carried} bytes travel (limit {MAX_TRAVEL_BYTES})"]
                                       if tree + carried > MAX_TRAVEL_BYTES else [])
    for p in problems:
        print(f"carry problem: {p}")
    return 1 if problems else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_window", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("stage-headers", help="copy CUTLASS's include/ and tools/util/include/ into the carry")
    chk = sub.add_parser("check-headers", help="every csrc/ translation unit against the carried headers alone")
    chk.add_argument("root", nargs="?", default=ROOT, help="the tree to check (default: this one)")
    chk.add_argument("--include", help="CUTLASS include folder to check against (default: the carried one)")
    sub.add_parser("plan", help="print the device command, the carry paths and the bytes that travel")
    args = ap.parse_args(argv)
    if args.cmd == "stage-headers":
        print(f"CUTLASS headers (include + tools/util/include) -> {stage_headers()}")
        return 0
    if args.cmd == "check-headers":
        n, errors = check_headers(os.path.abspath(args.root), args.include)
        for e in errors:
            print(f"jit headers: FAIL {e}")
        if not errors:
            print(f"jit headers: ok ({n} translation units)")
        return 1 if errors else 0
    return plan()


if __name__ == "__main__":
    sys.exit(main())
