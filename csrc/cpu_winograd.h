// A 3x3 stride-1 conv (padding 1) as Winograd's F(2x2, 3x3) on AVX2: each 2x2 block of output pixels
// (a tile) is computed from the 4x4 input pixels around it with 16 products per input/output channel
// pair instead of 36, so 2.25x fewer multiplications than the direct conv:
//     Y = A^T [ (G g G^T) (.) (B^T d B) ] A      (Lavin & Gray, "Fast Algorithms for CNNs", 2015)
// with d a 4x4 input patch, g the 3x3 kernel, (.) the elementwise product summed over input channels.
// In three passes over a chunk of tiles, all threads in each:
//   1. input transform: V[e][tile][c] = (B^T d B)[e], e the 16 positions of the 4x4 result;
//   2. 16 GEMMs: M[e][k][tile] = sum_c U[e][k][c] V[e][tile][c], U = G g G^T packed once at build;
//   3. output transform: y = A^T M A + bias (+ the residual already in dst), ReLU, written to dst.
// A chunk's V and M stay in the caches (a chunk's V for one e fits a core's L2, so the GEMM's loop over
// output channels reads it from there). Activations are NHWC or nChw8c (8-channel blocks), channels a
// multiple of 8: every pixel's channels come as 8-float vectors, one AVX2 register.
//
// Numerics: the same products summed in another order plus the transforms' additions; the weight
// transform is done in float64 and rounded once. Finite inputs stay finite: with B = max|x|,
// |V| <= 4B, sum_c |U[e][k][c]| <= sum over k's 3x3xc weights of |w| <= gain, so every partial sum of M
// is at most 4B*gain and every output-transform sum at most 9x that: 36 * B * gain (+ bias, residual).
// The net checks that bound (HEADROOM) before it runs the conv, as it checks the direct conv's.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>

namespace winograd {

constexpr double HEADROOM = 36.0;  // the largest intermediate over B * gain (see above)

struct Shape {
  int64_t n = 0, c = 0, k = 0, h = 0, w = 0;  // batch, input and output channels, map (same in and out)
  bool blocked_src = false, blocked_dst = false;  // nChw8c (else NHWC)
  bool relu = false, sum = false;                 // ReLU; add dst's old values (the residual) first
};

}  // namespace winograd

#if !defined(__x86_64__)
namespace winograd {  // not x86-64: no Winograd convs (the net never makes one where supported() is false)
inline bool supported() { return false; }
class Conv {
 public:
  template <class Alloc>
  Conv(const Shape&, const float*, const float*, Alloc) {
    throw std::runtime_error("winograd::Conv: x86-64 with AVX2 only");
  }
  void run(const float*, float*) const {}
};
}  // namespace winograd
#else
#include <immintrin.h>

