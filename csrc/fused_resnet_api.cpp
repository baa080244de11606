// Torch bindings of the CUDA kernels: input checks with clear messages, launch on the current
// stream, launch check. The op schemas are defined in Python (fused_resnet/_ext/schemas.py, with their fake
// implementations); this file only registers the CUDA implementations.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "fused_conv2d.h"

namespace fused_resnet {
namespace {

int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return 0;
    case at::kBFloat16: return 1;
    case at::kFloat: return 2;
    default: return -1;
  }
}

// The conv output size as torch computes it (floor division); an error where torch raises (the padded
// input smaller than the dilated kernel), never a made-up size of 1.
int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil, const char* who) {
  TORCH_CHECK(stride > 0 && dil > 0 && pad >= 0, who, ": stride and dilation must be positive, padding >= 0");
  const int64_t span = in + 2 * pad - dil * (k - 1) - 1;
  TORCH_CHECK(span >= 0, who, ": the padded input (", in, " + 2*", pad, ") is smaller than the dilated kernel (",
              dil * (k - 1) + 1, ")");
  return span / stride + 1;
}

void check_residual_device(const c10::optional<at::Tensor>& residual, const at::Tensor& x, const char* who) {
  TORCH_CHECK(!residual.has_value() || residual->device() == x.device(), who, ": residual is on ",
              residual.has_value() ? residual->device() : x.device(), ", the input on ", x.device());
}

void check_nhwc(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "fused_resnet: ", name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 4, "fused_resnet: ", name, " must be 4D, got ", t.dim(), "D");
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast),
              "fused_resnet: ", name, " must be channels_last contiguous (NHWC)");
}

// What both CUTLASS conv bindings check and allocate (``who`` names the op in every message; ``aligned``
// says what needs channels in multiples of 8): x [N, C, H, W] and w [K, C, R, S] channels_last (= KRSC
// in memory), fp16/bf16 of one dtype, an fp32 bias [K], all on one device; no groups; the output size
// as torch computes it; 32-bit indexing; a residual of the output's shape and dtype. Returns the kernel
// parameters and the channels_last output.
struct ConvLaunch {
  ConvParams params;
  at::Tensor out;
};

ConvLaunch conv_launch(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                       const c10::optional<at::Tensor>& residual, at::IntArrayRef stride, at::IntArrayRef padding,
                       at::IntArrayRef dilation, bool relu, const char* who, const char* aligned) {
  check_nhwc(x, "input");
  check_nhwc(w, "weight");
  TORCH_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16, who, ": fp16/bf16 only, got ",
              x.scalar_type());
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), who, ": weight dtype ", w.scalar_type(), " != input dtype ",
              x.scalar_type());
  TORCH_CHECK(bias.is_cuda() && bias.scalar_type() == at::kFloat && bias.is_contiguous() && bias.numel() == w.size(0),
              who, ": bias must be a contiguous fp32 CUDA tensor of ", w.size(0), " elements");
  TORCH_CHECK(x.device() == w.device() && x.device() == bias.device(), who,
              ": input, weight and bias must be on one device");
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), wd = x.size(3);
  const int64_t k = w.size(0), r = w.size(2), s = w.size(3);
  TORCH_CHECK(w.size(1) == c, who, ": grouped convs are not supported (weight has ", w.size(1),
              " input channels, input has ", c, ")");
  TORCH_CHECK(c % 8 == 0 && k % 8 == 0, who, ": channels must be multiples of 8 (", aligned, "), got ", c, " -> ", k);
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, who, ": stride/padding/dilation: 2 ints");
  const int64_t p = conv_out_size(h, r, stride[0], padding[0], dilation[0], who);
  const int64_t q = conv_out_size(wd, s, stride[1], padding[1], dilation[1], who);
  check_residual_device(residual, x, who);
  TORCH_CHECK(n * std::max(h * wd * c, p * q * k) < (int64_t(1) << 31), who, ": tensor too large");
  at::Tensor out = at::empty({n, k, p, q}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const void* res_ptr = nullptr;
  if (residual.has_value()) {
    check_nhwc(*residual, "residual");
    TORCH_CHECK(residual->sizes() == out.sizes() && residual->scalar_type() == x.scalar_type(),
                who, ": residual must match the output's shape and dtype");
    res_ptr = residual->data_ptr();
  }
  ConvParams prm{x.data_ptr(), w.data_ptr(), bias.data_ptr<float>(), res_ptr, out.data_ptr(),
                 (int)n, (int)h, (int)wd, (int)c, (int)k, (int)r, (int)s, (int)p, (int)q,
                 (int)padding[0], (int)padding[1], (int)stride[0], (int)stride[1], (int)dilation[0], (int)dilation[1],
                 relu};
  return {prm, out};
}

