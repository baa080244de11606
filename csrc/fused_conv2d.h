// C interface of the CUTLASS fused conv kernels (csrc/fused_conv2d_*.cu). Plain CUDA types only, so
// the kernels compile without torch headers; csrc/fused_resnet_api.cpp binds them to torch.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

namespace fused_resnet {

// out = act(conv2d(x, w) + bias[k] (+ residual)), all activations NHWC, weight KRSC (= Cout, KH, KW, Cin).
struct ConvParams {
  const void* x;         // [N, H, W, C]
  const void* w;         // [K, R, S, C]
  const float* bias;     // [K], fp32
  const void* residual;  // [N, P, Q, K] or nullptr
  void* out;             // [N, P, Q, K]
  int n, h, w_, c, k, r, s, p, q;
  int pad_h, pad_w, stride_h, stride_w, dil_h, dil_w;
  bool relu;
};

enum ConvTile : int { kTileAuto = 0, kTileLarge = 1, kTileSmall = 2 };

// Each returns 0 on success, else a cutlass::Status value (>0) or -1 for an unsupported request.
int conv2d_cutlass_f16(const ConvParams& p, int tile, cudaStream_t stream);
int conv2d_cutlass_bf16(const ConvParams& p, int tile, cudaStream_t stream);
const char* cutlass_status_string(int status);

// Vectorized (16-byte) NHWC elementwise kernels; dtype: 0 fp16, 1 bf16, 2 fp32.
// out = relu(x + y)
int add_relu(const void* x, const void* y, void* out, int64_t numel, int dtype, cudaStream_t stream);
// out = act(x + bias[i % channels] (+ residual))
int bias_residual_act(const void* x, const float* bias, const void* residual, void* out, int64_t numel,
                      int channels, bool relu, int dtype, cudaStream_t stream);

}  // namespace fused_resnet
