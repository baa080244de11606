// Vectorized NHWC elementwise kernels: add_relu and bias(+residual)+act, for convs that run
// elsewhere (e.g. cuDNN). 16-byte loads/stores (8 x fp16/bf16 or 4 x fp32) when every pointer is
// 16-byte aligned and numel (and channels) are multiples of the vector width; a scalar kernel
// otherwise. Math in fp32; ReLU keeps NaN (x < 0 ? 0 : x), like torch.relu.
#include "fused_conv2d.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

namespace fused_resnet {
namespace {

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f(float v) { return v; }
template <> __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f(float v) { return v; }
template <> __device__ __forceinline__ __half from_f(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float relu_keep_nan(float v) { return v < 0.f ? 0.f : v; }

// One thread handles VEC consecutive elements (VEC = 16 bytes / sizeof(T), or 1 for the scalar path).
template <typename T, int VEC>
__global__ void bias_residual_act_kernel(const T* __restrict__ x, const float* __restrict__ bias,
                                         const T* __restrict__ residual, T* __restrict__ out, int64_t numel,
                                         int channels, bool relu) {
  int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
  for (; i < numel; i += (int64_t)gridDim.x * blockDim.x * VEC) {
    T xv[VEC], rv[VEC], ov[VEC];
    if constexpr (VEC > 1) {
      *reinterpret_cast<uint4*>(xv) = *reinterpret_cast<const uint4*>(x + i);
      if (residual) *reinterpret_cast<uint4*>(rv) = *reinterpret_cast<const uint4*>(residual + i);
    } else {
      xv[0] = x[i];
      if (residual) rv[0] = residual[i];
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      float v = to_f(xv[j]);
      if (bias) v += bias[(i + j) % channels];
      if (residual) v += to_f(rv[j]);
      ov[j] = from_f<T>(relu ? relu_keep_nan(v) : v);
    }
    if constexpr (VEC > 1) {
      *reinterpret_cast<uint4*>(out + i) = *reinterpret_cast<const uint4*>(ov);
    } else {
      out[i] = ov[0];
    }
  }
}

template <typename T>
int launch(const void* x, const float* bias, const void* residual, void* out, int64_t numel, int channels,
           bool relu, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  auto aligned = [](const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  bool vec = aligned(x) && aligned(residual) && aligned(out) && numel % kVec == 0 && (!bias || channels % kVec == 0);
  const int threads = 256;
  int64_t per_block = (int64_t)threads * (vec ? kVec : 1);
  int blocks = (int)std::min<int64_t>((numel + per_block - 1) / per_block, 65535LL * 8);
  if (blocks == 0) return 0;
  auto xp = static_cast<const T*>(x);
  auto rp = static_cast<const T*>(residual);
  auto op = static_cast<T*>(out);
  if (vec) {
    bias_residual_act_kernel<T, kVec><<<blocks, threads, 0, stream>>>(xp, bias, rp, op, numel, channels, relu);
  } else {
    bias_residual_act_kernel<T, 1><<<blocks, threads, 0, stream>>>(xp, bias, rp, op, numel, channels, relu);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int bias_residual_act(const void* x, const float* bias, const void* residual, void* out, int64_t numel,
                      int channels, bool relu, int dtype, cudaStream_t stream) {
  switch (dtype) {
    case 0: return launch<__half>(x, bias, residual, out, numel, channels, relu, stream);
    case 1: return launch<__nv_bfloat16>(x, bias, residual, out, numel, channels, relu, stream);
    case 2: return launch<float>(x, bias, residual, out, numel, channels, relu, stream);
    default: return -1;
  }
}

int add_relu(const void* x, const void* y, void* out, int64_t numel, int dtype, cudaStream_t stream) {
  return bias_residual_act(x, nullptr, y, out, numel, 1, true, dtype, stream);
}

}  // namespace fused_resnet
