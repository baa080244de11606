"""Build the CUDA extension ahead of time for the torch this interpreter runs, into one file.

    python benchmarks/prebuild_extension.py OUT.so        (`make gpu-prebuild` runs it for the GPU machine)

A GPU machine with no time to spare (the GPU suite's build phase costs minutes of device time) can
load a library built elsewhere, on a CPU-only machine with nvcc: `make gpu-prebuild` installs the GPU
machine's torch build into its own venv (the library uses torch's C++ API only, no Python API, so
the Python minor version does not matter) and writes `.gpu-prebuilt/_C-torch<version>.so`.
OUT.so.digest records the sources it was built from (fused_resnet/_sources.digest); the GPU suite
copies the library to fused_resnet/_C.so only when its tree has the same digest. The package loads
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
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("out", help="where to write the library (name it _C.so when placing it in fused_resnet/)")
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
    lib = _ext.build(verbose=False)
    shutil.copyfile(lib, args.out)
    with open(args.out + ".digest", "w") as f:  # the sources it was built from (_sources.digest)
        f.write(digest + "\n")
    print(f"built in {time.time() - t0:.0f} s -> {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB), "
          f"sources {digest[:12]} in {args.out}.digest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
