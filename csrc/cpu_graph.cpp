// fused_resnet's CPU graph: a whole torchvision ResNet forward as a list of oneDNN primitives, built
// once per input signature and run from C++ with no torch op in between (fused_resnet/_cpu_graph.py
// builds it; fused_resnet.optimize runs it for CPU inputs).
//
// It builds against the oneDNN C API headers torch ships and runs on a separately installed libdnnl
// (the `onednn-cpu-gomp` wheel: GNU OpenMP, the runtime torch's own oneDNN uses, so both share one
// thread pool). Only the C API is called; its symbols and the enum values used here are the same
// across oneDNN 3.x (the loader checks the library's major version).
//
// Every activation is a buffer allocated once and kept with the net (no fresh pages to fault in;
// the builder reuses a buffer whose values are dead for the next one of the same shape). Convs carry
// BN folded into weight and bias, the residual add as oneDNN's sum post-op (written over the
// residual's buffer) and ReLU as its eltwise post-op. That ReLU maps NaN to 0 where torch.relu keeps
// it, so before each conv the net proves that no NaN or Inf can arise, with the finite bound the
// library's eager path uses:
//     bound(out) = bound(in) * gain(W) + max|bias| (+ bound(residual)),
// gain(W) the largest per-output-channel sum of |W|. A propagated bound past the float32 limit is
// replaced by the measured max|x| of the buffer (one read pass); if the bound still fails (a NaN or
// Inf in the input or the weights, values near the float32 range), forward() returns None before
// running that step and the caller runs the model itself: nothing the caller can see was written.
//
// Where oneDNN offers several implementations for a conv (e.g. brgconv and its direct jit kernel for
// NHWC), the first build of that conv shape in the process times each on the net's buffers and keeps
// the fastest (Net::choose_impl); some convs have an Alternative of the project's own, timed against
// that choice the same way (Phases for stride-2 3x3 convs, Wino, cpu_winograd.h, for stride-1 ones).
// The classifier is oneDNN's inner product, written into the result.
#include <torch/extension.h>

#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "cpu_winograd.h"

