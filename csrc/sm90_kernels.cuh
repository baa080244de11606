// Hopper (sm_90a) fused conv kernels from CUTLASS 3.x builders: TMA loads, WGMMA (HGMMA in SASS),
// warp-specialized producer/consumer pipelines. One template per kind; csrc/generate_sm90.py writes
// one small .cu per (kind, dtype, tile, cluster, schedule) that instantiates it.
//
//   out[n,p,q,k] = act(sum_{r,s,c} x[n, p*sh - ph + r*dh, q*sw - pw + s*dw, c] * w[k,r,s,c]
//                      + bias[k] + beta * residual[n,p,q,k])      beta = 1 with a residual, else 0
//
// x, residual, out: NHWC; w: KRSC; fp16 or bf16 in memory, fp32 accumulation and epilogue, fp32 bias.
// Both kinds see the output as a GEMM D[M = N*P*Q, N = K] with K (channels) contiguous, so the
// per-output-channel bias is CUTLASS's per-*column* bias (LinCombPerColBiasEltAct) in both:
//   conv: ConvUniversal, implicit GEMM with TMA im2col loads of x (any r/s, stride, padding, dilation);
//   gemm: 1x1 stride-1 convs are a plain TN GEMM: A = x as RowMajor [N*H*W, C], B = w as ColumnMajor
//         [C, K] (i.e. the [K, C] weight, C contiguous), C/D RowMajor [N*H*W, K]; persistent schedules.
// The epilogue computes act(beta * C + (acc + bias)) with C = the residual (beta = 0 skips its load;
// D is passed as C then so the TMA descriptor stays valid). act is MaybeReLU below: one instantiation
// serves relu and identity, chosen by a runtime flag carried in the fusion arguments.
#pragma once
#include "fused_conv2d.h"

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/kernel_hardware_info.hpp>  // before the conv builder (it uses KernelHardwareInfo)
#include <cutlass/numeric_types.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/operations.hpp>
// A TU instantiates one kind: with both the conv and the gemm builder/adapter headers in one TU, the
// conv kernel's GemmUniversal base matches two partial specializations (nvcc 13 + CUTLASS 4.2).
#if defined(FUSED_RESNET_SM90_CONV)
#include <cutlass/conv/collective/collective_builder.hpp>
#include <cutlass/conv/convnd_problem_shape.hpp>
#include <cutlass/conv/device/conv_universal_adapter.hpp>
#include <cutlass/conv/dispatch_policy.hpp>
#include <cutlass/conv/kernel/conv_universal.hpp>
#endif
#if defined(FUSED_RESNET_SM90_GEMM)
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#endif

#include <cstdint>

namespace fused_resnet {
namespace sm90 {

// relu(v) when args.relu, else v. `v <= 0 ? 0 : v` keeps NaN (the comparison is false, like
// torch.relu(NaN) = NaN) and maps -0.0 and every negative to +0.0 (torch.relu gives +0.0 there).
// CUTLASS's Sm90Compute node forwards `Arguments` to operator() when the functor defines it (as
// LeakyReLU does), so the flag is a kernel argument, not a template parameter.
template <class T>
struct MaybeReLU {
  static const bool kIsHeavy = false;
  struct Arguments {
    int relu = 0;
  };
  CUTLASS_HOST_DEVICE T operator()(T const& v, Arguments const& args = Arguments()) const {
    return (args.relu && v <= T(0)) ? T(0) : v;
  }
};

template <class T, int N>
struct MaybeReLU<cutlass::Array<T, N>> {
  static const bool kIsHeavy = false;
  using Arguments = typename MaybeReLU<T>::Arguments;
  CUTLASS_HOST_DEVICE cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& v,
                                                      Arguments const& args = Arguments()) const {
    cutlass::Array<T, N> y;
    MaybeReLU<T> op;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) y[i] = op(v[i], args);
    return y;
  }
};

template <int D>
using Int = cute::Int<D>;

