"""The optional C++/CUDA extension (csrc/): CUTLASS fused convs and vectorized elementwise kernels.

Never fails at import. The op schemas are defined here, with fake implementations, so they trace
under torch.compile even where the extension is not built; csrc/fused_resnet_api.cpp registers the
CUDA implementations when its library is loaded:

    fused_resnet::_conv2d_cutlass(x, w_krsc, bias_fp32, residual?, stride, padding, dilation, relu, tile)
    fused_resnet::_conv2d_sm90(x, w_krsc, bias_fp32, residual?, stride, padding, dilation, relu, config)
    fused_resnet::_bias_residual_act_cuda(x, bias?, residual?, relu)
    fused_resnet::_add_relu_cuda(x, y)

Loading, on first GPU use (``status()``): a library built ahead of time by setup.py
(FUSED_RESNET_BUILD_CUDA=1), else a JIT build with ninja (torch.utils.cpp_extension.load, cached in
TORCH_EXTENSIONS_DIR) when nvcc and the CUTLASS headers (PyPI nvidia-cutlass) are present and
FUSED_RESNET_JIT != 0, else "not available" with the reason (shown by ``info`` and explain()).
"""
from . import schemas  # noqa: F401  (the op schemas and fakes, first)
from .loader import CSRC, CUDA_FLAGS, SOURCES, build, cutlass_include, status, toolchain_problem  # noqa: F401
from .report import cuobjdump, sm90_kernel_resources, sm90_report  # noqa: F401
from .sm80 import cutlass_launch, pack_krsc  # noqa: F401
from .sm90 import (SM90_MAX_STRIDE, default_sm90_config, fused_conv2d_sm90, sm90_config_accepts,  # noqa: F401
                   sm90_config_index, sm90_configs, sm90_im2col_problem, sm90_launch, sm90_problem)
