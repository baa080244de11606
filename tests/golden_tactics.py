"""The tactic decisions of the selector, recorded once and compared forever (tests/test_golden_tactics.py).

Every decision the selector makes on a CUDA tensor depends on the machine (which backends run, the
GPU's compute capability and SM count) and on the committed per-GPU tables. ``simulated_gpu`` fakes
exactly those facts (no GPU needed: the tensors are fake CUDA tensors), so the decisions can be
enumerated on a CPU:

- every committed table entry, at the padding ResNet gives that kernel size, each epilogue, with
  ``auto`` and ``cuda`` requested, on the table's GPU;
- a heuristic grid (no table): shapes x dtypes x layouts x scale x epilogue x which backends run x
  compute capability x requested backend x FUSED_RESNET_PREFER, plus the CPU;
- the reason every tactic gives for not running (or None) on a grid of problems.

    python tests/golden_tactics.py --write    # record (only when a decision is meant to change)
"""
from __future__ import annotations

import contextlib
import glob
import itertools
import json
import os
import re
import sys

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden", "tactic_decisions.json")
TABLES = os.path.join(os.path.dirname(HERE), "fused_resnet", "tuned")
CL = torch.channels_last
KEY = re.compile(r"n(\d+)_c(\d+)_h(\d+)_w(\d+)_k(\d+)_r(\d+)_s(\d+)_g(\d+)_(\w+?)(?:_p(\d+)_d(\d+)_(\w+))?$")
EPILOGUES = ((True, False), (True, True), (False, True), (False, False))  # (relu, residual)


@contextlib.contextmanager
def simulated_gpu(monkeypatch, *, cuda: bool = True, triton: bool = True, capability=(9, 0), sm_count: int = 132,
                  table: str = ""):
    """A GPU as far as the selector can tell: which GPU backends run, its compute capability and SM
    count, and the tactic table it reads (``table``: a path; "" or a missing file: no table)."""
    from fused_resnet import _env

    from fused_resnet import _ext

    monkeypatch.setattr(_ext, "status", lambda: (True, "test") if cuda else (False, "no extension (test)"))
    monkeypatch.setattr(_env, "triton_status", lambda: (True, "test") if triton else (False, "no triton (test)"))
    monkeypatch.setattr(_env, "device_capability", lambda device=None: capability)
    monkeypatch.setattr(_env, "sm_count", lambda device=None: sm_count)
    monkeypatch.setattr(_env, "cudnn_available", lambda: True)
    monkeypatch.delenv("FUSED_RESNET_PREFER", raising=False)
    monkeypatch.delenv("FUSED_RESNET_SM90_EXCLUDE", raising=False)
    monkeypatch.setenv("FUSED_RESNET_TABLE", table or os.path.join(HERE, "no-such-table.json"))
    from fused_resnet import tuning

    tuning.clear_cache()
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            yield
    finally:
        tuning.clear_cache()


