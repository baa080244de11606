"""Model-level providers outside PyTorch, for the CPU: ONNX Runtime and OpenVINO.

Both run the reference model (torchvision's or timm's, BN not folded) exported to ONNX through
``torch.onnx.export`` (the dynamo exporter when onnxscript is installed, else the TorchScript one):
the route the project's own export checks take (tests/test_frontends.py), and the best graph each
runtime can get, since each folds BN and fuses conv + add + ReLU itself. Each runs at its own best
settings for one synchronous request: ONNX Runtime with every graph optimization (ORT_ENABLE_ALL:
its CPU path turns the graph into blocked NCHWc convs with fused activations) and intra-op threads =
torch's thread count (the physical cores); OpenVINO with the LATENCY hint, one stream, f32.

Their outputs are checked against the reference before timing (``check_against``): a provider whose
output differs is reported as failed, not timed. Optional dependencies: a missing package is a
skip with the reason, as for the export checks (pip install fused_resnet[onnx], fused_resnet[openvino]).
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import tempfile
import warnings
from typing import Callable, Optional

import torch

EXTERNAL_PROVIDERS = ("onnxruntime", "openvino")
_PACKAGE = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def external_available(name: str, device: str) -> Optional[str]:
    """None if the provider can run here, else why not."""
    pkg = _PACKAGE[name]
    if importlib.util.find_spec(pkg) is None:
        return f"{pkg} is not installed (optional: pip install fused_resnet[{'onnx' if pkg == 'onnxruntime' else pkg}])"
    if not device.startswith("cpu"):
        return f"{name} runs here on the CPU only (its CPU execution path is the one compared)"
    if importlib.util.find_spec("onnx") is None:
        return "onnx is not installed (the export needs it: pip install fused_resnet[onnx])"
    return None


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: str) -> str:
    """``model`` exported to ONNX at ``example``'s (static) shape; the dynamo exporter when
    onnxscript is installed (torch's default), else the TorchScript exporter. Returns ``path``."""
    dynamo = importlib.util.find_spec("onnxscript") is not None
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's progress lines and warnings: not the bench's output
        out = torch.onnx.export(model, (example,), path, dynamo=dynamo, verbose=False)
        if dynamo and out is not None:
            out.save(path)
    return path


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _ort_session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = _threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _ort_call(sess, keep) -> Callable:
    name = sess.get_inputs()[0].name
    run = sess.run

    def call(x, keep=keep):
        return torch.from_numpy(run(None, {name: x.contiguous().numpy()})[0])
    return call


def _openvino_call(path: str, keep) -> Callable:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(path, "CPU", {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
                                                "INFERENCE_NUM_THREADS": str(_threads()),
                                                "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def call(x, keep=keep, compiled=compiled):
        request.infer({0: x.contiguous().numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())
    return call


def build_external(name: str, ref_model: torch.nn.Module, example: torch.Tensor) -> Callable:
    """The provider's callable (torch tensor in, torch tensor out) for the reference model exported
    at ``example``'s shape. The exported files live as long as the callable."""
    tmp = tempfile.TemporaryDirectory(prefix="fused_resnet_onnx_")
    path = export_onnx(ref_model.eval(), example, os.path.join(tmp.name, "model.onnx"))
    if name == "onnxruntime":
        return _ort_call(_ort_session(path), tmp)
    if name == "openvino":
        return _openvino_call(path, tmp)
    raise ValueError(f"unknown external provider {name!r}")


def check_against(name: str, fn: Callable, ref_model: torch.nn.Module, x: torch.Tensor, tol: float = 1e-4) -> float:
    """Max error of fn(x) relative to the reference's largest output (fused_resnet.testing.max_rel_error);
    raises if it exceeds ``tol`` (fp32: the runtimes reorder the sums, nothing more) or NaN/Inf differ."""
    from ..testing import max_rel_error

    with torch.no_grad():
        ref = ref_model(x)
        out = fn(x)
    err = max_rel_error(out.to(ref.dtype), ref)
    if not err <= tol:
        raise AssertionError(f"{name}: output differs from the reference (max rel error {err:.2e} > {tol:.0e})")
    return err


def nan_input(x: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` with one NaN pixel in image 0 and one +Inf pixel in the last image (both in
    image 0 at batch 1): where a runtime's fused ReLU or pooling drops NaN, the outputs say so."""
    x = x.clone()
    n, c, h, w = x.shape
    x[0, c // 2, h // 3, w // 3] = float("nan")
    x[n - 1, 0, (2 * h) // 3, (2 * w) // 3] = float("inf")
    return x


def nan_placement_matches(fn: Callable, ref_model: torch.nn.Module, x: torch.Tensor, x_in=None) -> bool:
    """True if fn places NaN and +-Inf in its output exactly where the reference model does, for
    ``nan_input(x)`` (``x_in``: that input in the layout fn takes, if not NCHW)."""
    xn = nan_input(x)
    with torch.no_grad():
        ref = ref_model(xn)
        out = fn(xn if x_in is None else x_in(xn)).to(ref.dtype)
    return bool(torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())
                and torch.equal(out[out.isinf()], ref[ref.isinf()]))