namespace winograd {

constexpr int64_t MR = 6;   // output channels per GEMM micro-kernel call (broadcast from U)
constexpr int64_t NR = 16;  // tiles per GEMM micro-kernel call (two 8-float vectors from V)

// Whether this CPU runs the AVX2 + FMA code below.
inline bool supported() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

// Where the 8 channels [8 cb, 8 cb + 8) of pixel (b, y, x) are.
inline int64_t pixel(bool blocked, int64_t c, int64_t h, int64_t w, int64_t b, int64_t y, int64_t x, int64_t cb) {
  return blocked ? (((b * (c / 8) + cb) * h + y) * w + x) * 8 : ((b * h + y) * w + x) * c + cb * 8;
}

// 8 vectors of 8 floats transposed in place (r[i][j] <-> r[j][i]).
__attribute__((target("avx2,fma"))) inline void transpose8(__m256 r[8]) {
  __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// MR output channels x NR tiles of one e: m[i][j] = sum_c u[c][i] v[c][j] (u: [c][MR], v: [c][NR]),
// m's rows ldm apart. 12 accumulators, two loads and six broadcasts per input channel.
__attribute__((target("avx2,fma"))) inline void micro_kernel(const float* u, const float* v, int64_t c, float* m,
                                                             int64_t ldm) {
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00,
         a40 = a00, a41 = a00, a50 = a00, a51 = a00;
  for (int64_t i = 0; i < c; ++i, u += MR, v += NR) {
    const __m256 v0 = _mm256_load_ps(v), v1 = _mm256_load_ps(v + 8);
    __m256 b = _mm256_broadcast_ss(u);
    a00 = _mm256_fmadd_ps(b, v0, a00);
    a01 = _mm256_fmadd_ps(b, v1, a01);
    b = _mm256_broadcast_ss(u + 1);
    a10 = _mm256_fmadd_ps(b, v0, a10);
    a11 = _mm256_fmadd_ps(b, v1, a11);
    b = _mm256_broadcast_ss(u + 2);
    a20 = _mm256_fmadd_ps(b, v0, a20);
    a21 = _mm256_fmadd_ps(b, v1, a21);
    b = _mm256_broadcast_ss(u + 3);
    a30 = _mm256_fmadd_ps(b, v0, a30);
    a31 = _mm256_fmadd_ps(b, v1, a31);
    b = _mm256_broadcast_ss(u + 4);
    a40 = _mm256_fmadd_ps(b, v0, a40);
    a41 = _mm256_fmadd_ps(b, v1, a41);
    b = _mm256_broadcast_ss(u + 5);
    a50 = _mm256_fmadd_ps(b, v0, a50);
    a51 = _mm256_fmadd_ps(b, v1, a51);
  }
  _mm256_store_ps(m, a00);
  _mm256_store_ps(m + 8, a01);
  _mm256_store_ps(m + ldm, a10);
  _mm256_store_ps(m + ldm + 8, a11);
  _mm256_store_ps(m + 2 * ldm, a20);
  _mm256_store_ps(m + 2 * ldm + 8, a21);
  _mm256_store_ps(m + 3 * ldm, a30);
  _mm256_store_ps(m + 3 * ldm + 8, a31);
  _mm256_store_ps(m + 4 * ldm, a40);
  _mm256_store_ps(m + 4 * ldm + 8, a41);
  _mm256_store_ps(m + 5 * ldm, a50);
  _mm256_store_ps(m + 5 * ldm + 8, a51);
}

class Conv {
 public:
  // weight: k x c x 3 x 3 floats (OIHW); bias: k floats. Buffers are 64-byte aligned by the caller's
  // allocator through alloc (n floats, zeroed).
  template <class Alloc>
  Conv(const Shape& s, const float* weight, const float* bias, Alloc alloc) : s_(s) {
    kpad_ = (s.k + MR - 1) / MR * MR;
    th_ = (s.h + 1) / 2;
    tw_ = (s.w + 1) / 2;
    tiles_ = s.n * th_ * tw_;
    // Up to 128 input channels the threads split the tiles (each keeps its V and M in its own L2, 8192 /
    // c tiles a chunk); above, the GEMMs' (e, output channels) with a chunk's V for one e within 128 KB
    // (32768 / c tiles), as every thread then reads all of U (1-16 MB) once a chunk. ResNet-50's shapes
    // at batch 8 on a 2-core AVX2 VM: 64 channels at 56x56 1.16x faster split by tiles, 128 at 28x28
    // 1.05x, 256 at 14x14 level, 512 at 7x7 2x slower (benchmarks/NOTES.md).
    by_tiles_ = s.c <= 128;
    chunk_ = std::max<int64_t>(NR, ((by_tiles_ ? 8192 : 32768) / s.c) / NR * NR);
    chunk_ = std::min(chunk_, (tiles_ + NR - 1) / NR * NR);
    u_ = alloc(16 * kpad_ * s.c);
    v_ = alloc(16 * chunk_ * s.c);
    m_ = alloc(16 * kpad_ * chunk_);
    bias_ = alloc(s.k);
    std::memcpy(bias_, bias, s.k * sizeof(float));
    // U = G g G^T in float64, rounded once; packed [e][k / MR][c][MR] (zero rows past k)
    const double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
    for (int64_t k = 0; k < s.k; ++k)
      for (int64_t c = 0; c < s.c; ++c) {
        const float* g = weight + (k * s.c + c) * 9;
        double gg[4][3];  // G g
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 3; ++j) gg[i][j] = G[i][0] * g[j] + G[i][1] * g[3 + j] + G[i][2] * g[6 + j];
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j) {
            const double uij = gg[i][0] * G[j][0] + gg[i][1] * G[j][1] + gg[i][2] * G[j][2];
            u_[((i * 4 + j) * (kpad_ / MR) + k / MR) * s.c * MR + c * MR + k % MR] = static_cast<float>(uij);
          }
      }
  }