def _tensors(n, c, h, w, k, r, g, dtype, device="cuda", cl=True):
    x = torch.empty(n, c, h, w, dtype=dtype, device=device)
    if cl:
        x = x.contiguous(memory_format=CL)
    return x, torch.empty(k, c // g, r, r, dtype=dtype, device=device)


def _decide(x, w, groups, requested, *, scale=False, stride=1, padding=0, relu=True, residual=False):
    from fused_resnet import _selector

    s = torch.empty(w.shape[0], device=x.device) if scale else None
    try:
        c = _selector.select_conv(x, w, groups, requested, s, stride, padding=padding, dilation=1, relu=relu,
                                  residual=residual)
        out = [c.backend, c.tactic, c.reason]
    except _selector.BackendUnavailableError as e:
        out = ["raises", str(e)]
    if requested == "auto":
        out.append(_selector.default_tactic(x, w, groups, s, stride=stride, padding=padding, relu=relu,
                                            residual=residual))
    return out


def _parse(key: str):
    m = KEY.match(key)
    n, c, h, w, k, r, s, g = map(int, m.groups()[:8])
    return n, c, h, w, k, r, s, g, getattr(torch, m.group(9))


def table_cases():
    """(table file name, key, padding, relu, residual, requested) for every committed entry."""
    for path in sorted(glob.glob(os.path.join(TABLES, "backend_*.json"))):
        with open(path) as f:
            data = json.load(f)
        keys = sorted(data.get("tactics") or data.get("choices"))
        shapes = sorted({k.rsplit("_p", 1)[0] if "_p" in k else k for k in keys})
        for key in shapes:
            r = _parse(key)[5]
            for (relu, residual), requested in itertools.product(EPILOGUES, ("auto", "cuda")):
                yield os.path.basename(path), key, (r - 1) // 2, relu, residual, requested


def run_table_case(monkeypatch, name, key, padding, relu, residual, requested):
    n, c, h, w, k, r, s, g, dt = _parse(key)
    with simulated_gpu(monkeypatch, table=os.path.join(TABLES, name)):
        x, wt = _tensors(n, c, h, w, k, r, g, dt)
        return _decide(x, wt, g, requested, stride=s, padding=padding, relu=relu, residual=residual)


SHAPES = (  # (n, c, h, w, k, r, stride, groups)
    (32, 3, 224, 224, 64, 7, 2, 1),  # the stem
    (32, 64, 56, 56, 256, 1, 1, 1),
    (1, 64, 56, 56, 64, 3, 1, 1),
    (1, 512, 7, 7, 512, 3, 2, 1),
    (256, 256, 56, 56, 512, 1, 2, 1),
    (2, 16, 9, 9, 20, 3, 1, 1),  # output channels not a multiple of 8
    (4, 128, 28, 28, 128, 3, 1, 32),  # ResNeXt's grouped conv
)
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
WORLDS = tuple(itertools.product((True, False), (True, False), ((9, 0), (8, 0))))  # cuda, triton, capability


def heuristic_cases():
    for world, shape, dt, cl, scale in itertools.product(range(len(WORLDS)), range(len(SHAPES)), range(len(DTYPES)),
                                                         (True, False), (False, True)):
        yield world, shape, dt, cl, scale


def run_heuristic_case(monkeypatch, world, shape, dt, cl, scale):
    cuda, triton, cap = WORLDS[world]
    n, c, h, w, k, r, s, g = SHAPES[shape]
    out = {}
    with simulated_gpu(monkeypatch, cuda=cuda, triton=triton, capability=cap):
        x, wt = _tensors(n, c, h, w, k, r, g, DTYPES[dt], cl=cl)
        for (relu, residual), requested in itertools.product(EPILOGUES[:3], ("auto", "eager", "triton", "cuda")):
            out[f"{relu}/{residual}/{requested}"] = _decide(x, wt, g, requested, scale=scale, stride=s,
                                                            padding=r // 2, relu=relu, residual=residual)
        for prefer in ("cuda", "triton"):
            monkeypatch.setenv("FUSED_RESNET_PREFER", prefer)
            out[f"prefer={prefer}"] = _decide(x, wt, g, "auto", scale=scale, stride=s, padding=r // 2, residual=True)
        monkeypatch.delenv("FUSED_RESNET_PREFER")
        out["guards"] = guards(x, wt, g, scale, s, r // 2)
    return out


def guards(x, w, groups, scale, stride, padding):
    """{tactic: why it cannot run this conv, or None} for every tactic on x's device."""
    from fused_resnet import _selector, tactics

    s = torch.empty(w.shape[0], device=x.device) if scale else None
    return {t: _selector.tactic_guard(t, x, w, groups, s, stride=stride, padding=padding, dilation=1)
            for t in tactics.conv_tactics(x)}


def cpu_cases():
    for shape, dt, cl, requested in itertools.product(range(len(SHAPES)), range(len(DTYPES)), (True, False),
                                                      ("auto", "eager", "triton", "cuda")):
        yield shape, dt, cl, requested


def run_cpu_case(monkeypatch, shape, dt, cl, requested):
    n, c, h, w, k, r, s, g = SHAPES[shape]
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with simulated_gpu(monkeypatch):  # GPU backends available: CPU tensors must still not take them
        x, wt = _tensors(n, c, h, w, k, r, g, DTYPES[dt], device="cpu", cl=cl)
        return _decide(x, wt, g, requested, stride=s, padding=r // 2, residual=True)


def _intern(obj, strings: dict):
    """obj with every string leaf replaced by its index in ``strings`` (the file repeats few texts)."""
    if isinstance(obj, str):
        return strings.setdefault(obj, len(strings))
    if isinstance(obj, list):
        return [_intern(v, strings) for v in obj]
    if isinstance(obj, dict):
        return {k: _intern(v, strings) for k, v in obj.items()}
    return obj


def _extern(obj, strings: list):
    if isinstance(obj, int) and not isinstance(obj, bool):
        return strings[obj]
    if isinstance(obj, list):
        return [_extern(v, strings) for v in obj]
    if isinstance(obj, dict):
        return {k: _extern(v, strings) for k, v in obj.items()}
    return obj


def load() -> dict:
    with open(GOLDEN) as f:
        data = json.load(f)
    return {part: [case[:-1] + [_extern(case[-1], data["strings"])] for case in data[part]]
            for part in ("tables", "heuristic", "cpu")}


def record(monkeypatch) -> dict:
    return {
        "tables": [[*case, run_table_case(monkeypatch, *case)] for case in table_cases()],
        "heuristic": [[*case, run_heuristic_case(monkeypatch, *case)] for case in heuristic_cases()],
        "cpu": [[*case, run_cpu_case(monkeypatch, *case)] for case in cpu_cases()],
    }


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    from _pytest.monkeypatch import MonkeyPatch

    mp = MonkeyPatch()
    try:
        data = record(mp)
    finally:
        mp.undo()
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    strings: dict = {}
    packed = {part: [case[:-1] + [_intern(case[-1], strings)] for case in cases] for part, cases in data.items()}
    packed["strings"] = list(strings)
    with open(GOLDEN, "w") as f:
        json.dump(packed, f, separators=(",", ":"), sort_keys=True)
        f.write("\n")
    print(f"wrote {GOLDEN}: {len(data['tables'])} table, {len(data['heuristic'])} heuristic, "
          f"{len(data['cpu'])} CPU cases")
