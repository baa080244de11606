// fp16 instantiations of the CUTLASS fused conv (split from bf16 so the two compile in parallel).
#include "fused_conv2d.cuh"

namespace fused_resnet {

int conv2d_cutlass_f16(const ConvParams& p, int tile, cudaStream_t stream) {
  return dispatch_conv<cutlass::half_t>(p, tile, stream);
}

const char* cutlass_status_string(int status) {
  if (status < 0) return "unsupported problem";
  return cutlassGetStatusString(static_cast<cutlass::Status>(status));
}

}  // namespace fused_resnet
