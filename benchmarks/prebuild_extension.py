"""Build the CUDA extension ahead of time for the torch this interpreter runs, into one file.

    python benchmarks/prebuild_extension.py --out-dir DIR   (`make gpu-prebuild` runs it for the GPU machine)

A GPU machine with no time to spare (the GPU suite's build phase costs minutes of device time) can
load a library built elsewhere, on a CPU-only machine with nvcc: `make gpu-prebuild` runs this in a
venv of the GPU machine's torch (the library uses torch's C++ API only, no Python API, so the Python
minor version does not matter) and writes `DIR/_C-torch<version>.so` (`2.11.0-cu130`) with
`DIR/_C-torch<version>.so.digest`, the sources it was built from (fused_resnet/_sources.digest); the
GPU suite installs the library as fused_resnet/_C.so only when its tree has the same digest. The package loads
a fused_resnet/_C*.so before building; one made for another torch fails to load, is reported by
``fused_resnet._ext.status()`` and the JIT build runs instead.

Only the extension's own modules are imported (not the package, whose torchvision import must match
torch), so torchvision need not be installed for the target torch.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _progress(done: threading.Event, t0: float, total: int) -> None:
    """A line a minute while ninja compiles: objects finished so far (the build prints nothing itself)."""
    from torch.utils import cpp_extension

    folder = cpp_extension._get_build_directory("fused_resnet_cuda", verbose=False)
    while not done.wait(60):
        objs = [n for n in os.listdir(folder) if n.endswith(".o")] if os.path.isdir(folder) else []
        print(f"  ... {time.time() - t0:.0f} s, {len(objs)} of {total} objects compiled", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out-dir", required=True, help="folder for _C-torch<version>.so and its .digest")
    p.add_argument("--jobs", type=int, default=os.cpu_count(), help="parallel compile jobs (MAX_JOBS)")
    args = p.parse_args()
    os.environ.setdefault("MAX_JOBS", str(args.jobs))
    pkg = types.ModuleType("fused_resnet")  # the package without its __init__ (no torchvision import)
    pkg.__path__ = [os.path.join(ROOT, "fused_resnet")]
    sys.modules["fused_resnet"] = pkg
    import torch
    from fused_resnet import _ext, _sources

    why = _ext.toolchain_problem()
    if why:
        print(f"cannot build: {why}", file=sys.stderr)
        return 2
    print(f"building for torch {torch.__version__} (CUDA {torch.version.cuda}), {os.environ['MAX_JOBS']} jobs: "
          f"{len(_ext.SOURCES)} sources, minutes per Hopper source on few cores ...", flush=True)
    t0 = time.time()
    digest = _sources.digest()
    done = threading.Event()
    threading.Thread(target=_progress, args=(done, t0, len(_ext.SOURCES)), daemon=True).start()
    try:
        lib = _ext.build(verbose=False)
    finally:
        done.set()
    os.makedirs(args.out_dir, exist_ok=True)
    # ("+" left out of the name: 2.11.0+cu130 -> 2.11.0-cu130; plain names travel everywhere)
    out = os.path.join(args.out_dir, f"_C-torch{torch.__version__.replace('+', '-')}.so")
    shutil.copyfile(lib, out)
    with open(out + ".digest", "w") as f:  # the sources it was built from (_sources.digest)
        f.write(digest + "\n")
    print(f"built in {time.time() - t0:.0f} s -> {out} ({os.path.getsize(out) / 1e6:.1f} MB), "
          f"sources {digest[:12]} in {out}.digest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
