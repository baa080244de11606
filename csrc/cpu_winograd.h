// A 3x3 stride-1 conv (padding 1) as Winograd's F(2x2, 3x3) on AVX2: each 2x2 block of output pixels
// (a tile) is computed from the 4x4 input pixels around it with 16 products per input/output channel
// pair instead of 36, so 2.25x fewer multiplications than the direct conv:
//     Y = A^T [ (G g G^T) (.) (B^T d B) ] A      (Lavin & Gray, "Fast Algorithms for CNNs", 2015)
// with d a 4x4 input patch, g the 3x3 kernel, (.) the elementwise product summed over input channels.
// Three passes over each chunk of tiles:
//   1. input transform: V[e][tile][c] = (B^T d B)[e], e the 16 positions of the 4x4 result;
//   2. 16 GEMMs: M[e][k][tile] = sum_c U[e][k][c] V[e][tile][c], U = G g G^T packed once at build;
//   3. output transform: y = A^T M A + bias (+ the residual already in dst), ReLU, written to dst.
// A chunk is small enough that its V and M stay in the caches (Conv's constructor says how the threads
// share the passes). Activations are NHWC or nChw8c (8-channel blocks), channels a multiple of 8:
// every pixel's channels come as 8-float vectors, one AVX2 register.
//
// Numerics: the same products summed in another order plus the transforms' additions; the weight
// transform is done in float64 and rounded once. Finite inputs stay finite: with B = max|x|, every
// value of V (and its partial sums) is at most 4B; sum_c |U[e][k][c]| <= the sum of |w| over output
// channel k's weights <= gain (G's entries are at most 1), so every partial sum of M is at most
// 4B * gain, and every output-transform sum (at most 9 of them) at most HEADROOM * B * gain. The net
// checks max(4B, HEADROOM * B * gain) + bias (+ residual) against float32's range before it runs the
// conv, as it checks B * gain for the direct conv.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>

namespace winograd {

constexpr double HEADROOM = 36.0;  // the largest sum over B * gain (see above)

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
// Chunk sizes (tiles x input channels), measured on ResNet-50's shapes (benchmarks/NOTES.md):
// by tiles, a thread's V (16 x tiles x c floats) within 256 KB of its L2, as is its M; by GEMM, a
// chunk's V for one position e (tiles x c floats) within 64 KB, read again for every 6 output channels.
constexpr int64_t BY_TILES_CHUNK = 4096, BY_GEMM_CHUNK = 16384;

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
    // How the threads share the work (ResNet-50's shapes at batch 8 on a 2-core AVX2 VM: up to 128
    // input channels by tiles was 1.05-1.16x faster, at 256 level, at 512 2x slower; benchmarks/NOTES.md):
    // - up to 128 input channels, by tiles: each thread takes its own tiles through all three passes in
    //   chunks of BY_TILES_CHUNK / c tiles, with its own V and M (no barriers), and reads all of U
    //   (16 x c x k floats) once a chunk;
    // - above, by GEMM: the threads split each pass of a shared chunk of BY_GEMM_CHUNK / c tiles, the
    //   GEMMs by (position e, 6 output channels), so U (up to 16 MB) is read once a chunk.
    by_tiles_ = s.c <= 128;
    threads_ = by_tiles_ ? std::max(1, omp_get_max_threads()) : 1;  // sets of V and M
    chunk_ = std::max<int64_t>(NR, ((by_tiles_ ? BY_TILES_CHUNK : BY_GEMM_CHUNK) / s.c) / NR * NR);
    chunk_ = std::min(chunk_, (tiles_ + NR - 1) / NR * NR);
    u_ = alloc(16 * kpad_ * s.c);
    v_ = alloc(threads_ * 16 * chunk_ * s.c);
    m_ = alloc(threads_ * 16 * kpad_ * chunk_);
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