// Common type choices for both kinds.
template <class Element_>
struct Types {
  using Element = Element_;
  using Acc = float;
  static constexpr int kAlign = 8;  // 16 bytes: C and K multiples of 8
  using Fusion = cutlass::epilogue::fusion::LinCombPerColBiasEltAct<
      MaybeReLU, Element, /*Compute=*/float, /*Bias=*/float, /*Source=*/Element, /*Scalar=*/float>;
};

template <class FusionArgs>
void set_fusion(FusionArgs& f, const ConvParams& a) {
  f.alpha = 1.0f;
  f.beta = a.residual ? 1.0f : 0.0f;
  f.bias_ptr = a.bias;
  f.activation.relu = a.relu ? 1 : 0;
}

// Runs a built device operator: can_implement, workspace (through the caller's allocator), launch.
template <class Op>
int launch(typename Op::Arguments const& args, const Sm90Allocator* alloc, cudaStream_t stream) {
  Op op;
  cutlass::Status st = op.can_implement(args);
  if (st != cutlass::Status::kSuccess) return static_cast<int>(st);
  size_t bytes = Op::get_workspace_size(args);
  void* workspace = nullptr;
  if (bytes) {
    if (!alloc || !alloc->alloc) return kSm90NeedsWorkspace;
    workspace = alloc->alloc(bytes, alloc->ctx);
    if (!workspace) return kSm90NeedsWorkspace;
  }
  st = op.initialize(args, workspace, stream);
  if (st != cutlass::Status::kSuccess) return static_cast<int>(st);
  return static_cast<int>(op.run(stream));
}

// The current device and its SM count (persistent schedulers size their grid with it), queried
// once per device and cached (csrc/sm90_registry.cu).
cutlass::KernelHardwareInfo hw_info();

#if defined(FUSED_RESNET_SM90_CONV)
// ---- conv: implicit GEMM with TMA im2col (non-persistent warp-specialized mainloop). ----
template <class Element, int TM, int TN, int TK, int CM, int CN>
struct ConvKernel {
  using T = Types<Element>;
  using Tile = cute::Shape<Int<TM>, Int<TN>, cute::Shape<Int<TK>>>;
  using Cluster = cute::Shape<Int<CM>, Int<CN>, cute::_1>;
  using Layout = cutlass::layout::TensorNHWC;
  static constexpr cutlass::conv::Operator kOp = cutlass::conv::Operator::kFprop;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Tile, Cluster,
      cutlass::epilogue::collective::EpilogueTileAuto, typename T::Acc, float, Element, Layout, T::kAlign,
      Element, Layout, T::kAlign, cutlass::epilogue::TmaWarpSpecialized, typename T::Fusion>::CollectiveOp;
  using Mainloop = typename cutlass::conv::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, kOp, Element, Layout, T::kAlign, Element, Layout,
      T::kAlign, typename T::Acc, Tile, Cluster,
      cutlass::conv::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      cutlass::conv::KernelImplicitTmaWarpSpecializedSm90>::CollectiveOp;
  using Problem = cutlass::conv::ConvProblemShape<kOp, Mainloop::DispatchPolicy::NumSpatialDimensions>;
  using Kernel = cutlass::conv::kernel::ConvUniversal<Problem, Mainloop, Epilogue>;
  using Op = cutlass::conv::device::ConvUniversalAdapter<Kernel>;

  static typename Op::Arguments arguments(const ConvParams& a) {
    Problem problem(cutlass::conv::Mode::kCrossCorrelation, {a.n, a.h, a.w_, a.c}, {a.k, a.r, a.s, a.c},
                    {a.pad_h, a.pad_w}, {a.pad_h, a.pad_w}, {a.stride_h, a.stride_w}, {a.dil_h, a.dil_w}, 1);
    // C/D strides over the GEMM modes ((Q, P, N), K): element strides of NPQK.
    typename Kernel::StrideC dC;
    cute::get<0, 0>(dC) = a.k;
    cute::get<0, 1>(dC) = int64_t(a.q) * a.k;
    cute::get<0, 2>(dC) = int64_t(a.p) * a.q * a.k;
    auto out = static_cast<Element*>(a.out);
    auto res = a.residual ? static_cast<Element const*>(a.residual) : out;

    typename Op::Arguments args{};
    args.problem_shape = problem;
    args.mainloop.ptr_A = static_cast<Element const*>(a.x);
    args.mainloop.ptr_B = static_cast<Element const*>(a.w);
    set_fusion(args.epilogue.thread, a);
    args.epilogue.ptr_C = res;
    args.epilogue.dC = dC;
    args.epilogue.ptr_D = out;
    args.epilogue.dD = dC;
    args.hw_info = hw_info();
    return args;
  }
};

