// Host side of the Hopper (sm_90a) kernels: the checks CUTLASS would not make (or would turn into a
// bad TMA descriptor / wrong result) before anything is launched, the per-device SM-count cache the
// persistent schedulers need, and the "was sm_90a compiled in" probe. The kernels themselves are the
// generated csrc/sm90/*.cu (one per config of csrc/generate_sm90.py), listed in sm90_registry.cu.
#include "fused_conv2d.h"

#include <cutlass/kernel_hardware_info.hpp>

#include <atomic>
#include <cstdint>

namespace fused_resnet {
namespace sm90 {

extern const Sm90Config* const kConfigs;  // generated: csrc/sm90/sm90_registry.cu
extern const int kNumConfigs;

constexpr int kMaxDevices = 64;

cutlass::KernelHardwareInfo hw_info() {
  static std::atomic<int> sm_counts[kMaxDevices] = {};
  int device = 0;
  cudaGetDevice(&device);
  int sms = device < kMaxDevices ? sm_counts[device].load(std::memory_order_relaxed) : 0;
  if (sms == 0) {
    sms = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(device);
    if (device < kMaxDevices) sm_counts[device].store(sms, std::memory_order_relaxed);
  }
  cutlass::KernelHardwareInfo info;
  info.device_id = device;
  info.sm_count = sms;
  return info;
}

// Compiled with the same -gencode list as the kernels. The sm_90a CUTLASS kernels are empty stubs in
// any other cubin (their bodies are guarded by __CUDA_ARCH_FEAT_SM90_ALL), so the library must have
// loaded an sm_90x cubin for this device. cudaFuncGetAttributes does not synchronize (safe during
// graph capture). The build only ever emits sm_80 and sm_90a cubins, so binaryVersion 90 means 90a.
__global__ void sm90a_probe() {}

bool compiled_for_device() {
  static std::atomic<int> cached[kMaxDevices] = {};  // 0 unknown, 1 yes, 2 no
  int device = 0;
  cudaGetDevice(&device);
  int state = device < kMaxDevices ? cached[device].load(std::memory_order_relaxed) : 0;
  if (state == 0) {
    cudaFuncAttributes attr{};
    bool ok = cudaFuncGetAttributes(&attr, sm90a_probe) == cudaSuccess && attr.binaryVersion == 90;
    cudaGetLastError();  // a failed query must not leak into the caller's launch check
    state = ok ? 1 : 2;
    if (device < kMaxDevices) cached[device].store(state, std::memory_order_relaxed);
  }
  return state == 1;
}

bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15) == 0; }

}  // namespace sm90

int sm90_num_configs() { return sm90::kNumConfigs; }

const Sm90Config* sm90_config(int index) {
  return index >= 0 && index < sm90::kNumConfigs ? &sm90::kConfigs[index] : nullptr;
}

bool sm90_compiled() { return sm90::compiled_for_device(); }

int conv2d_sm90(const ConvParams& p, int index, int dtype, const Sm90Allocator* alloc, cudaStream_t stream) {
  const Sm90Config* cfg = sm90_config(index);
  if (!cfg) return kSm90BadConfig;
  if (cfg->dtype != dtype) return kSm90DtypeMismatch;
  if (p.n <= 0 || p.h <= 0 || p.w_ <= 0 || p.c <= 0 || p.k <= 0 || p.r <= 0 || p.s <= 0 || p.p <= 0 || p.q <= 0 ||
      p.stride_h <= 0 || p.stride_w <= 0 || p.dil_h <= 0 || p.dil_w <= 0 || p.pad_h < 0 || p.pad_w < 0)
    return kSm90BadProblem;
  if (p.c % 8 || p.k % 8) return kSm90Channels;
  if (cfg->kind == kSm90Gemm) {
    bool pointwise = p.r == 1 && p.s == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_h == 0 && p.pad_w == 0;
    if (!pointwise || int64_t(p.n) * p.h * p.w_ > INT32_MAX) return kSm90KindMismatch;
  }
  // TMA descriptors need 16-byte aligned base addresses; the bias is read in 16-byte vectors.
  if (!sm90::aligned16(p.x) || !sm90::aligned16(p.w) || !sm90::aligned16(p.out) || !sm90::aligned16(p.bias) ||
      (p.residual && !sm90::aligned16(p.residual)))
    return kSm90Misaligned;
  if (!sm90::compiled_for_device()) return kSm90NotCompiled;
  return cfg->run(p, alloc, stream);
}

}  // namespace fused_resnet

// For ctypes (no GPU, no torch needed): the registry as built into this library, e.g. for the
// resource report of `make ext`. Returns 0 and fills name/kind/dtype/smem, or -1 out of range.
extern "C" int fused_resnet_sm90_info(int index, const char** name, int* kind, int* dtype, int* smem_bytes) {
  const fused_resnet::Sm90Config* cfg = fused_resnet::sm90_config(index);
  if (!cfg) return -1;
  *name = cfg->name;
  *kind = cfg->kind;
  *dtype = cfg->dtype;
  *smem_bytes = cfg->smem_bytes();
  return 0;
}
