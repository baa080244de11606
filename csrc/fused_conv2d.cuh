// CUTLASS 2.x implicit-GEMM conv2d forward (fprop), NHWC, tensor cores (sm_80 instructions: they run
// on sm_80/86/89/90), with the fused epilogue LinearCombinationBiasElementwise:
//     Z = act(alpha * acc + beta * residual + bias[k])       alpha = 1, beta = 1 with a residual, else 0
// (beta = 0 makes the epilogue skip the residual read). Bias is fp32; accumulation and epilogue fp32.
#pragma once
#include "fused_conv2d.h"

#include <cutlass/cutlass.h>
#include <cutlass/conv/conv2d_problem_size.h>
#include <cutlass/conv/device/implicit_gemm_convolution.h>
#include <cutlass/conv/kernel/default_conv2d_fprop_with_broadcast.h>
#include <cutlass/epilogue/thread/activation.h>
#include <cutlass/epilogue/thread/linear_combination_bias_elementwise.h>

namespace fused_resnet {

// Tile shapes: threadblock / warp / stages. Large for big output-pixel counts, small for batch-1
// layer3/4 (196 / 49 pixels) where a 128x128 tile leaves most SMs idle.
struct TileLarge {
  using Threadblock = cutlass::gemm::GemmShape<128, 128, 64>;
  using Warp = cutlass::gemm::GemmShape<64, 64, 64>;
  static constexpr int kStages = 3;
};
struct TileSmall {
  using Threadblock = cutlass::gemm::GemmShape<64, 64, 64>;
  using Warp = cutlass::gemm::GemmShape<32, 32, 64>;
  static constexpr int kStages = 4;
};

template <typename Element, typename Act, typename Tile>
int run_conv(const ConvParams& a, cudaStream_t stream) {
  using Acc = float;
  constexpr int kAlign = 8;  // 16-byte accesses: channels must be multiples of 8
  using EpilogueOp = cutlass::epilogue::thread::LinearCombinationBiasElementwise<
      Element, Acc, Acc, Element, Element, kAlign, Act, cutlass::plus<Acc>, /*StoreT=*/false, /*ElementVector=*/float>;
  using Kernel = typename cutlass::conv::kernel::DefaultConv2dFpropWithBroadcast<
      Element, cutlass::layout::TensorNHWC, Element, cutlass::layout::TensorNHWC, Element,
      cutlass::layout::TensorNHWC, Acc, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
      typename Tile::Threadblock, typename Tile::Warp, cutlass::gemm::GemmShape<16, 8, 16>, EpilogueOp,
      cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<4>, Tile::kStages, cutlass::arch::OpMultiplyAdd,
      cutlass::conv::IteratorAlgorithm::kOptimized, cutlass::conv::StrideSupport::kStrided, kAlign, kAlign>::Kernel;
  using Conv = cutlass::conv::device::ImplicitGemmConvolution<Kernel>;

  cutlass::conv::Conv2dProblemSize problem(
      {a.n, a.h, a.w_, a.c}, {a.k, a.r, a.s, a.c}, {a.pad_h, a.pad_h, a.pad_w, a.pad_w}, {a.stride_h, a.stride_w},
      {a.dil_h, a.dil_w}, {a.n, a.p, a.q, a.k}, cutlass::conv::Mode::kCrossCorrelation, 1);
  using Layout = cutlass::layout::TensorNHWC;
  auto x = static_cast<Element*>(const_cast<void*>(a.x));
  auto w = static_cast<Element*>(const_cast<void*>(a.w));
  auto out = static_cast<Element*>(a.out);
  auto res = a.residual ? static_cast<Element*>(const_cast<void*>(a.residual)) : out;
  Layout lx = Layout::packed({a.n, a.h, a.w_, a.c});
  Layout lw = Layout::packed({a.k, a.r, a.s, a.c});
  Layout lo = Layout::packed({a.n, a.p, a.q, a.k});
  typename EpilogueOp::Params epilogue(1.0f, a.residual ? 1.0f : 0.0f);
  typename Conv::Arguments args(problem, {x, lx}, {w, lw}, {res, lo}, {out, lo}, epilogue,
                                cutlass::conv::SplitKMode::kSerial, const_cast<float*>(a.bias), nullptr, 0, 0);
  Conv op;
  cutlass::Status st = op.can_implement(args);
  if (st != cutlass::Status::kSuccess) return static_cast<int>(st);
  if (op.get_workspace_size(args) != 0) return -1;  // serial split-K 1 needs none
  st = op.initialize(args, nullptr, stream);
  if (st != cutlass::Status::kSuccess) return static_cast<int>(st);
  st = op(stream);
  return static_cast<int>(st);
}

template <typename Element>
int dispatch_conv(const ConvParams& a, int tile, cudaStream_t stream) {
  using cutlass::epilogue::thread::Identity;
  using cutlass::epilogue::thread::ReLu;
  if (tile == kTileLarge) {  // chosen in Python (fused_resnet/tactics/cutlass.py: sm80_tile)
    return a.relu ? run_conv<Element, ReLu<float>, TileLarge>(a, stream)
                  : run_conv<Element, Identity<float>, TileLarge>(a, stream);
  }
  return a.relu ? run_conv<Element, ReLu<float>, TileSmall>(a, stream)
                : run_conv<Element, Identity<float>, TileSmall>(a, stream);
}

}  // namespace fused_resnet