#endif  // FUSED_RESNET_SM90_CONV

#if defined(FUSED_RESNET_SM90_GEMM)
// ---- gemm: 1x1 stride-1 conv as D[M, K] = X[M, C] . W[K, C]^T, persistent schedules. ----
struct Cooperative {
  using Kernel = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using Epilogue = cutlass::epilogue::TmaWarpSpecializedCooperative;
};
struct Pingpong {
  using Kernel = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
  using Epilogue = cutlass::epilogue::TmaWarpSpecialized;
};

template <class Element, class Schedule, int TM, int TN, int TK, int CM, int CN>
struct GemmKernel {
  using T = Types<Element>;
  using Tile = cute::Shape<Int<TM>, Int<TN>, Int<TK>>;
  using Cluster = cute::Shape<Int<CM>, Int<CN>, cute::_1>;
  using RowMajor = cutlass::layout::RowMajor;
  using ColumnMajor = cutlass::layout::ColumnMajor;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Tile, Cluster,
      cutlass::epilogue::collective::EpilogueTileAuto, typename T::Acc, float, Element, RowMajor, T::kAlign,
      Element, RowMajor, T::kAlign, typename Schedule::Epilogue, typename T::Fusion>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, RowMajor, T::kAlign, Element, ColumnMajor,
      T::kAlign, typename T::Acc, Tile, Cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      typename Schedule::Kernel>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, Mainloop, Epilogue>;
  using Op = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Op::Arguments arguments(const ConvParams& a) {
    const int m = a.n * a.h * a.w_;  // the caller checked it fits in int
    typename Kernel::StrideA dA{};   // [M, C], C contiguous
    cute::get<0>(dA) = a.c;
    cute::get<2>(dA) = int64_t(m) * a.c;
    typename Kernel::StrideB dB{};   // [K, C], C contiguous
    cute::get<0>(dB) = a.c;
    cute::get<2>(dB) = int64_t(a.k) * a.c;
    typename Kernel::StrideC dC{};   // [M, K], K contiguous
    cute::get<0>(dC) = a.k;
    cute::get<2>(dC) = int64_t(m) * a.k;
    auto out = static_cast<Element*>(a.out);
    auto res = a.residual ? static_cast<Element const*>(a.residual) : out;

    typename Op::Arguments args{};
    args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
    args.problem_shape = {m, a.k, a.c, 1};
    args.mainloop.ptr_A = static_cast<Element const*>(a.x);
    args.mainloop.dA = dA;
    args.mainloop.ptr_B = static_cast<Element const*>(a.w);
    args.mainloop.dB = dB;
    set_fusion(args.epilogue.thread, a);
    args.epilogue.ptr_C = res;
    args.epilogue.dC = dC;
    args.epilogue.ptr_D = out;
    args.epilogue.dD = dC;
    args.hw_info = hw_info();
    return args;
  }
};

#endif  // FUSED_RESNET_SM90_GEMM

// What each generated TU exports: a launcher and the kernel's dynamic shared memory in bytes.
template <class K>
int run(const ConvParams& a, const Sm90Allocator* alloc, cudaStream_t stream) {
  return launch<typename K::Op>(K::arguments(a), alloc, stream);
}
template <class K>
int smem_bytes() {
  return static_cast<int>(K::Kernel::SharedStorageSize);
}

}  // namespace sm90
}  // namespace fused_resnet
