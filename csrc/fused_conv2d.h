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

enum ConvTile : int { kTileLarge = 1, kTileSmall = 2 };  // the caller picks (no auto rule here)

// Each returns 0 on success, else a cutlass::Status value (>0) or -1 for an unsupported request.
int conv2d_cutlass_f16(const ConvParams& p, int tile, cudaStream_t stream);
int conv2d_cutlass_bf16(const ConvParams& p, int tile, cudaStream_t stream);
const char* cutlass_status_string(int status);

// ---- Hopper (sm_90a) CUTLASS 3.x kernels: TMA + WGMMA (csrc/sm90_kernels.cuh, one .cu per config in
// csrc/sm90/, generated with the registry by csrc/generate_sm90.py from one table). ----
enum Sm90Kind : int { kSm90Conv = 0, kSm90Gemm = 1 };    // gemm: 1x1, stride 1, pad 0, dilation 1 only
enum Sm90Dtype : int { kSm90F16 = 0, kSm90BF16 = 1 };

// Refusals checked on the host before anything is launched (CUTLASS would not catch them, or would
// fault inside a TMA descriptor). Negative, so they never collide with cutlass::Status values.
enum Sm90Status : int {
  kSm90BadConfig = -10,      // config index out of range
  kSm90DtypeMismatch = -11,  // tensor dtype differs from the config's
  kSm90KindMismatch = -12,   // a gemm config given a conv that is not 1x1/stride 1/pad 0/dilation 1
  kSm90Misaligned = -13,     // a pointer is not 16-byte aligned (TMA)
  kSm90Channels = -14,       // C or K not a multiple of 8 (16-byte rows for TMA)
  kSm90NotCompiled = -15,    // the library was built without sm_90a
  kSm90NeedsWorkspace = -16, // the kernel wants a workspace and no allocator was given / it failed
  kSm90BadProblem = -17,     // empty or non-positive sizes, or an output size that is not positive
};

// Optional workspace allocator (device memory valid until the launch has run on `stream`).
struct Sm90Allocator {
  void* (*alloc)(size_t bytes, void* ctx);
  void* ctx;
};

struct Sm90Config {
  const char* name;  // e.g. "gemm_f16_coop_128x256x64_c1x1"
  int kind;          // Sm90Kind
  int dtype;         // Sm90Dtype
  int (*run)(const ConvParams& p, const Sm90Allocator* alloc, cudaStream_t stream);
  int (*smem_bytes)();  // dynamic shared memory of the kernel (a compile-time constant)
};

int sm90_num_configs();
const Sm90Config* sm90_config(int index);  // nullptr when out of range
bool sm90_compiled();                      // true when the sm_90a kernels were built into this library
// Checks (host, before launch) then runs config `index` on `stream`: 0, a cutlass::Status, or an Sm90Status.
int conv2d_sm90(const ConvParams& p, int index, int dtype, const Sm90Allocator* alloc, cudaStream_t stream);

// Vectorized (16-byte) NHWC elementwise kernels; dtype: 0 fp16, 1 bf16, 2 fp32.
// out = relu(x + y)
int add_relu(const void* x, const void* y, void* out, int64_t numel, int dtype, cudaStream_t stream);
// out = act(x + bias[i % channels] (+ residual))
int bias_residual_act(const void* x, const float* bias, const void* residual, void* out, int64_t numel,
                      int channels, bool relu, int dtype, cudaStream_t stream);

}  // namespace fused_resnet