#define DNNL_OK(call)                                                                       \
  do {                                                                                     \
    dnnl_status_t s_ = (call);                                                             \
    TORCH_CHECK(s_ == dnnl_success, #call " failed with oneDNN status ", static_cast<int>(s_)); \
  } while (0)

namespace {

// n zeroed floats that the net keeps (activations, packed weights, the scratchpad). A large one is
// marked for transparent huge pages (madvise) before its pages are first touched, so a conv streaming
// through tens of MB of activations and weights walks far fewer page tables (ResNet-50 at batch 8 on
// an AVX2 VM: ~2% faster; benchmarks/NOTES.md). The kernel backs with huge pages the 2 MB-aligned
// stretches inside the allocation; no padding is added. Without THP the advice changes nothing.
torch::Tensor kept_zeros(int64_t n) {
  torch::Tensor t = torch::empty({std::max<int64_t>(n, 1)}, torch::kFloat);
  const uintptr_t huge = uintptr_t(2) << 20, page = 4096;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr()), end = begin + t.numel() * sizeof(float);
  const uintptr_t first = (begin + page - 1) & ~(page - 1), last = end & ~(page - 1);
  if (last > first && last - first >= 2 * huge)
    madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // (an error leaves 4 KB pages)
  return t.zero_();
}

struct Buffer {
  int64_t c, h, w;
  int64_t tag;  // dnnl_format_tag_t of the activations (acdb = NHWC, aBcd8b = nChw8c, ...); unused for the input
  dnnl_memory_desc_t md = nullptr;
  torch::Tensor storage;  // kept across forwards
  dnnl_memory_t mem = nullptr;
  double bound = 0.0;  // finite bound of the values written this forward
};

struct Step {
  enum Kind { CONV, MAXPOOL, AVGPOOL, REORDER, LINEAR } kind;
  int src, dst;
  // conv
  torch::Tensor weight, bias;  // user layout (OIHW), fp32
  int64_t stride = 1, pad = 0, kernel = 1;
  bool relu = false, sum = false;
  double gain = 0.0, bias_max = 0.0;
  torch::Tensor packed_weight;  // in the primitive's chosen layout
  dnnl_memory_t w_mem = nullptr, b_mem = nullptr;
  dnnl_primitive_t prim = nullptr;
  std::vector<dnnl_exec_arg_t> args;
  std::shared_ptr<struct Alternative> alt;  // set: the conv runs as this (Phases, Wino) instead of prim
};

// A conv computed by something other than one oneDNN primitive, which the net times against oneDNN's
// kernel for it and keeps where faster (Net::choose_alternative): Phases, Wino.
struct Alternative {
  std::string impl;  // its name in the net's implementations (no spaces)
  virtual ~Alternative() = default;
  virtual void run(dnnl_stream_t stream) = 0;
  virtual size_t scratch() const { return 0; }  // bytes of oneDNN scratchpad it needs
  virtual void set_scratch(dnnl_memory_t) {}
  // The largest magnitude its intermediate values can reach, before bias and residual, for an input
  // within `bound` and weights of `gain` (the largest per-output-channel sum of |w|): the direct
  // conv's bound * gain, unless it computes other sums.
  virtual double peak(double bound, double gain) const { return bound * gain; }
};

// A 3x3 stride-2 conv (padding 1) on NHWC activations, computed as four stride-1 convs, one per phase
// of its input (even or odd rows x even or odd columns). Output row i reads input rows 2i-1, 2i and
// 2i+1: row 2i is even row i, rows 2i-1 and 2i+1 are odd rows i-1 and i. So the even rows meet kernel
// row 1 (a one-row kernel) and the odd rows kernel rows 0 and 2 (a two-row kernel, padded by one row
// on top), and the same for columns: sub-kernels of 1x1, 1x2, 2x1 and 2x2, nine taps in all, the
// conv's own products summed in another order. Each phase is copied out of the input; the four convs
// add into dst through sum post-ops (the bias and the step's own residual sum on the first, its ReLU
// on the last). Why: oneDNN 3.2's brgconv runs the stride-2 conv of ResNet-50's layer4 at batch 8 at
// ~150 GFLOP/s on AVX2, its stride-1 convs at ~190 (benchmarks/NOTES.md). Net builds it as one more
// candidate for such a conv and keeps it where it is timed faster.
struct Phases : Alternative {
  struct Part {
    Step conv{Step::CONV, 0, 0};  // the sub-kernel's conv, reading `mem`
    int64_t r = 0, q = 0;         // odd (1) or even (0) rows, columns
    torch::Tensor storage;        // the phase's activations, dense NHWC
    dnnl_memory_desc_t md = nullptr;
    dnnl_memory_t mem = nullptr;
    size_t scratch = 0;  // the conv's scratchpad bytes (its last argument)
  };
  std::vector<Part> parts;
  const float* src = nullptr;  // the step's input, NHWC
  int64_t n = 0, c = 0, h = 0, w = 0;
  ~Phases() override {
    for (auto& p : parts) {
      if (p.conv.prim) dnnl_primitive_destroy(p.conv.prim);
      if (p.conv.w_mem) dnnl_memory_destroy(p.conv.w_mem);
      if (p.mem) dnnl_memory_destroy(p.mem);
      if (p.md) dnnl_memory_desc_destroy(p.md);
    }
  }
  size_t scratch() const override {
    size_t s = 0;
    for (auto& p : parts) s = std::max(s, p.scratch);
    return s;
  }
  void set_scratch(dnnl_memory_t m) override {
    for (auto& p : parts) p.conv.args.back().memory = m;
  }
  // The phase's pixels copied out of the input, each a run of c floats. (Not a oneDNN reorder from a
  // strided view of the input: oneDNN 3.2 refuses that view where the map's size is odd, as the even
  // rows' stride times their count then passes the image's stride.)
  void copy(const Part& p) const {
    const int64_t rh = p.r ? h / 2 : (h + 1) / 2, rw = p.q ? w / 2 : (w + 1) / 2;
    float* out = p.storage.data_ptr<float>();
#pragma omp parallel for collapse(2)
    for (int64_t b = 0; b < n; ++b)
      for (int64_t i = 0; i < rh; ++i) {
        const float* row = src + ((b * h + 2 * i + p.r) * w + p.q) * c;
        float* o = out + (b * rh + i) * rw * c;
        for (int64_t j = 0; j < rw; ++j) std::memcpy(o + j * c, row + 2 * j * c, c * sizeof(float));
      }
  }
  void run(dnnl_stream_t stream) override {
    for (auto& p : parts) {
      copy(p);
      DNNL_OK(dnnl_primitive_execute(p.conv.prim, stream, static_cast<int>(p.conv.args.size()), p.conv.args.data()));
    }
  }
};

// A 3x3 stride-1 conv as Winograd's F(2x2, 3x3) (cpu_winograd.h: 2.25x fewer multiplications than
// the direct conv, AVX2), on the net's buffers; its packed weights and work buffers are kept here.
struct Wino : Alternative {
  std::vector<torch::Tensor> keep;
  std::unique_ptr<winograd::Conv> conv;
  const float* src = nullptr;
  float* dst = nullptr;
  void run(dnnl_stream_t) override { conv->run(src, dst); }
  // the transformed input reaches 4 x bound whatever the weights; the sums 36 x bound x gain
  double peak(double bound, double gain) const override { return bound * std::max(winograd::HEADROOM * gain, 4.0); }
};

class Net {
 public:
  Net() {
    DNNL_OK(dnnl_engine_create(&engine_, dnnl_cpu, 0));
    DNNL_OK(dnnl_stream_create(&stream_, engine_, dnnl_stream_default_flags));
  }
  ~Net() {
    for (auto& s : steps_) {
      s.alt.reset();  // (its primitives and memories before the engine)
      if (s.prim) dnnl_primitive_destroy(s.prim);
      if (s.w_mem) dnnl_memory_destroy(s.w_mem);
      if (s.b_mem) dnnl_memory_destroy(s.b_mem);
    }
    for (auto& b : buffers_) {
      if (b.mem) dnnl_memory_destroy(b.mem);
      if (b.md) dnnl_memory_desc_destroy(b.md);
    }
    if (scratch_mem_) dnnl_memory_destroy(scratch_mem_);
    if (out_mem_) dnnl_memory_destroy(out_mem_);
    dnnl_stream_destroy(stream_);
    dnnl_engine_destroy(engine_);
  }

  int64_t add_buffer(int64_t c, int64_t h, int64_t w, int64_t tag) {
    buffers_.push_back(Buffer{c, h, w, tag});
    return static_cast<int64_t>(buffers_.size()) - 1;
  }

  void add_conv(int64_t src, int64_t dst, torch::Tensor weight, torch::Tensor bias, int64_t stride, int64_t pad,
                bool relu, bool sum) {
    TORCH_CHECK(weight.dim() == 4 && weight.scalar_type() == torch::kFloat, "conv weight: 4-d float32 expected");
    TORCH_CHECK(weight.size(2) == weight.size(3), "square kernels only");
    Step s{Step::CONV, static_cast<int>(src), static_cast<int>(dst)};
    s.weight = weight.contiguous();
    s.bias = bias.contiguous();
    s.stride = stride;
    s.pad = pad;
    s.kernel = weight.size(2);
    s.relu = relu;
    s.sum = sum;
    s.gain = s.weight.abs().sum({1, 2, 3}).max().item<double>();
    s.bias_max = s.bias.abs().max().item<double>();
    steps_.push_back(std::move(s));
  }

  void add_pool(int64_t src, int64_t dst, bool max, int64_t kernel, int64_t stride, int64_t pad) {
    Step s{max ? Step::MAXPOOL : Step::AVGPOOL, static_cast<int>(src), static_cast<int>(dst)};
    s.kernel = kernel;
    s.stride = stride;
    s.pad = pad;
    steps_.push_back(std::move(s));
  }

  // The classifier: an inner product over the (n, c, 1, 1) buffer src into a fresh (n, out) tensor per
  // forward, the net's result. weight: (out, c) float32; bias: (out,). No post-op, so NaN and Inf
  // propagate as in torch's linear. (oneDNN's kernel rather than torch's: on AMD CPUs the sgemm torch
  // calls took 0.84 ms hot at batch 8 for this 33 MFLOP product; benchmarks/NOTES.md.)
  void add_linear(int64_t src, torch::Tensor weight, torch::Tensor bias) {
    TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == torch::kFloat && bias.dim() == 1 &&
                    bias.scalar_type() == torch::kFloat && bias.size(0) == weight.size(0),
                "linear: a 2-d float32 weight and a float32 bias of its rows expected");
    TORCH_CHECK(src >= 0 && src < static_cast<int64_t>(buffers_.size()) && buffers_[src].h == 1 &&
                    buffers_[src].w == 1 && buffers_[src].c == weight.size(1),
                "linear: a 1x1 source buffer with the weight's input features expected");
    Step s{Step::LINEAR, static_cast<int>(src), static_cast<int>(src)};
    s.weight = weight.contiguous();
    s.bias = bias.contiguous();
    steps_.push_back(std::move(s));
  }

  // Weights reordered once into the layout the chosen kernel wants (s.packed_weight, s.w_mem).
  void pack_weight(Step& s, const_dnnl_memory_desc_t w_user, const_dnnl_memory_desc_t w_md) {
    s.packed_weight = kept_zeros(static_cast<int64_t>(dnnl_memory_desc_get_size(w_md) / 4));
    DNNL_OK(dnnl_memory_create(&s.w_mem, w_md, engine_, s.packed_weight.data_ptr()));
    dnnl_memory_t user_mem;
    DNNL_OK(dnnl_memory_create(&user_mem, w_user, engine_, s.weight.data_ptr()));
    dnnl_primitive_desc_t rpd;
    dnnl_primitive_t reorder;
    DNNL_OK(dnnl_reorder_primitive_desc_create(&rpd, w_user, engine_, w_md, engine_, nullptr));
    DNNL_OK(dnnl_primitive_create(&reorder, rpd));
    dnnl_exec_arg_t rargs[2] = {{DNNL_ARG_FROM, user_mem}, {DNNL_ARG_TO, s.w_mem}};
    DNNL_OK(dnnl_primitive_execute(reorder, stream_, 2, rargs));
    DNNL_OK(dnnl_stream_wait(stream_));
    dnnl_primitive_destroy(reorder);
    dnnl_primitive_desc_destroy(rpd);
    dnnl_memory_destroy(user_mem);
  }

  static std::string impl_name(const_dnnl_primitive_desc_t pd) {
    const char* impl = nullptr;
    DNNL_OK(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl));
    return impl ? impl : "?";
  }

  // One candidate implementation of a conv, ready to run on the net's buffers: its own packed weights
  // and scratchpad.
  struct Trial {
    Step step;
    torch::Tensor scratch;
    dnnl_memory_t sp_mem = nullptr;
    dnnl_primitive_t prim = nullptr;
    std::vector<dnnl_exec_arg_t> args;
    std::shared_ptr<Alternative> alt;  // set: this candidate is an Alternative, not a oneDNN primitive
    double best = INFINITY;  // shortest time seen, ms
  };

  void start_trial(Trial& t, const_dnnl_primitive_desc_t pd, const Step& s, const_dnnl_memory_desc_t w_user,
                   dnnl_memory_t b_mem, const Buffer& src, const Buffer& dst) {
    t.step = Step{Step::CONV, s.src, s.dst};
    t.step.weight = s.weight;
    pack_weight(t.step, w_user, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0));
    const_dnnl_memory_desc_t sp = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    DNNL_OK(dnnl_primitive_create(&t.prim, pd));
    t.args = {{DNNL_ARG_SRC, src.mem}, {DNNL_ARG_WEIGHTS, t.step.w_mem}, {DNNL_ARG_BIAS, b_mem}, {DNNL_ARG_DST, dst.mem}};
    if (sp && dnnl_memory_desc_get_size(sp) > 0) {
      t.scratch = torch::empty({static_cast<int64_t>(dnnl_memory_desc_get_size(sp) / 4 + 16)}, torch::kFloat);
      DNNL_OK(dnnl_memory_create(&t.sp_mem, sp, engine_, t.scratch.data_ptr()));
      t.args.push_back({DNNL_ARG_SCRATCHPAD, t.sp_mem});
    }
    run_trial(t);  // untimed: first-touch of its weights and scratchpad
  }

  // Runs the candidate once; returns its wall time in ms and keeps the shortest.
  double run_trial(Trial& t) {
    auto t0 = std::chrono::steady_clock::now();
    if (t.alt)
      t.alt->run(stream_);
    else
      DNNL_OK(dnnl_primitive_execute(t.prim, stream_, static_cast<int>(t.args.size()), t.args.data()));
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    t.best = std::min(t.best, ms);
    return ms;
  }

  void end_trial(Trial& t) {
    t.alt.reset();
    if (t.prim) dnnl_primitive_destroy(t.prim);
    if (t.sp_mem) dnnl_memory_destroy(t.sp_mem);
    if (t.step.w_mem) dnnl_memory_destroy(t.step.w_mem);
    t.prim = nullptr;
    t.sp_mem = t.step.w_mem = nullptr;
  }

  // The conv's implementation: oneDNN's first choice, or another it offers on the same ISA (e.g. its
  // direct jit kernel where it would pick brgconv) when that one runs faster here. Each candidate is
  // timed on the net's buffers, alternating, and another is taken only when its shortest time beats
  // the first choice's by TUNE_MARGIN. Choices are kept per process by the conv's full description,
  // so a rebuilt net (new weights) and repeated blocks of one shape are timed once.
  dnnl_primitive_desc_t choose_impl(dnnl_primitive_desc_t pd, const Step& s, const_dnnl_memory_desc_t w_user,
                                    dnnl_memory_t b_mem, const Buffer& src, const Buffer& dst) {
    const std::string first = impl_name(pd);
    if (first.rfind("ref", 0) == 0) return pd;  // no fast kernel at all: the builder refuses the net
    const std::string isa = first.substr(first.rfind(':') + 1);
    std::vector<dnnl_primitive_desc_t> cands;
    std::vector<std::string> names;
    dnnl_primitive_desc_t c;
    DNNL_OK(dnnl_primitive_desc_clone(&c, pd));
    cands.push_back(c);
    names.push_back(first);
    while (dnnl_primitive_desc_next_impl(pd) == dnnl_success) {
      std::string name = impl_name(pd);
      if (name.substr(name.rfind(':') + 1) != isa || name.rfind("ref", 0) == 0) continue;  // an older ISA, gemm, reference loops
      DNNL_OK(dnnl_primitive_desc_clone(&c, pd));
      cands.push_back(c);
      names.push_back(name);
    }
    dnnl_primitive_desc_destroy(pd);
    const std::string key = conv_key(s, src, dst);
    size_t pick = 0;
    std::lock_guard<std::mutex> guard(tune_mutex());  // (nets of two models may be built on two threads)
    auto hit = tune_cache().find(key);
    if (hit != tune_cache().end()) {
      // The same implementation as before: the k-th candidate of that name. (By name and rank, not by
      // position: oneDNN 3.2 can list more candidates for the same conv on a later build, e.g. 7 where
      // the first build listed 4, so a position would name another kernel.)
      size_t rank = 0;
      for (size_t i = 0; i < names.size(); ++i)
        if (names[i] == hit->second.second && rank++ == hit->second.first) pick = i;
    } else if (cands.size() > 1) {
      // Timed alternately, tune_rounds_ runs each; after the first round a candidate over 1.25x the
      // fastest is dropped (oneDNN's direct kernel for a 1x1 conv, typically 1.5-3x).
      std::vector<Trial> trials(cands.size());
      for (size_t i = 0; i < cands.size(); ++i) start_trial(trials[i], cands[i], s, w_user, b_mem, src, dst);
      for (int round = 0; round < tune_rounds_; ++round) {
        double fastest = INFINITY;
        for (size_t i = 0; i < cands.size(); ++i)
          if (trials[i].prim) fastest = std::min(fastest, run_trial(trials[i]));
        if (round == 0)
          for (auto& t : trials)
            if (t.prim && t.best > 1.25 * fastest) end_trial(t);
      }
      for (size_t i = 1; i < cands.size(); ++i)
        if (trials[i].best < trials[pick].best * (pick == 0 ? 1.0 - TUNE_MARGIN : 1.0)) pick = i;
      std::string line = key + ":";
      for (size_t i = 0; i < cands.size(); ++i) line += " " + names[i] + " " + std::to_string(trials[i].best);
      tune_log_.push_back(line + " -> " + names[pick]);
      tune_cache()[key] = {static_cast<size_t>(std::count(names.begin(), names.begin() + pick, names[pick])), names[pick]};
      for (auto& t : trials) end_trial(t);
    }
    for (size_t i = 0; i < cands.size(); ++i)
      if (i != pick) dnnl_primitive_desc_destroy(cands[i]);
    return cands[pick];
  }

  std::string conv_key(const Step& s, const Buffer& src, const Buffer& dst) const {
    return std::to_string(n_) + " " + std::to_string(src.c) + "x" + std::to_string(src.h) + " t" +
           std::to_string(src.tag) + " -> " + std::to_string(dst.c) + "x" + std::to_string(dst.h) + " t" +
           std::to_string(dst.tag) + " k" + std::to_string(s.kernel) + " s" + std::to_string(s.stride) + " p" +
           std::to_string(s.pad) + (s.sum ? " sum" : "") + (s.relu ? " relu" : "") + " threads" +
           std::to_string(omp_get_max_threads());
  }

  // Whether Phases can compute this conv: 3x3, stride 2, padding 1, NHWC in and out, a map of at
  // least 4x4 (so every phase has rows and columns).
  static bool phases_fit(const Step& s, const Buffer& src, const Buffer& dst) {
    return s.kernel == 3 && s.stride == 2 && s.pad == 1 && src.tag == dnnl_acdb && dst.tag == dnnl_acdb &&
           src.storage.defined() && src.h >= 4 && src.w >= 4;
  }

  // The conv s as Phases (see there), or nullptr where oneDNN has only reference loops for a part.
  std::shared_ptr<Phases> make_phases(const Step& s, const Buffer& src, const Buffer& dst) {
    auto ph = std::make_shared<Phases>();
    const int64_t c = src.c, oc = s.weight.size(0);
    ph->src = src.storage.data_ptr<float>();
    ph->n = n_;
    ph->c = c;
    ph->h = src.h;
    ph->w = src.w;
    std::vector<std::string> kernels;  // of the parts
    for (int r = 1; r >= 0; --r) {  // r, q: the odd (1) or even (0) rows, columns; the 2x2 part first
      for (int q = 1; q >= 0; --q) {
        ph->parts.emplace_back();
        Phases::Part& p = ph->parts.back();
        const bool first = ph->parts.size() == 1, last = ph->parts.size() == 4;
        const int64_t rh = r ? src.h / 2 : (src.h + 1) / 2, rw = q ? src.w / 2 : (src.w + 1) / 2;
        p.r = r;
        p.q = q;
        dnnl_dims_t dims = {n_, c, rh, rw};
        DNNL_OK(dnnl_memory_desc_create_with_tag(&p.md, 4, dims, dnnl_f32, dnnl_acdb));
        p.storage = kept_zeros(n_ * c * rh * rw);
        DNNL_OK(dnnl_memory_create(&p.mem, p.md, engine_, p.storage.data_ptr()));
        // the sub-kernel: kernel rows {0, 2} for odd rows, {1} for even ones; the same for columns
        auto taps = [](int odd) { return odd ? torch::tensor({0, 2}) : torch::tensor({1}); };
        p.conv.weight = s.weight.index_select(2, taps(r)).index_select(3, taps(q)).contiguous();
        dnnl_primitive_attr_t attr;
        DNNL_OK(dnnl_primitive_attr_create(&attr));
        DNNL_OK(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
        dnnl_post_ops_t po;
        DNNL_OK(dnnl_post_ops_create(&po));
        if (!first || s.sum) DNNL_OK(dnnl_post_ops_append_sum(po, 1.0f, 0, dnnl_data_type_undef));
        if (last && s.relu) DNNL_OK(dnnl_post_ops_append_eltwise(po, dnnl_eltwise_relu, 0.0f, 0.0f));
        DNNL_OK(dnnl_primitive_attr_set_post_ops(attr, po));
        dnnl_post_ops_destroy(po);
        dnnl_memory_desc_t w_any, w_user, b_md;
        dnnl_dims_t wd = {oc, c, r ? 2 : 1, q ? 2 : 1}, bd = {oc};
        DNNL_OK(dnnl_memory_desc_create_with_tag(&w_any, 4, wd, dnnl_f32, dnnl_format_tag_any));
        DNNL_OK(dnnl_memory_desc_create_with_tag(&w_user, 4, wd, dnnl_f32, dnnl_abcd));
        DNNL_OK(dnnl_memory_desc_create_with_tag(&b_md, 1, bd, dnnl_f32, dnnl_a));
        // one row (column) of padding before the odd phase, one after it where the map's size is odd
        dnnl_dims_t one = {1, 1}, dil = {0, 0}, pad_l = {r, q}, pad_r = {r ? src.h % 2 : 0, q ? src.w % 2 : 0};
        dnnl_primitive_desc_t pd;
        DNNL_OK(dnnl_convolution_forward_primitive_desc_create(&pd, engine_, dnnl_forward_inference,
                                                               dnnl_convolution_direct, p.md, w_any,
                                                               first ? b_md : nullptr, dst.md, one, dil, pad_l,
                                                               pad_r, attr));
        dnnl_primitive_attr_destroy(attr);
        const std::string impl = impl_name(pd);
        if (std::find(kernels.begin(), kernels.end(), impl) == kernels.end()) kernels.push_back(impl);
        bool fast = impl.rfind("ref", 0) != 0;
        if (fast) {
          pack_weight(p.conv, w_user, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0));
          const_dnnl_memory_desc_t sp = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
          p.scratch = sp ? dnnl_memory_desc_get_size(sp) : 0;
          DNNL_OK(dnnl_primitive_create(&p.conv.prim, pd));
          p.conv.args = {{DNNL_ARG_SRC, p.mem}, {DNNL_ARG_WEIGHTS, p.conv.w_mem}, {DNNL_ARG_DST, dst.mem}};
          if (first) p.conv.args.push_back({DNNL_ARG_BIAS, s.b_mem});
          p.conv.args.push_back({DNNL_ARG_SCRATCHPAD, nullptr});  // (set_scratch)
        }
        dnnl_primitive_desc_destroy(pd);
        for (auto md : {w_any, w_user, b_md}) dnnl_memory_desc_destroy(md);
        if (!fast) return nullptr;
      }
    }
    // the parts' kernels, each named once, "+" between (no spaces: a tune_log line is split on them)
    ph->impl = "phases(";
    for (size_t i = 0; i < kernels.size(); ++i) ph->impl += (i ? "+" : "") + kernels[i];
    ph->impl += ")";
    return ph;
  }

  // Whether Wino can compute this conv: 3x3, stride 1, padding 1, NHWC or nChw8c in and out (whole
  // 8-channel blocks), on a CPU with AVX2 and FMA.
  static bool wino_fit(const Step& s, const Buffer& src, const Buffer& dst) {
    auto layout = [](const Buffer& b) { return (b.tag == dnnl_acdb || b.tag == dnnl_aBcd8b) && b.c % 8 == 0; };
    return s.kernel == 3 && s.stride == 1 && s.pad == 1 && layout(src) && layout(dst) && src.storage.defined() &&
           src.h == dst.h && src.w == dst.w && winograd::supported();
  }

  std::shared_ptr<Wino> make_wino(const Step& s, const Buffer& src, const Buffer& dst) {
    auto wi = std::make_shared<Wino>();
    winograd::Shape shape;
    shape.n = n_;
    shape.c = src.c;
    shape.k = dst.c;
    shape.h = src.h;
    shape.w = src.w;
    shape.blocked_src = src.tag == dnnl_aBcd8b;
    shape.blocked_dst = dst.tag == dnnl_aBcd8b;
    shape.relu = s.relu;
    shape.sum = s.sum;
    auto alloc = [&wi](int64_t n) {  // (Wino's vector loads and stores need 32-byte alignment)
      wi->keep.push_back(kept_zeros(n));
      float* p = wi->keep.back().data_ptr<float>();
      TORCH_CHECK(reinterpret_cast<uintptr_t>(p) % 32 == 0, "cpu_graph: a Winograd buffer is not 32-byte aligned");
      return p;
    };
    wi->conv = std::make_unique<winograd::Conv>(shape, s.weight.data_ptr<float>(), s.bias.data_ptr<float>(), alloc);
    wi->src = src.storage.data_ptr<float>();
    wi->dst = dst.storage.data_ptr<float>();
    wi->impl = "winograd_2x3:avx2";
    return wi;
  }

  // An Alternative (made by make()) for conv s where it is faster than the conv's chosen kernel (pd),
  // timed on the net's buffers as choose_impl times oneDNN's candidates and cached the same way (under
  // the conv's key and `name`). mode: 2 takes it without timing (tests), 0 never, 1 where timed faster
  // (with the timing on). make() returns nullptr where it cannot compute this conv: then the direct
  // conv, for every build of this shape.
  template <class Make>
  std::shared_ptr<Alternative> choose_alternative(const char* name, int mode, Make make, const_dnnl_primitive_desc_t pd,
                                                  const Step& s, const_dnnl_memory_desc_t w_user, const Buffer& src,
                                                  const Buffer& dst) {
    if (mode == 0 || (mode == 1 && tune_rounds_ == 0)) return nullptr;
    if (mode == 2) return make();
    const std::string key = conv_key(s, src, dst) + " " + name;
    std::lock_guard<std::mutex> guard(tune_mutex());
    auto hit = tune_cache().find(key);
    if (hit != tune_cache().end()) return hit->second.first ? std::shared_ptr<Alternative>(make()) : nullptr;
    Trial direct, other;
    other.alt = make();
    if (!other.alt) {
      tune_cache()[key] = {0, impl_name(pd)};
      return nullptr;
    }
    if (other.alt->scratch() > 0) {
      other.scratch = torch::empty({static_cast<int64_t>(other.alt->scratch() / 4 + 16)}, torch::kFloat);
      dnnl_memory_desc_t sp_md;
      dnnl_dims_t sd = {other.scratch.numel() * 4};
      DNNL_OK(dnnl_memory_desc_create_with_tag(&sp_md, 1, sd, dnnl_u8, dnnl_a));
      DNNL_OK(dnnl_memory_create(&other.sp_mem, sp_md, engine_, other.scratch.data_ptr()));
      dnnl_memory_desc_destroy(sp_md);
      other.alt->set_scratch(other.sp_mem);
    }
    run_trial(other);  // untimed: first touch
    other.best = INFINITY;
    start_trial(direct, pd, s, w_user, s.b_mem, src, dst);
    for (int round = 0; round < tune_rounds_; ++round) {
      run_trial(direct);
      run_trial(other);
    }
    const bool take = other.best < direct.best * (1.0 - TUNE_MARGIN);
    const std::string& impl = other.alt->impl;
    tune_log_.push_back(key + ": " + impl_name(pd) + " " + std::to_string(direct.best) + " " + impl + " " +
                        std::to_string(other.best) + " -> " + (take ? impl : impl_name(pd)));
    tune_cache()[key] = {take ? 1 : 0, take ? impl : impl_name(pd)};
    std::shared_ptr<Alternative> kept = take ? other.alt : nullptr;
    end_trial(direct);
    end_trial(other);
    return kept;
  }

  // conv description -> (rank among oneDNN's candidates of that name, the implementation's name); for
  // an Alternative, its key ends in its name and the first member is 1 where it was taken, else 0
  static std::map<std::string, std::pair<size_t, std::string>>& tune_cache() {
    static std::map<std::string, std::pair<size_t, std::string>> cache;
    return cache;
  }
  static std::mutex& tune_mutex() {
    static std::mutex m;
    return m;
  }
  static constexpr double TUNE_MARGIN = 0.03;

  // The same activations in another layout (where the net changes layout between stages).
  void add_reorder(int64_t src, int64_t dst) {
    steps_.push_back(Step{Step::REORDER, static_cast<int>(src), static_cast<int>(dst)});
  }

  // Creates every primitive for batch n. Buffer 0 is the input, described by the strides given (the
  // caller's tensor); the others use their own layout tag.
  // phases: 0 never split a stride-2 conv into Phases, 1 where timed faster (with tune_rounds > 0),
  // 2 wherever Phases fits. winograd: the same for Wino and the 3x3 stride-1 convs.
  void build(int64_t n, std::vector<int64_t> input_strides, int64_t tune_rounds, int64_t phases, int64_t winograd) {
    TORCH_CHECK(n_ == 0 && n > 0 && input_strides.size() == 4, "cpu_graph: build(n > 0, 4 strides) once per net");
    n_ = n;
    tune_rounds_ = static_cast<int>(tune_rounds);
    TORCH_CHECK(phases >= 0 && phases <= 2, "cpu_graph: phases is 0, 1 or 2");
    phases_ = static_cast<int>(phases);
    TORCH_CHECK(winograd >= 0 && winograd <= 2, "cpu_graph: winograd is 0, 1 or 2");
    winograd_ = static_cast<int>(winograd);
    omp_set_num_threads(at::get_num_threads());  // (the choices are timed with the threads forward() uses)
    in_strides_ = input_strides;
    for (size_t i = 0; i < buffers_.size(); ++i) {
      Buffer& b = buffers_[i];
      dnnl_dims_t dims = {n, b.c, b.h, b.w};
      if (i == 0) {
        dnnl_dims_t st = {input_strides[0], input_strides[1], input_strides[2], input_strides[3]};
        DNNL_OK(dnnl_memory_desc_create_with_strides(&b.md, 4, dims, dnnl_f32, st));
      } else {
        DNNL_OK(dnnl_memory_desc_create_with_tag(&b.md, 4, dims, dnnl_f32, static_cast<dnnl_format_tag_t>(b.tag)));
        size_t bytes = dnnl_memory_desc_get_size(b.md);
        b.storage = kept_zeros(static_cast<int64_t>(bytes / 4));
        DNNL_OK(dnnl_memory_create(&b.mem, b.md, engine_, b.storage.data_ptr()));
      }
    }
    DNNL_OK(dnnl_memory_create(&buffers_[0].mem, buffers_[0].md, engine_, DNNL_MEMORY_NONE));
    // Zeros in the input's place while the convs' implementations are timed (forward() points it at x).
    torch::Tensor tuning_input;
    if (tune_rounds_ > 0) {
      tuning_input = torch::zeros({static_cast<int64_t>(dnnl_memory_desc_get_size(buffers_[0].md) / 4 + 1)}, torch::kFloat);
      DNNL_OK(dnnl_memory_set_data_handle(buffers_[0].mem, tuning_input.data_ptr()));
    }
    size_t scratch = 0;
    std::vector<dnnl_primitive_desc_t> pds;
    for (auto& s : steps_) {
      dnnl_primitive_attr_t attr;
      DNNL_OK(dnnl_primitive_attr_create(&attr));
      DNNL_OK(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
      dnnl_primitive_desc_t pd;
      const Buffer &src = buffers_[s.src], &dst = buffers_[s.dst];
      dnnl_dims_t strides = {s.stride, s.stride}, pad = {s.pad, s.pad};
      if (s.kind == Step::CONV) {
        dnnl_post_ops_t po;
        DNNL_OK(dnnl_post_ops_create(&po));
        if (s.sum) DNNL_OK(dnnl_post_ops_append_sum(po, 1.0f, 0, dnnl_data_type_undef));
        if (s.relu) DNNL_OK(dnnl_post_ops_append_eltwise(po, dnnl_eltwise_relu, 0.0f, 0.0f));
        DNNL_OK(dnnl_primitive_attr_set_post_ops(attr, po));
        dnnl_post_ops_destroy(po);
        dnnl_memory_desc_t w_any, w_user, b_md;
        dnnl_dims_t wd = {s.weight.size(0), s.weight.size(1), s.kernel, s.kernel};
        dnnl_dims_t bd = {s.weight.size(0)};
        DNNL_OK(dnnl_memory_desc_create_with_tag(&w_any, 4, wd, dnnl_f32, dnnl_format_tag_any));
        DNNL_OK(dnnl_memory_desc_create_with_tag(&w_user, 4, wd, dnnl_f32, dnnl_abcd));
        DNNL_OK(dnnl_memory_desc_create_with_tag(&b_md, 1, bd, dnnl_f32, dnnl_a));
        dnnl_dims_t dil = {0, 0};
        DNNL_OK(dnnl_convolution_forward_primitive_desc_create(&pd, engine_, dnnl_forward_inference,
                                                               dnnl_convolution_direct, src.md, w_any, b_md, dst.md,
                                                               strides, dil, pad, pad, attr));
        DNNL_OK(dnnl_memory_create(&s.b_mem, b_md, engine_, s.bias.data_ptr()));
        if (tune_rounds_ > 0) pd = choose_impl(pd, s, w_user, s.b_mem, src, dst);
        if (phases_fit(s, src, dst))
          s.alt = choose_alternative("phases", phases_, [&] { return make_phases(s, src, dst); }, pd, s, w_user, src,
                                     dst);
        else if (wino_fit(s, src, dst))
          s.alt = choose_alternative("winograd", winograd_, [&] { return make_wino(s, src, dst); }, pd, s, w_user, src,
                                     dst);
        dnnl_memory_desc_destroy(w_any);
        dnnl_memory_desc_destroy(b_md);
        if (s.alt) {  // (no direct primitive: the alternative runs instead)
          impls_.push_back(s.alt->impl);
          scratch = std::max(scratch, s.alt->scratch());
          dnnl_memory_desc_destroy(w_user);
          dnnl_primitive_desc_destroy(pd);
          dnnl_primitive_attr_destroy(attr);
          continue;
        }
        // Weights reordered once into the layout the chosen kernel wants.
        pack_weight(s, w_user, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0));
        dnnl_memory_desc_destroy(w_user);
        s.args = {{DNNL_ARG_SRC, src.mem}, {DNNL_ARG_WEIGHTS, s.w_mem}, {DNNL_ARG_BIAS, s.b_mem},
                  {DNNL_ARG_DST, dst.mem}};
      } else if (s.kind == Step::LINEAR) {
        out_features_ = s.weight.size(0);
        dnnl_memory_desc_t w_any, w_user, b_md, d_md;
        dnnl_dims_t wd = {out_features_, src.c, 1, 1}, bd = {out_features_}, dd = {n, out_features_};
        DNNL_OK(dnnl_memory_desc_create_with_tag(&w_any, 4, wd, dnnl_f32, dnnl_format_tag_any));
        DNNL_OK(dnnl_memory_desc_create_with_tag(&w_user, 4, wd, dnnl_f32, dnnl_abcd));
        DNNL_OK(dnnl_memory_desc_create_with_tag(&b_md, 1, bd, dnnl_f32, dnnl_a));
        DNNL_OK(dnnl_memory_desc_create_with_tag(&d_md, 2, dd, dnnl_f32, dnnl_ab));
        DNNL_OK(dnnl_inner_product_forward_primitive_desc_create(&pd, engine_, dnnl_forward_inference, src.md, w_any,
                                                                 b_md, d_md, attr));
        pack_weight(s, w_user, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0));
        DNNL_OK(dnnl_memory_create(&s.b_mem, b_md, engine_, s.bias.data_ptr()));
        DNNL_OK(dnnl_memory_create(&out_mem_, d_md, engine_, DNNL_MEMORY_NONE));
        for (auto md : {w_any, w_user, b_md, d_md}) dnnl_memory_desc_destroy(md);
        s.args = {{DNNL_ARG_SRC, src.mem}, {DNNL_ARG_WEIGHTS, s.w_mem}, {DNNL_ARG_BIAS, s.b_mem},
                  {DNNL_ARG_DST, out_mem_}};
      } else if (s.kind == Step::REORDER) {
        DNNL_OK(dnnl_reorder_primitive_desc_create(&pd, src.md, engine_, dst.md, engine_, attr));
        s.args = {{DNNL_ARG_FROM, src.mem}, {DNNL_ARG_TO, dst.mem}};
      } else {
        dnnl_dims_t kernel = {s.kernel, s.kernel}, dil = {0, 0};
        if (s.kind == Step::AVGPOOL) {
          kernel[0] = src.h;
          kernel[1] = src.w;
          strides[0] = strides[1] = 1;
        }
        DNNL_OK(dnnl_pooling_forward_primitive_desc_create(
            &pd, engine_, dnnl_forward_inference, s.kind == Step::MAXPOOL ? dnnl_pooling_max : dnnl_pooling_avg_exclude_padding,
            src.md, dst.md, strides, kernel, dil, pad, pad, attr));
        s.args = {{DNNL_ARG_SRC, src.mem}, {DNNL_ARG_DST, dst.mem}};
      }
      impls_.push_back(impl_name(pd));
      const_dnnl_memory_desc_t sp = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
      scratch = std::max(scratch, sp ? dnnl_memory_desc_get_size(sp) : size_t(0));
      DNNL_OK(dnnl_primitive_create(&s.prim, pd));
      pds.push_back(pd);
      dnnl_primitive_attr_destroy(attr);
    }
    // One scratchpad, as large as the largest step's, shared by all (they run one after another).
    scratch_ = kept_zeros(static_cast<int64_t>(scratch / 4 + 16));
    dnnl_memory_desc_t sp_md;
    dnnl_dims_t sd = {static_cast<int64_t>(scratch)};
    DNNL_OK(dnnl_memory_desc_create_with_tag(&sp_md, 1, sd, dnnl_u8, dnnl_a));
    DNNL_OK(dnnl_memory_create(&scratch_mem_, sp_md, engine_, scratch_.data_ptr()));
    dnnl_memory_desc_destroy(sp_md);
    for (auto& s : steps_) {
      if (s.alt)
        s.alt->set_scratch(scratch_mem_);
      else
        s.args.push_back({DNNL_ARG_SCRATCHPAD, scratch_mem_});
    }
    DNNL_OK(dnnl_memory_set_data_handle(buffers_[0].mem, DNNL_MEMORY_NONE));
    for (auto pd : pds) dnnl_primitive_desc_destroy(pd);
  }

  // max|x| over n floats (NaN counts as infinite): one read pass, on all threads. On the bits: with
  // the sign cleared, IEEE floats order as unsigned integers, Inf is 0x7f800000 and every NaN is
  // above it, so the loop is one AND and one unsigned max per element, which vectorizes (the float
  // version with its NaN test did not: 8 passes of a ResNet-50 forward at batch 1 cost 0.41 ms).
  static double measure(const float* p, int64_t n) {
    uint32_t m = 0;
#pragma omp parallel for simd reduction(max : m)
    for (int64_t i = 0; i < n; ++i) {
      uint32_t bits;
      std::memcpy(&bits, p + i, sizeof bits);
      m = std::max(m, bits & 0x7fffffffu);
    }
    if (m > 0x7f800000u) return INFINITY;  // a NaN
    float f;
    std::memcpy(&f, &m, sizeof f);
    return f;
  }

  // One forward. x: a float32 tensor with the sizes and strides given to build. Returns the classifier's
  // (n, out) result, or without one the last buffer copied out as (n, c) (a global average pool ends
  // the net), or None when a step's finite bound does not hold: then that step and the ones after it
  // have not run.
  std::optional<torch::Tensor> forward(const torch::Tensor& x) {
    const Buffer& in = buffers_[0];
    TORCH_CHECK(x.dim() == 4 && x.size(0) == n_ && x.size(1) == in.c && x.size(2) == in.h && x.size(3) == in.w &&
                    x.scalar_type() == torch::kFloat && x.strides() == c10::IntArrayRef(in_strides_),
                "cpu_graph: the input differs from the signature the net was built for");
    omp_set_num_threads(at::get_num_threads());  // torch's intra-op threads, on whichever thread calls
    DNNL_OK(dnnl_memory_set_data_handle(buffers_[0].mem, x.data_ptr()));
    const double limit = 3.4028234663852886e38 / 4;  // float32 max / 4, as the eager path's _finite.LIMIT
    torch::Tensor out;
    if (out_mem_) {  // the classifier writes straight into the result
      out = torch::empty({n_, out_features_}, torch::kFloat);
      DNNL_OK(dnnl_memory_set_data_handle(out_mem_, out.data_ptr()));
    }
    buffers_[0].bound = measure(x.data_ptr<float>(), x.numel());
    last_measured_ = 1;
    for (auto& s : steps_) {
      Buffer &src = buffers_[s.src], &dst = buffers_[s.dst];
      if (s.kind == Step::CONV) {
        // (an Alternative's intermediate values may exceed the output's bound: Wino's, 36x)
        auto fits = [&] {
          const double peak = s.alt ? s.alt->peak(src.bound, s.gain) : src.bound * s.gain;
          return peak + s.bias_max + (s.sum ? dst.bound : 0.0) <= limit;
        };
        if (!fits()) {  // (NaN-safe: a NaN bound fails too)
          // the input (buffer 0) has no storage of ours; its bound is measured already, so only an
          // intermediate buffer is measured again
          if (s.src != 0 && src.storage.defined()) {  // a propagated bound got loose: measure the values
            src.bound = measure(src.storage.data_ptr<float>(), src.storage.numel());
            ++last_measured_;
          }
          if (s.sum && dst.storage.defined() && !fits()) {
            dst.bound = measure(dst.storage.data_ptr<float>(), dst.storage.numel());
            ++last_measured_;
          }
          if (!fits()) return std::nullopt;
        }
        const double b = src.bound * s.gain + s.bias_max + (s.sum ? dst.bound : 0.0);
        dst.bound = b;
      } else {
        dst.bound = src.bound;  // (pools and reorders do not raise a bound)
      }
      if (s.alt)
        s.alt->run(stream_);
      else
        DNNL_OK(dnnl_primitive_execute(s.prim, stream_, static_cast<int>(s.args.size()), s.args.data()));
    }
    if (out_mem_) return out;
    const Buffer& last = buffers_.back();  // no classifier: the pooled features
    return last.storage.narrow(0, 0, n_ * last.c).view({n_, last.c}).clone();
  }

  int64_t last_measured_ = 0;  // read passes in the last forward (the input's included)

 private:
  dnnl_engine_t engine_ = nullptr;
  dnnl_stream_t stream_ = nullptr;
  std::vector<Buffer> buffers_;
  std::vector<Step> steps_;
  torch::Tensor scratch_;
  dnnl_memory_t scratch_mem_ = nullptr;
  dnnl_memory_t out_mem_ = nullptr;  // the classifier's output (a fresh tensor set per forward)
  int64_t out_features_ = 0;
  int64_t n_ = 0;
  int tune_rounds_ = 0;
  int phases_ = 1;    // see build()
  int winograd_ = 1;  // see build()
  std::vector<int64_t> in_strides_;

 public:
  std::vector<std::string> tune_log_;  // each conv shape timed in this build: candidates, times, choice
  std::vector<std::string> impls_;  // each step's implementation: oneDNN's ("ref:any": no fast kernel) or an Alternative's
};