  // dst = relu?(conv(src) + bias (+ dst)). All threads of the current OpenMP team size.
  __attribute__((target("avx2,fma"))) void run(const float* src, float* dst) const {
    if (by_tiles_) {
      // each thread its own tile panels in all three passes (the same static split of the same count),
      // so a thread's V and M stay in its own L2; every thread reads all of U per chunk
#pragma omp parallel
      for (int64_t t0 = 0; t0 < tiles_; t0 += chunk_) {
        const int64_t count = std::min(chunk_, tiles_ - t0), padded = (count + NR - 1) / NR * NR;
#pragma omp for schedule(static)
        for (int64_t tp = 0; tp < padded / NR; ++tp)
          for (int64_t g = 2 * tp; g < 2 * tp + 2; ++g)
            for (int64_t cb = 0; cb < s_.c / 8; ++cb) input_transform(src, t0, count, padded, g, cb);
#pragma omp for schedule(static)
        for (int64_t tp = 0; tp < padded / NR; ++tp) {
          for (int64_t e = 0; e < 16; ++e)
            for (int64_t kp = 0; kp < kpad_ / MR; ++kp)
              micro_kernel(u_ + (e * (kpad_ / MR) + kp) * s_.c * MR, v_ + (e * padded + tp * NR) * s_.c, s_.c,
                           m_ + (e * kpad_ + kp * MR) * padded + tp * NR, padded);
        }
#pragma omp for schedule(static)
        for (int64_t tp = 0; tp < padded / NR; ++tp)
          for (int64_t g = 2 * tp; g < 2 * tp + 2; ++g)
            for (int64_t kb = 0; kb < s_.k / 8; ++kb) output_transform(dst, t0, count, padded, g, kb);
      }
      return;
    }
#pragma omp parallel
    for (int64_t t0 = 0; t0 < tiles_; t0 += chunk_) {
      const int64_t count = std::min(chunk_, tiles_ - t0), padded = (count + NR - 1) / NR * NR;
#pragma omp for schedule(static) collapse(2)
      for (int64_t g = 0; g < padded / 8; ++g)
        for (int64_t cb = 0; cb < s_.c / 8; ++cb) input_transform(src, t0, count, padded, g, cb);
#pragma omp for schedule(static) collapse(2)
      for (int64_t e = 0; e < 16; ++e)
        for (int64_t kp = 0; kp < kpad_ / MR; ++kp) {
          const float* u = u_ + (e * (kpad_ / MR) + kp) * s_.c * MR;
          for (int64_t tp = 0; tp < padded / NR; ++tp)
            micro_kernel(u, v_ + (e * padded + tp * NR) * s_.c, s_.c, m_ + (e * kpad_ + kp * MR) * padded + tp * NR,
                         padded);
        }
#pragma omp for schedule(static) collapse(2)
      for (int64_t g = 0; g < padded / 8; ++g)
        for (int64_t kb = 0; kb < s_.k / 8; ++kb) output_transform(dst, t0, count, padded, g, kb);
    }
  }

  const Shape& shape() const { return s_; }

 private:
  // Tiles [t0 + 8g, t0 + 8g + 8) of the chunk, channels [8 cb, 8 cb + 8): V[e][tile panel][c][NR].
  __attribute__((target("avx2,fma"))) void input_transform(const float* src, int64_t t0, int64_t count,
                                                           int64_t padded, int64_t g, int64_t cb) const {
    __m256 out[16][8];  // [e][tile of the group], lanes: channels
    for (int64_t j = 0; j < 8; ++j) {
      const int64_t t = 8 * g + j;
      if (t >= count) {
        for (int e = 0; e < 16; ++e) out[e][j] = _mm256_setzero_ps();
        continue;
      }
      const int64_t tile = t0 + t, b = tile / (th_ * tw_), ty = tile / tw_ % th_, tx = tile % tw_;
      // the 4x4 patch: rows 2ty-1 .. 2ty+2, columns 2tx-1 .. 2tx+2 (zeros outside the map)
      const int64_t rs = s_.blocked_src ? s_.w * 8 : s_.w * s_.c, cs = s_.blocked_src ? 8 : s_.c;
      const float* p = src + pixel(s_.blocked_src, s_.c, s_.h, s_.w, b, 0, 0, cb) + (2 * ty - 1) * rs + (2 * tx - 1) * cs;
      __m256 d[4][4];
      if (ty > 0 && tx > 0 && 2 * ty + 2 < s_.h && 2 * tx + 2 < s_.w) {
        for (int i = 0; i < 4; ++i)
          for (int q = 0; q < 4; ++q) d[i][q] = _mm256_loadu_ps(p + i * rs + q * cs);
      } else {
        for (int i = 0; i < 4; ++i)
          for (int q = 0; q < 4; ++q) {
            const int64_t y = 2 * ty - 1 + i, x = 2 * tx - 1 + q;
            d[i][q] = (y >= 0 && y < s_.h && x >= 0 && x < s_.w) ? _mm256_loadu_ps(p + i * rs + q * cs)
                                                                 : _mm256_setzero_ps();
          }
      }
      __m256 r[4][4];  // B^T d
      for (int q = 0; q < 4; ++q) {
        r[0][q] = _mm256_sub_ps(d[0][q], d[2][q]);
        r[1][q] = _mm256_add_ps(d[1][q], d[2][q]);
        r[2][q] = _mm256_sub_ps(d[2][q], d[1][q]);
        r[3][q] = _mm256_sub_ps(d[1][q], d[3][q]);
      }
      for (int i = 0; i < 4; ++i) {  // (B^T d) B
        out[i * 4 + 0][j] = _mm256_sub_ps(r[i][0], r[i][2]);
        out[i * 4 + 1][j] = _mm256_add_ps(r[i][1], r[i][2]);
        out[i * 4 + 2][j] = _mm256_sub_ps(r[i][2], r[i][1]);
        out[i * 4 + 3][j] = _mm256_sub_ps(r[i][1], r[i][3]);
      }
    }
    for (int e = 0; e < 16; ++e) {
      transpose8(out[e]);  // lanes: tiles
      float* v = v_ + (e * padded + g / 2 * NR) * s_.c + cb * 8 * NR + g % 2 * 8;
      for (int ch = 0; ch < 8; ++ch) _mm256_store_ps(v + ch * NR, out[e][ch]);
    }
  }