// CUTLASS 2.x (sm_80+): ``tile`` is kTileLarge or kTileSmall; the Python side picks it
// (fused_resnet/tactics/cutlass.py: sm80_tile, from the GPU's SM count).
at::Tensor conv2d_cutlass(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                          const c10::optional<at::Tensor>& residual, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, bool relu, int64_t tile) {
  TORCH_CHECK(tile == kTileLarge || tile == kTileSmall, "fused_resnet CUTLASS conv: tile must be ", kTileLarge,
              " (128x128) or ", kTileSmall, " (small), got ", tile);
  c10::cuda::CUDAGuard guard(x.device());
  ConvLaunch call = conv_launch(x, w, bias, residual, stride, padding, dilation, relu, "fused_resnet CUTLASS conv",
                                "alignment");
  if (call.out.numel() == 0) return call.out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  int st = x.scalar_type() == at::kHalf ? conv2d_cutlass_f16(call.params, (int)tile, stream)
                                        : conv2d_cutlass_bf16(call.params, (int)tile, stream);
  TORCH_CHECK(st == 0, "fused_resnet CUTLASS conv failed: ", cutlass_status_string(st));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return call.out;
}

// Hopper kernels (csrc/conv2d_sm90.cu + generated csrc/sm90/): same tensors and math as
// conv2d_cutlass, one of the generated configs chosen by index (fused_resnet/_sm90_configs.py).
at::Tensor conv2d_sm90_op(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                       const c10::optional<at::Tensor>& residual, at::IntArrayRef stride, at::IntArrayRef padding,
                       at::IntArrayRef dilation, bool relu, int64_t config) {
  check_nhwc(x, "input");
  check_nhwc(w, "weight");
  const int num = sm90_num_configs();
  TORCH_CHECK(num > 0, "fused_resnet sm90 conv: this library was built without the sm90 kernels (FUSED_RESNET_SM90=0)");
  TORCH_CHECK(config >= 0 && config < num, "fused_resnet sm90 conv: config ", config, " out of range [0, ", num, ")");
  const Sm90Config* cfg = sm90_config((int)config);
  TORCH_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
              "fused_resnet sm90 conv: fp16/bf16 only, got ", x.scalar_type());
  const int dtype = x.scalar_type() == at::kHalf ? kSm90F16 : kSm90BF16;
  TORCH_CHECK(cfg->dtype == dtype, "fused_resnet sm90 conv: config ", cfg->name, " is for ",
              cfg->dtype == kSm90F16 ? "float16" : "bfloat16", ", the input is ", x.scalar_type());
  const int64_t r = w.size(2), s = w.size(3);
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, "stride/padding/dilation: 2 ints");
  if (cfg->kind == kSm90Gemm)
    TORCH_CHECK(r == 1 && s == 1 && stride[0] == 1 && stride[1] == 1 && padding[0] == 0 && padding[1] == 0,
                "fused_resnet sm90 conv: config ", cfg->name, " is a GEMM for 1x1 stride-1 unpadded convs; got ",
                r, "x", s, " stride ", stride, " padding ", padding, " (use a conv config)");
  const char* who = "fused_resnet sm90 conv";
  // TMA im2col limits (cuTensorMapEncodeIm2col): element strides 1..8, box corners in [-128, 127]. CUTLASS's
  // can_implement does not check them and a failed encode is silent under -DNDEBUG (garbage descriptor).
  for (int i = 0; i < 2; ++i) {
    const int64_t k_i = i == 0 ? r : s;
    TORCH_CHECK(stride[i] >= 1 && stride[i] <= 8, who, ": stride ", stride[i], " outside TMA im2col's 1..8");
    // rank-4 (NHWC) im2col: each corner offset within [-128, 127] (cuda.h, cuTensorMapEncodeIm2col)
    const int64_t lower = -padding[i], upper = padding[i] - dilation[i] * (k_i - 1);
    TORCH_CHECK(lower >= -128 && lower <= 127 && upper >= -128 && upper <= 127,
                who, ": padding ", padding[i], " / dilation ", dilation[i], " outside TMA im2col's corner range");
  }
  c10::cuda::CUDAGuard guard(x.device());
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, x.get_device());
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, x.get_device());
  TORCH_CHECK(major == 9 && minor == 0, "fused_resnet sm90 conv: these kernels (sm_90a: TMA + WGMMA) run only on "
              "sm_90 GPUs (H100/H200); this device is sm_", major, minor);
  TORCH_CHECK(sm90_compiled(), "fused_resnet sm90 conv: this library was built without sm_90a code "
              "(needs -gencode=arch=compute_90a,code=sm_90a)");
  ConvLaunch call = conv_launch(x, w, bias, residual, stride, padding, dilation, relu, who, "TMA");
  TORCH_CHECK(call.params.p > 0 && call.params.q > 0, who, ": empty output (", call.params.p, "x", call.params.q, ")");
  if (call.out.numel() == 0) return call.out;
  // Workspace (if a kernel asks for one) from torch's caching allocator, freed after the launch is
  // enqueued: the allocator reuses it only for work ordered after it on this stream.
  struct Workspace {
    at::TensorOptions options;
    std::vector<at::Tensor> held;
  } ws{x.options().dtype(at::kByte), {}};
  Sm90Allocator alloc{[](size_t bytes, void* ctx) -> void* {
                        auto* w = static_cast<Workspace*>(ctx);
                        w->held.push_back(at::empty({(int64_t)bytes}, w->options));
                        return w->held.back().data_ptr();
                      },
                      &ws};
  int st = fused_resnet::conv2d_sm90(call.params, (int)config, dtype, &alloc, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(st == 0, "fused_resnet sm90 conv (", cfg->name, "): ", cutlass_status_string(st));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return call.out;
}