std::string library_version() {
  const dnnl_version_t* v = dnnl_version();
  return std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) + " (" +
         v->hash + ")";
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Net>(m, "Net")
      .def(pybind11::init<>())
      .def("add_buffer", &Net::add_buffer)
      .def("add_conv", &Net::add_conv)
      .def("add_pool", &Net::add_pool)
      .def("add_reorder", &Net::add_reorder)
      .def("add_linear", &Net::add_linear)
      .def("build", &Net::build)
      .def("forward", &Net::forward, pybind11::call_guard<pybind11::gil_scoped_release>())
      .def_readonly("last_measured", &Net::last_measured_)
      .def_readonly("implementations", &Net::impls_)
      .def_readonly("tune_log", &Net::tune_log_);
  m.def("library_version", &library_version);
  m.def("library_major", []() { return dnnl_version()->major; });
  m.attr("TAG_NHWC") = static_cast<int64_t>(dnnl_acdb);
  m.attr("TAG_NCHW16C") = static_cast<int64_t>(dnnl_aBcd16b);
  m.attr("TAG_NCHW8C") = static_cast<int64_t>(dnnl_aBcd8b);
  // The float32 lanes of oneDNN's widest vector ISA on this CPU (16: AVX-512, 8: AVX2 and below): the
  // channel block its blocked-layout kernels use.
  m.def("vector_floats", []() {
    const dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    return (static_cast<int>(isa) & static_cast<int>(dnnl_cpu_isa_avx512_core)) == static_cast<int>(dnnl_cpu_isa_avx512_core) ? 16 : 8;
  });
}
