// fp16 instantiations of the CUTLASS fused conv (split from bf16 so the two compile in parallel).
#include "fused_conv2d.cuh"

namespace fused_resnet {

int conv2d_cutlass_f16(const ConvParams& p, int tile, cudaStream_t stream) {
  return dispatch_conv<cutlass::half_t>(p, tile, stream);
}

const char* cutlass_status_string(int status) {
  switch (status) {
    case kSm90BadConfig: return "sm90: config index out of range";
    case kSm90DtypeMismatch: return "sm90: the tensors' dtype is not the config's dtype";
    case kSm90KindMismatch: return "sm90: a gemm config takes only 1x1, stride-1, unpadded convs (use a conv config)";
    case kSm90Misaligned: return "sm90: a tensor's data pointer is not 16-byte aligned (TMA needs it)";
    case kSm90Channels: return "sm90: input and output channels must be multiples of 8";
    case kSm90NotCompiled: return "sm90: the library has no sm_90a code for this device (built without sm_90a)";
    case kSm90NeedsWorkspace: return "sm90: the kernel needs a workspace and none could be allocated";
    case kSm90BadProblem: return "sm90: empty or invalid conv geometry";
    default: break;
  }
  if (status < 0) return "unsupported problem";
  return cutlassGetStatusString(static_cast<cutlass::Status>(status));
}

}  // namespace fused_resnet