at::Tensor bias_residual_act_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& bias,
                                  const c10::optional<at::Tensor>& residual, bool relu) {
  check_nhwc(x, "input");
  int code = dtype_code(x);
  TORCH_CHECK(code >= 0, "fused_resnet: fp16/bf16/fp32 only, got ", x.scalar_type());
  const float* bias_ptr = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->is_cuda() && bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                    bias->numel() == x.size(1),
                "fused_resnet: bias must be a contiguous fp32 CUDA tensor with one value per channel");
    bias_ptr = bias->data_ptr<float>();
  }
  const void* res_ptr = nullptr;
  check_residual_device(residual, x, "fused_resnet bias_residual_act");
  if (residual.has_value()) {
    check_nhwc(*residual, "residual");
    TORCH_CHECK(residual->sizes() == x.sizes() && residual->scalar_type() == x.scalar_type(),
                "fused_resnet: residual must match the input's shape and dtype");
    res_ptr = residual->data_ptr();
  }
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  int st = bias_residual_act(x.data_ptr(), bias_ptr, res_ptr, out.data_ptr(), x.numel(), (int)x.size(1), relu, code,
                             c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(st == 0, "fused_resnet elementwise kernel failed: ", cudaGetErrorString((cudaError_t)st));
  return out;
}

at::Tensor add_relu_cuda(const at::Tensor& x, const at::Tensor& y) {
  return bias_residual_act_cuda(x, c10::nullopt, y, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_resnet, CUDA, m) {
  m.impl("_conv2d_cutlass", &conv2d_cutlass);
  m.impl("_conv2d_sm90", &conv2d_sm90_op);
  m.impl("_bias_residual_act_cuda", &bias_residual_act_cuda);
  m.impl("_add_relu_cuda", &add_relu_cuda);
}

}  // namespace fused_resnet
