"""Per-GPU tactic tables: which tactic (the exact kernels: fused_resnet.tactics) runs each conv shape.

``fused_resnet/tuned/backend_<gpu>.json`` is written by ``python -m fused_resnet tune`` (fused_resnet/
tuner.py), which times every candidate tactic that can run each conv shape of a model on that GPU.
auto follows the table where the tabled tactic can run (_selector.choose); untabled shapes use
the heuristic (CUTLASS where it runs, else Triton, else eager).

Format 2 (current)::

    {"format": 2, "device": "NVIDIA H100 80GB HBM3", "env": {torch, triton, cuda, git_sha, date, ...},
     "command": "python -m fused_resnet tune ...", "noise_floor": 0.03,
     "tactics": {"<key>": {"tactic": "eager:cudnn_fused",      # what auto runs
                           "default": "cuda:sm80_large",       # what the heuristic would run
                           "fastest": "eager:cudnn_fused",     # the measured fastest
                           "margin": 0.12,     # runner-up time / chosen time - 1 (< 0: kept default is slower)
                           "noise": 0.03,      # threshold used: max(noise_floor, IQR/median of fastest, default)
                           "kept_default": false,  # true: fastest beat default by less than noise
                           "times_ms": {tactic: median ms}, "spread_ms": {tactic: IQR ms},
                           "failed": {tactic: why it could not run}}},
     "converted_from": "..."}   # present in tables converted from format 1 (backend names only)

Keys: ``tactic_key(...)`` (epilogue: relu, res_relu, res, none), e.g.
``n32_c64_h56_w56_k256_r1_s1_g1_float16_p0_d1_res_relu``. The environment variable
FUSED_RESNET_TABLE=<path> makes that file the table for every GPU (to try a table before committing it).

The noise rule (``decide``): a tactic that beats the default by less than the noise threshold is not
picked; the default is kept and the entry says so (kept_default).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

from . import _env

_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tuned")
FORMAT = 2
NOISE_FLOOR = 0.03  # 3%: below this, H100 reruns of the same op bench disagreed on the winner


def epilogue(relu: bool, residual: bool) -> str:
    return {(True, True): "res_relu", (True, False): "relu", (False, True): "res", (False, False): "none"}[
        (bool(relu), bool(residual))]


def tactic_key(n, cin, h, w, cout, k, stride, groups, dtype, padding: int, dilation: int, relu: bool,
               residual: bool) -> str:
    """The table key of one conv, e.g. n32_c64_h56_w56_k256_r1_s1_g1_float16_p0_d1_res_relu."""
    return (f"n{n}_c{cin}_h{h}_w{w}_k{cout}_r{k}_s{stride}_g{groups}_{str(dtype).replace('torch.', '')}"
            f"_p{padding}_d{dilation}_{epilogue(relu, residual)}")


@dataclass
class Entry:
    tactic: str  # what auto runs (format 1: a backend name)
    default: str = ""
    fastest: str = ""
    margin: Optional[float] = None
    noise: float = 0.0
    kept_default: bool = False
    times_ms: dict = field(default_factory=dict)
    spread_ms: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)

    def note(self) -> str:
        """Short text for explain(): the margin, or why the default was kept."""
        if self.kept_default and self.fastest:
            gain = self.times_ms[self.default] / self.times_ms[self.fastest] - 1
            return (f", default kept: {self.fastest} faster by only {gain:.1%} < noise {self.noise:.1%}")
        if self.margin is not None:
            return f", {self.margin:+.1%} vs runner-up"
        return ""


def decide(times_ms: dict, spread_ms: dict, default: Optional[str], noise_floor: float = NOISE_FLOOR,
           failed: Optional[dict] = None) -> Entry:
    """The table entry for one shape from every candidate's median and spread (IQR) in ms.

    The fastest tactic is chosen unless it beats ``default`` (timed too) by less than the noise
    threshold: max(noise_floor, IQR/median of the fastest and of the default). Then the default is
    kept ("do not pick a kernel that wins by noise"). margin = runner-up / chosen - 1.
    """
    if not times_ms:
        raise ValueError("no candidate was timed")
    ranked = sorted(times_ms, key=times_ms.get)
    fastest = ranked[0]

    def rel(t):
        return spread_ms.get(t, 0.0) / times_ms[t] if times_ms[t] > 0 else 0.0

    noise = max(noise_floor, rel(fastest), rel(default) if default in times_ms else 0.0)
    kept = default in times_ms and default != fastest and times_ms[default] < times_ms[fastest] * (1 + noise)
    tactic = default if kept else fastest
    others = [t for t in ranked if t != tactic]
    margin = times_ms[others[0]] / times_ms[tactic] - 1 if others else None
    return Entry(tactic, default or "", fastest, margin, noise, kept, dict(times_ms), dict(spread_ms),
                 dict(failed or {}))


# --- files --------------------------------------------------------------------------------------------

def default_path(tag: Optional[str] = None) -> str:
    return os.path.join(_DIR, f"backend_{tag or _env.device_tag()}.json")


def read_table(path: str) -> dict[str, Entry]:
    """{key: Entry} from a table file."""
    data = _load(path)
    return {k: Entry(**v) for k, v in data.get("tactics", {}).items()}


def read_meta(path: str) -> dict:
    return {k: v for k, v in _load(path).items() if k != "tactics"}


def _load(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: tactic table format {data.get('format', 1)}, this version reads format {FORMAT} "
                         f"(tune again, or convert it: keys and fields in fused_resnet/tuning.py)")
    return data


def write_table(path: str, entries: dict[str, Entry], *, device: str, env: Optional[dict] = None,
                command: str = "", noise_floor: float = NOISE_FLOOR, **meta) -> str:
    """Write a format-2 table (``meta``: more top-level fields, e.g. where its entries came from)."""
    data = {"format": FORMAT, "device": device, "env": env or {}, "command": command, "noise_floor": noise_floor,
            **meta, "tactics": {k: asdict(e) for k, e in sorted(entries.items())}}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)  # a run cut short never leaves half a file
    clear_cache()
    return path


_cache: dict[str, dict[str, Entry]] = {}


def clear_cache() -> None:
    _cache.clear()


def _table(tag: str) -> dict[str, Entry]:
    """The table auto reads for GPU ``tag`` (FUSED_RESNET_TABLE overrides), loaded once."""
    path = _env.get("FUSED_RESNET_TABLE") or default_path(tag)
    if path not in _cache:
        _cache[path] = read_table(path) if os.path.exists(path) else {}
    return _cache[path]


def lookup(p) -> Optional[Entry]:
    """The entry for tactics.Problem ``p`` in this GPU's table, or None."""
    tab = _table(_env.device_tag(p.x.device))
    if not tab:
        return None
    (n, cin, h, w), (cout, _, k, _) = p.x.shape, p.weight.shape
    return tab.get(tactic_key(n, cin, h, w, cout, k, p.stride[0], p.groups, p.x.dtype, p.padding[0], p.dilation[0],
                              p.relu, p.residual))