  // dst = relu?(conv(src) + bias (+ dst)), on the threads of the calling thread's OpenMP setting (by
  // tiles: at most as many as when built, one set of V and M each). Not reentrant: one call at a time.
  __attribute__((target("avx2,fma"))) void run(const float* src, float* dst) const {
    if (by_tiles_) {
#pragma omp parallel num_threads(std::min<int>(threads_, omp_get_max_threads()))
      {
        const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
        const int64_t per = (tiles_ + nt - 1) / nt, lo = std::min(tiles_, t * per), hi = std::min(tiles_, lo + per);
        float* v = v_ + t * 16 * chunk_ * s_.c;
        float* m = m_ + t * 16 * kpad_ * chunk_;
        for (int64_t t0 = lo; t0 < hi; t0 += chunk_) {
          const int64_t count = std::min(chunk_, hi - t0), padded = (count + NR - 1) / NR * NR;
          for (int64_t g = 0; g < padded / 8; ++g) input_transform(src, v, t0, count, padded, g, 0, s_.c / 8);
          gemm(v, m, padded, 0, 16 * (kpad_ / MR));
          for (int64_t g = 0; g < padded / 8; ++g) output_transform(m, dst, t0, count, padded, g, 0, s_.k / 8);
        }
      }
      return;
    }
#pragma omp parallel
    {
      // the transforms' items: tile groups x channel ranges, enough for every thread
      const int64_t nt = omp_get_num_threads();
      for (int64_t t0 = 0; t0 < tiles_; t0 += chunk_) {
        const int64_t count = std::min(chunk_, tiles_ - t0), padded = (count + NR - 1) / NR * NR, groups = padded / 8;
        const int64_t split = std::min(s_.c / 8, (2 * nt + groups - 1) / groups);  // channel ranges per group
#pragma omp for schedule(static) collapse(2)
        for (int64_t g = 0; g < groups; ++g)
          for (int64_t r = 0; r < split; ++r)
            input_transform(src, v_, t0, count, padded, g, s_.c / 8 * r / split, s_.c / 8 * (r + 1) / split);
        const int64_t items = 16 * (kpad_ / MR), t = omp_get_thread_num();
        gemm(v_, m_, padded, items * t / nt, items * (t + 1) / nt);
#pragma omp barrier
        const int64_t ksplit = std::min(s_.k / 8, (2 * nt + groups - 1) / groups);
#pragma omp for schedule(static) collapse(2)
        for (int64_t g = 0; g < groups; ++g)
          for (int64_t r = 0; r < ksplit; ++r)
            output_transform(m_, dst, t0, count, padded, g, s_.k / 8 * r / ksplit, s_.k / 8 * (r + 1) / ksplit);
      }
    }
  }

