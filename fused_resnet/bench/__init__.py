"""Side-by-side benchmarks (``python -m fused_resnet bench``), shared with benchmarks/ and demo.

Levels: ``model`` (whole torchvision model per provider) and ``op`` (each distinct conv shape of the
model: fused_conv2d per backend, the op auto runs (provider fused_resnet) and every candidate tactic
vs the library conv alone vs conv + separate BN + ReLU (+ add)). Op rows carry output and residual
bytes and the card's measured copy bandwidth, so auto's target, time <= conv_alone + residual_bytes /
bandwidth, can be recomputed from them (``op_bound_summary``). cuDNN runs with
torch.backends.cudnn.benchmark = True on GPUs, recorded in every row (cudnn_benchmark).
Every provider is timed interleaved on the same inputs (several input sets, never zeros), and every
row records the device, versions, git sha and date. Roofline columns come from the model's own
conv shapes (see ``conv_shapes`` / ``roofline``).
"""
from ..profiling import ConvShape, conv_shapes, distinct_shapes, environment  # noqa: F401
from .cli import add_arguments, main, unknown_providers  # noqa: F401
from .model import MODEL_PROVIDERS, build_provider, provider_available, run_model_bench  # noqa: F401
from .op import OP_PROVIDERS, op_bound_ms, op_bound_summary, print_bound_summary, run_op_bench  # noqa: F401
from .report import Row, plot, print_fused_speedups, print_table, write_results  # noqa: F401
from .roofline import measure_copy_gbps, measure_peaks, roofline  # noqa: F401