  // Tiles [t0 + 8g, t0 + 8g + 8), output channels [8 kb, 8 kb + 8): y = A^T M A + bias, into dst.
  __attribute__((target("avx2,fma"))) void output_transform(float* dst, int64_t t0, int64_t count, int64_t padded,
                                                            int64_t g, int64_t kb) const {
    __m256 y[4][8];  // [output pixel of the tile][channel], lanes: tiles
    for (int ch = 0; ch < 8; ++ch) {
      const float* m = m_ + (kb * 8 + ch) * padded + g * 8;
      __m256 v[16];
      for (int e = 0; e < 16; ++e) v[e] = _mm256_load_ps(m + e * kpad_ * padded);
      __m256 r[2][4];  // A^T M
      for (int q = 0; q < 4; ++q) {
        r[0][q] = _mm256_add_ps(_mm256_add_ps(v[q], v[4 + q]), v[8 + q]);
        r[1][q] = _mm256_sub_ps(_mm256_sub_ps(v[4 + q], v[8 + q]), v[12 + q]);
      }
      for (int i = 0; i < 2; ++i) {  // (A^T M) A
        y[i * 2 + 0][ch] = _mm256_add_ps(_mm256_add_ps(r[i][0], r[i][1]), r[i][2]);
        y[i * 2 + 1][ch] = _mm256_sub_ps(_mm256_sub_ps(r[i][1], r[i][2]), r[i][3]);
      }
    }
    const __m256 bias = _mm256_loadu_ps(bias_ + kb * 8), zero = _mm256_setzero_ps();
    for (int p = 0; p < 4; ++p) transpose8(y[p]);  // lanes: channels
    for (int64_t j = 0; j < 8 && 8 * g + j < count; ++j) {
      const int64_t tile = t0 + 8 * g + j, b = tile / (th_ * tw_), ty = tile / tw_ % th_, tx = tile % tw_;
      const int64_t rs = s_.blocked_dst ? s_.w * 8 : s_.w * s_.k, cs = s_.blocked_dst ? 8 : s_.k;
      float* o = dst + pixel(s_.blocked_dst, s_.k, s_.h, s_.w, b, 2 * ty, 2 * tx, kb);
      const bool full = 2 * ty + 1 < s_.h && 2 * tx + 1 < s_.w;
      for (int p = 0; p < 4; ++p) {
        if (!full && (2 * ty + p / 2 >= s_.h || 2 * tx + p % 2 >= s_.w)) continue;
        float* op = o + (p / 2) * rs + (p % 2) * cs;
        __m256 val = _mm256_add_ps(y[p][j], bias);
        if (s_.sum) val = _mm256_add_ps(val, _mm256_loadu_ps(op));
        if (s_.relu) val = _mm256_max_ps(val, zero);
        _mm256_storeu_ps(op, val);
      }
    }
  }

  Shape s_;
  bool by_tiles_ = false;
  int64_t kpad_ = 0, th_ = 0, tw_ = 0, tiles_ = 0, chunk_ = 0;
  float *u_ = nullptr, *v_ = nullptr, *m_ = nullptr, *bias_ = nullptr;
};

}  // namespace winograd
#endif  // __x86_64__