 private:
  // GEMM items [i0, i1) of a chunk, item = (position e, 6 output channels), e-major (a thread's items
  // share V's rows for one e): M[e][k][tile] = sum_c U[e][k][c] V[e][tile][c].
  __attribute__((target("avx2,fma"))) void gemm(const float* v, float* m, int64_t padded, int64_t i0,
                                                int64_t i1) const {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t e = i / (kpad_ / MR), kp = i % (kpad_ / MR);
      const float* u = u_ + i * s_.c * MR;  // (U's layout is item-major)
      for (int64_t tp = 0; tp < padded / NR; ++tp)
        micro_kernel(u, v + (e * padded + tp * NR) * s_.c, s_.c, m + (e * kpad_ + kp * MR) * padded + tp * NR, padded);
    }
  }

  // Where tile `tile` is: its batch index b and its first output pixel (y, x) = (2 ty, 2 tx).
  void locate(int64_t tile, int64_t& b, int64_t& y, int64_t& x) const {
    b = tile / (th_ * tw_);
    y = 2 * (tile / tw_ % th_);
    x = 2 * (tile % tw_);
  }

  // Tiles [t0 + 8g, t0 + 8g + 8) of the chunk, channel blocks [cb0, cb1) (8 channels each) into
  // V[e][tile panel][c][NR]. Each tile is located once; its 4x4 patch (rows y-1 .. y+2, columns x-1 ..
  // x+2, zeros outside the map) is read 8 channels at a time.
  __attribute__((target("avx2,fma"))) void input_transform(const float* src, float* vbuf, int64_t t0, int64_t count,
                                                           int64_t padded, int64_t g, int64_t cb0,
                                                           int64_t cb1) const {
    const bool blocked = s_.blocked_src;
    // strides in floats: a row, a pixel, a block of 8 channels
    const int64_t rs = blocked ? s_.w * 8 : s_.w * s_.c, cs = blocked ? 8 : s_.c, bs = blocked ? s_.h * s_.w * 8 : 8;
    int64_t at[8], y[8], x[8];  // each tile's pixel (y, x), channel block 0; y < 0: no tile (padding)
    for (int64_t j = 0; j < 8; ++j) {
      y[j] = -1;
      if (8 * g + j >= count) continue;
      int64_t b;
      locate(t0 + 8 * g + j, b, y[j], x[j]);
      at[j] = pixel(blocked, s_.c, s_.h, s_.w, b, y[j], x[j], 0);
    }
    for (int64_t cb = cb0; cb < cb1; ++cb) {
      __m256 out[16][8];  // [e][tile of the group], lanes: channels
      for (int64_t j = 0; j < 8; ++j) {
        __m256 d[4][4];
        if (y[j] < 0) {
          for (int i = 0; i < 16; ++i) d[i / 4][i % 4] = _mm256_setzero_ps();
        } else {
          const float* p = src + at[j] + cb * bs;  // pixel (y, x): the patch's (1, 1)
          if (y[j] > 0 && x[j] > 0 && y[j] + 2 < s_.h && x[j] + 2 < s_.w) {
            for (int i = 0; i < 4; ++i)
              for (int q = 0; q < 4; ++q) d[i][q] = _mm256_loadu_ps(p + (i - 1) * rs + (q - 1) * cs);
          } else {
            for (int i = 0; i < 4; ++i)
              for (int q = 0; q < 4; ++q) {
                const int64_t yy = y[j] - 1 + i, xx = x[j] - 1 + q;
                d[i][q] = (yy >= 0 && yy < s_.h && xx >= 0 && xx < s_.w)
                              ? _mm256_loadu_ps(p + (i - 1) * rs + (q - 1) * cs)
                              : _mm256_setzero_ps();
              }
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
        float* v = vbuf + (e * padded + g / 2 * NR) * s_.c + cb * 8 * NR + g % 2 * 8;
        for (int ch = 0; ch < 8; ++ch) _mm256_store_ps(v + ch * NR, out[e][ch]);
      }
    }
  }

  // Tiles [t0 + 8g, t0 + 8g + 8), output channel blocks [kb0, kb1): y = A^T M A + bias (+ dst), ReLU,
  // into dst.
  __attribute__((target("avx2,fma"))) void output_transform(const float* mbuf, float* dst, int64_t t0, int64_t count,
                                                            int64_t padded, int64_t g, int64_t kb0,
                                                            int64_t kb1) const {
    const bool blocked = s_.blocked_dst;
    const int64_t rs = blocked ? s_.w * 8 : s_.w * s_.k, cs = blocked ? 8 : s_.k, bs = blocked ? s_.h * s_.w * 8 : 8;
    const int64_t live = std::min<int64_t>(8, count - 8 * g);  // tiles of the group (the rest is padding)
    int64_t at[8], y[8], x[8];
    for (int64_t j = 0; j < live; ++j) {
      int64_t b;
      locate(t0 + 8 * g + j, b, y[j], x[j]);
      at[j] = pixel(blocked, s_.k, s_.h, s_.w, b, y[j], x[j], 0);
    }
    const __m256 zero = _mm256_setzero_ps();
    for (int64_t kb = kb0; kb < kb1; ++kb) {
      __m256 out[4][8];  // [output pixel of the tile][channel], lanes: tiles
      for (int ch = 0; ch < 8; ++ch) {
        const float* m = mbuf + (kb * 8 + ch) * padded + g * 8;
        __m256 v[16];
        for (int e = 0; e < 16; ++e) v[e] = _mm256_load_ps(m + e * kpad_ * padded);
        __m256 r[2][4];  // A^T M
        for (int q = 0; q < 4; ++q) {
          r[0][q] = _mm256_add_ps(_mm256_add_ps(v[q], v[4 + q]), v[8 + q]);
          r[1][q] = _mm256_sub_ps(_mm256_sub_ps(v[4 + q], v[8 + q]), v[12 + q]);
        }
        for (int i = 0; i < 2; ++i) {  // (A^T M) A
          out[i * 2 + 0][ch] = _mm256_add_ps(_mm256_add_ps(r[i][0], r[i][1]), r[i][2]);
          out[i * 2 + 1][ch] = _mm256_sub_ps(_mm256_sub_ps(r[i][1], r[i][2]), r[i][3]);
        }
      }
      for (int p = 0; p < 4; ++p) transpose8(out[p]);  // lanes: channels
      const __m256 bias = _mm256_loadu_ps(bias_ + kb * 8);
      for (int64_t j = 0; j < live; ++j) {
        float* o = dst + at[j] + kb * bs;
        for (int p = 0; p < 4; ++p) {
          if (y[j] + p / 2 >= s_.h || x[j] + p % 2 >= s_.w) continue;  // (an odd map's last row, column)
          float* op = o + (p / 2) * rs + (p % 2) * cs;
          __m256 val = _mm256_add_ps(out[p][j], bias);
          if (s_.sum) val = _mm256_add_ps(val, _mm256_loadu_ps(op));
          if (s_.relu) val = _mm256_max_ps(val, zero);
          _mm256_storeu_ps(op, val);
        }
      }
    }
  }

  Shape s_;
  bool by_tiles_ = false;
  int threads_ = 1;
  int64_t kpad_ = 0, th_ = 0, tw_ = 0, tiles_ = 0, chunk_ = 0;
  float *u_ = nullptr, *v_ = nullptr, *m_ = nullptr, *bias_ = nullptr;
};

}  // namespace winograd
#endif  // __x86_64__
