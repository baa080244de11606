// bf16 instantiations of the CUTLASS fused conv.
#include "fused_conv2d.cuh"

namespace fused_resnet {

int conv2d_cutlass_bf16(const ConvParams& p, int tile, cudaStream_t stream) {
  return dispatch_conv<cutlass::bfloat16_t>(p, tile, stream);
}

}  // namespace fused_resnet
