// Small-batch linear layers for x86 CPUs with AVX2 + FMA: y = x @ w^T (+ b).
//
// Decoding multiplies a few activation rows (M <= ~16) by large weight matrices, so the time is
// the time to stream the weights from memory once. ATen's bf16 GEMM on CPUs without AVX-512
// BF16 falls back to a compute-bound path that is 4x slower at M = 5 than at M = 1; these
// kernels read each weight row once per block of rows and keep the product in fp32 registers.
//
// bf16 weights are widened 16 at a time by masking (even elements, then odd: no shuffles, see
// tile16); x is permuted once per call to match. Every output element is one dot product
// accumulated in the same order (FMA lanes over k, a fixed horizontal sum, then the scalar
// tail) whatever M, the row's position in the batch or the thread split: results are bitwise
// independent of batch shape, so a token's logits in a K+1-token verification equal its logits
// in a 1-token decode.
//
// Weights: bf16 [N, K], or int8 [N, K] with one fp32 scale per output row (w = q * scale).
// With int8 weights, x is quantized too, each row to 8 bits with one fp32 scale, and the whole
// row's dot product is exact in int32 (vpmaddubsw + vpmaddwd, or vpdpbusd), converted to fp32
// once per output: an error of at most 0.4% of the row's largest activation per element. The
// integer sum is the same whatever the instructions, so int8 outputs are bitwise equal on AVX2
// and AVX-512 builds. Only drafts use int8 weights, and a draft's rounding costs acceptance,
// never exactness (the 0.5B Qwen draft predicted 78.3% of its target's greedy tokens this way,
// 78.0% with the earlier 7-bit blocks of 32, 76.0% with 7 bits per row).
//
// Built for a CPU with AVX-512 BF16 and VNNI (SSD_AVX512), the bf16 tiles run at 512 bits and
// int8 weights use vpdpbusd, 64 weight bytes per row per step; both keep a fixed per-element
// order, so batch invariance holds within a build. Where the CPU issues vdpbf16ps at the FMA
// rate (SSD_BF16_DOT: AMD's AVX-512 cores), bf16 weights meet bf16-valued x in tile_dot.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include "kernels.h"
#include "simd.h"

#include <algorithm>
#if SSD_AMX
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <cmath>
#include <type_traits>
#include <vector>

namespace {

using ssd_simd::hsum;
using ssd_simd::load8;
using ssd_simd::to_float;

constexpr int R = 4;  // weight rows per block
// Unrolls the next loop before GCC allocates registers, so that an array of accumulators lives
// in registers (see tile_vnni).
#define SSD_UNROLL _Pragma("GCC unroll 8")

// A tile reads R weight rows side by side; where rows are short (int8 rows of 896 bytes) the
// hardware prefetcher does not catch up with R interleaved streams before they end. Asking for
// each row's bytes kAhead ahead (past a row's end: the next rows, which the next tile reads)
// took [4864, 896] int8 matrices from 6.2-6.5 to 11.2-13.6 GB/s on two threads. bf16 rows
// against one or two x rows showed no gain; against five (verification), where each byte costs
// more FMAs and fewer loads are in flight, one thread went from 3.6-4.8 to 6.7-7.2 GB/s. On a
// Xeon with AVX-512 (two threads, medians of nine interleaved runs over 1.1 GB of [8960, 1536]
// bf16), the AVX-512 tiles do better asking the outer caches for the bytes the next block reads
// at the same k and L1 for this row's bytes 1 KB on (`prefetch_ahead`): 18.6 -> 20.4 GB/s at
// M = 1 and 13.9 -> 15.8 at M = 5 against a single L1 prefetch 8 KB on; the int8 draft's
// matrices 14.6 -> 15.4 and 10.0 -> 11.0.
constexpr int64_t kAhead = 2048;  // bytes, int8 rows (AVX2)
constexpr int64_t kAhead16 = 4096;  // bytes, bf16 rows against three or more x rows (AVX2)
inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

// AVX-512 tiles: the bytes the next block reads at this k (`next` elements on) into the outer
// caches (hint T2), and this row's bytes 1 KB on into L1 (`Near`, hint T0) and/or 4 KB on into
// L2 (`Far`, hint T1). On Zen 4 (kFarPrefetch) the int8 tiles ask L2 alone: an L1 prefetch holds
// one of the core's few L1 miss buffers until its line comes from memory, and at four x rows a
// tile issues them too slowly to keep enough lines in flight. `kernel_ab.py --int8 --together
// --threads 1`: [4864, 896] at M = 4 1.31 x, [896, 4864] 1.10 x, M = 1 and 5 0.95-1.08 x
// (finding 44); both prefetches, 1.01-1.02 x more. The bf16 tile_dot there asks both: against the
// L1 one alone, [8960, 1536] 1.09-1.14 x at M = 1 and 5 on one thread and 1.06-1.10 x on two,
// [1536, 8960] 1.02-1.14 x; L2 alone 0.96-0.99 x (finding 46).
template <bool Near = true, bool Far = false, typename W>
inline void prefetch_ahead(const W* p, int64_t next) {
  _mm_prefetch(reinterpret_cast<const char*>(p + next), _MM_HINT_T2);
  if constexpr (Near) _mm_prefetch(reinterpret_cast<const char*>(p) + 1024, _MM_HINT_T0);
  if constexpr (Far) _mm_prefetch(reinterpret_cast<const char*>(p) + 4096, _MM_HINT_T1);
}
constexpr bool kFarPrefetch = SSD_L2_PREFETCH;

// Where the next block's row lies from this one (see matmul): the next row of the same run, or
// R rows on where a task holds one block (runs of one row).
inline int64_t next_block(int64_t S, int64_t K) { return S == 1 ? R * K : K; }

// bf16, 16 weights per step, split by parity with no shuffles: the 32-bit lane holding the pair
// (w[2j], w[2j + 1]) is w[2j + 1] in fp32 once its low half is cleared, and the same load two
// bytes earlier, (w[2j - 1], w[2j]), gives w[2j]. `xp` holds x split the same way (see
// permute16). The first step of a row widens w[2j] by a shift instead, so that no load starts
// before the matrix. Unpacking with zeros (the earlier widening) issues on a port the FMAs also
// use; masking does not: in L1, [4, 768] tiles against two x rows went from 20 to 35 GB/s.
// x is loaded once per row and kept in a register (`keep`): left to itself the compiler folds
// each x load into both FMAs that use it, and Zen 3 issues only two 256-bit loads per cycle.
inline void keep(__m256& v) { asm("" : "+x"(v)); }

template <int MT, int RR>
inline void tile16(const float* xp, const c10::BFloat16* w, float* out, int64_t K, int64_t N,
                   int64_t m0, int64_t n, int64_t S) {
  const __m256 high = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0xFFFF0000u)));
  __m256 acc[MT][RR];
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < RR; ++r) acc[i][r] = _mm256_setzero_ps();
  const auto fma_all = [&](const __m256 (&wv)[RR], const float* x) {
    for (int i = 0; i < MT; ++i) {
      __m256 xv = _mm256_loadu_ps(x + (m0 + i) * K);
      keep(xv);
      for (int r = 0; r < RR; ++r) acc[i][r] = _mm256_fmadd_ps(wv[r], xv, acc[i][r]);
    }
  };
  const auto row = [&](int r, int64_t k) { return w + (n + r * S) * K + k; };
  const int64_t K16 = K / 16 * 16;
  for (int64_t k = 0; k < K16; k += 16) {
    __m256 wv[RR];
    for (int r = 0; r < RR; ++r) {
      if constexpr (MT >= 3) prefetch(row(r, k) + kAhead16 / 2);
      if (k == 0) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row(r, 0)));
        wv[r] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
      } else {
        const float* before = reinterpret_cast<const float*>(row(r, k) - 1);
        wv[r] = _mm256_and_ps(high, _mm256_loadu_ps(before));
      }
    }
    fma_all(wv, xp + k);
    for (int r = 0; r < RR; ++r)
      wv[r] = _mm256_and_ps(high, _mm256_loadu_ps(reinterpret_cast<const float*>(row(r, k))));
    fma_all(wv, xp + k + 8);
  }
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < RR; ++r) {
      float s = hsum(acc[i][r]);
      for (int64_t t = K16; t < K; ++t) s += xp[(m0 + i) * K + t] * to_float(*row(r, t));
      out[(m0 + i) * N + n + r * S] = s;
    }
}

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 1)));
}

// sum of (w + offset) x over k in [k0, K): what a tile's vector steps leave over.
inline int32_t tail_q8(const int8_t* x, const int8_t* w, int64_t k0, int64_t K, int32_t offset) {
  int32_t s = 0;
  for (int64_t k = k0; k < K; ++k) s += (static_cast<int32_t>(w[k]) + offset) * x[k];
  return s;
}

// x quantized per row to 8 bits (`xq` [M, K] in [-127, 127], scales `xs` [M]) against int8
// weight rows (AVX2). vpmaddubsw multiplies unsigned by signed bytes and adds pairs in int16: it
// takes |x| against w with x's sign (vpsignb), whose pairs (at most 2 * 127 * 127) cannot
// saturate. The row's dot product accumulates exactly in int32: four instructions per x row and
// 32 weight bytes, as the earlier blocks of 32 took for 7-bit x (the two that converted and
// scaled each block's sum now go once per output; vpsignb and the int32 add are the cost of 8
// bits).
template <int MT, int RR>
inline void tile_q8(const int8_t* xq, const float* xs, const int8_t* w, float* out, int64_t K,
                    int64_t N, int64_t m0, int64_t n, int64_t S) {
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t K32 = K / 32 * 32;
  __m256i acc[MT][RR];
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < RR; ++r) acc[i][r] = _mm256_setzero_si256();
  for (int64_t k = 0; k < K32; k += 32) {
    __m256i wv[RR];
    for (int r = 0; r < RR; ++r) {
      const int8_t* row = w + (n + r * S) * K + k;
      wv[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row));
      prefetch(row + kAhead);
    }
    for (int i = 0; i < MT; ++i) {
      const __m256i xv =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + (m0 + i) * K + k));
      const __m256i xa = _mm256_abs_epi8(xv);
      for (int r = 0; r < RR; ++r) {
        const __m256i pairs = _mm256_maddubs_epi16(xa, _mm256_sign_epi8(wv[r], xv));
        acc[i][r] = _mm256_add_epi32(acc[i][r], _mm256_madd_epi16(pairs, ones));
      }
    }
  }
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < RR; ++r) {
      const int64_t m = m0 + i;
      const int32_t tail = tail_q8(xq + m * K, w + (n + r * S) * K, K32, K, 0);
      out[m * N + n + r * S] = static_cast<float>(hsum_epi32(acc[i][r]) + tail) * xs[m];
    }
}

#if SSD_AVX512
// AVX-512: tile16 at twice the width. Unpacking with zeros widens bf16 lanes {0-3, 8-11, 16-19,
// 24-27} and {4-7, 12-15, 20-23, 28-31} of each 32; `xp` holds x permuted to match (permute32).
// (vdpbf16ps takes bf16 x in one instruction per 32 pairs, but on the Xeons measured it issues
// at a quarter of the FMA rate: slower from two x rows on. tile_dot where it does not.)
template <int MT, int RR>
inline void tile32(const float* xp, const c10::BFloat16* w, float* out, int64_t K, int64_t N,
                   int64_t m0, int64_t n, int64_t S) {
  const __m512i zero = _mm512_setzero_si512();
  __m512 acc[MT][RR];
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < RR; ++r) acc[i][r] = _mm512_setzero_ps();
  const int64_t K32 = K / 32 * 32;
  for (int64_t k = 0; k < K32; k += 32) {
    __m512 lo[RR], hi[RR];
    for (int r = 0; r < RR; ++r) {
      const __m512i v = _mm512_loadu_si512(w + (n + r * S) * K + k);
      prefetch_ahead(w + (n + r * S) * K + k, next_block(S, K));
      lo[r] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, v));
      hi[r] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, v));
    }
    for (int i = 0; i < MT; ++i) {
      const __m512 xl = _mm512_loadu_ps(xp + (m0 + i) * K + k);
      for (int r = 0; r < RR; ++r) acc[i][r] = _mm512_fmadd_ps(lo[r], xl, acc[i][r]);
      const __m512 xh = _mm512_loadu_ps(xp + (m0 + i) * K + k + 16);
      for (int r = 0; r < RR; ++r) acc[i][r] = _mm512_fmadd_ps(hi[r], xh, acc[i][r]);
    }
  }
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < RR; ++r) {
      float s = _mm512_reduce_add_ps(acc[i][r]);
      for (int64_t t = K32; t < K; ++t) s += xp[(m0 + i) * K + t] * to_float(w[(n + r * S) * K + t]);
      out[(m0 + i) * N + n + r * S] = s;
    }
}

#if SSD_BF16_DOT
// Where vdpbf16ps issues as fast as an FMA (Zen 4), it takes 32 bf16 pairs where the FMA takes
// 16 fp32 ones and needs no widening: x goes in as bf16 (`to_bf16`: exact, the layers'
// activations are bf16 values), each lane sums its pairs (k = 2j, 2j + 1 of each 32) into fp32,
// and a row's tail rides in one masked step, so every output is the same sum in the same order
// whatever M or the thread split. On the Xeons measured it issues at a quarter of the FMA rate
// (docs/performance.md, findings 11 and 42): the build picks by CPU. With x rows and weights
// in registers, up to six x rows against four weight rows (24 accumulators).
template <int MT, int RR>
inline void tile_dot(const c10::BFloat16* xb, const c10::BFloat16* w, float* out, int64_t K,
                     int64_t N, int64_t m0, int64_t n, int64_t S) {
  __m512 acc[MT][RR];
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < RR; ++r) acc[i][r] = _mm512_setzero_ps();
  const int64_t K32 = K / 32 * 32;
  for (int64_t k = 0; k < K32; k += 32) {
    __m512bh wv[RR];
    for (int r = 0; r < RR; ++r) {
      const c10::BFloat16* row = w + (n + r * S) * K + k;
      wv[r] = (__m512bh)_mm512_loadu_si512(row);
      prefetch_ahead<true, kFarPrefetch>(row, next_block(S, K));
    }
    for (int i = 0; i < MT; ++i) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + (m0 + i) * K + k);
      for (int r = 0; r < RR; ++r) acc[i][r] = _mm512_dpbf16_ps(acc[i][r], xv, wv[r]);
    }
  }
  // The tail: one more step, zeros past the row's end. (Kept apart from the loop: with the
  // step in a helper taking acc by reference, or a mask computed every step, GCC 12 kept the
  // accumulators on the stack, storing each at every step: 2.6 x slower.)
  if (K32 < K) {
    const __mmask32 take = static_cast<__mmask32>((1u << (K - K32)) - 1);
    for (int r = 0; r < RR; ++r) {
      const __m512bh wt = (__m512bh)_mm512_maskz_loadu_epi16(take, w + (n + r * S) * K + K32);
      for (int i = 0; i < MT; ++i) {
        const __m512bh xt = (__m512bh)_mm512_maskz_loadu_epi16(take, xb + (m0 + i) * K + K32);
        acc[i][r] = _mm512_dpbf16_ps(acc[i][r], xt, wt);
      }
    }
  }
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < RR; ++r) out[(m0 + i) * N + n + r * S] = _mm512_reduce_add_ps(acc[i][r]);
}

// fp32 x of bf16 values -> bf16 (round to nearest even: exact on bf16 values).
at::Tensor to_bf16(const float* x, int64_t M, int64_t K) {
  return at::from_blob(const_cast<float*>(x), {M, K}, at::kFloat).to(at::kBFloat16);
}
#endif

// AVX-512 VNNI: tile_q8's product, 64 weight bytes per row per step, one instruction per x row
// and weight vector: vpdpbusd multiplies unsigned by signed bytes and adds each four products to
// an int32 lane (no int16 step to saturate), so w goes in with its sign bit flipped (w + 128)
// against x, and the 128 * sum(x) that adds to every output of a row comes off at the end
// (`xc`). The same integers as tile_q8, so the same outputs. Against the 7-bit blocks of 32
// (which also converted and scaled every block's sum: three instructions), `python
// benchmarks/kernel_ab.py --int8 --threads 1 --together` at four and five x rows: [4864, 896]
// 1.02-1.08 x, [896, 4864] 1.02-1.15 x. Up to six x rows against four weight rows (24
// accumulators, the four weight vectors, x and the flip: 30 of 32 registers).
//
// Every loop over the tile's registers is unrolled by GCC before it allocates them (SSD_UNROLL):
// unrolled later, GCC 12 kept acc[MT][RR] as an array, copying each accumulator to a scratch
// register and back around its vpdpbusd and storing some to the stack at every step. In cache
// (`kernel_ab.py --int8 --together --threads 1 --matrices 1`, [4864, 896]) four x rows went from
// 24 to 29 GB/s and five from 16 to 25; from memory (120 matrices) 1.28 x and 1.54 x (finding
// 45).
template <int MT, int RR>
inline void tile_vnni(const int8_t* xq, const float* xs, const int32_t* xc, const int8_t* w,
                      float* out, int64_t K, int64_t N, int64_t m0, int64_t n, int64_t S) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const int64_t K64 = K / 64 * 64;
  __m512i acc[MT][RR];
SSD_UNROLL
  for (int i = 0; i < MT; ++i)
SSD_UNROLL
    for (int r = 0; r < RR; ++r) acc[i][r] = _mm512_setzero_si512();
  for (int64_t k = 0; k < K64; k += 64) {
    __m512i wu[RR];
SSD_UNROLL
    for (int r = 0; r < RR; ++r) {
      const int8_t* row = w + (n + r * S) * K + k;
      wu[r] = _mm512_xor_si512(flip, _mm512_loadu_si512(row));
      prefetch_ahead<!kFarPrefetch, kFarPrefetch>(row, next_block(S, K));
    }
SSD_UNROLL
    for (int i = 0; i < MT; ++i) {
      const __m512i xv = _mm512_loadu_si512(xq + (m0 + i) * K + k);
SSD_UNROLL
      for (int r = 0; r < RR; ++r) acc[i][r] = _mm512_dpbusd_epi32(acc[i][r], wu[r], xv);
    }
  }
SSD_UNROLL
  for (int i = 0; i < MT; ++i)
SSD_UNROLL
    for (int r = 0; r < RR; ++r) {
      const int64_t m = m0 + i;
      const int32_t dot = _mm512_reduce_add_epi32(acc[i][r]) +
                          tail_q8(xq + m * K, w + (n + r * S) * K, K64, K, 128) - xc[m];
      out[m * N + n + r * S] = static_cast<float>(dot) * xs[m];
    }
}
#endif

#if SSD_AMX
// AMX (Xeons since Sapphire Rapids): one tdpbssd multiplies 16 weight rows of 64 int8 by 16 x
// rows of 64 int8 into int32, exactly, so a row's dot product is the same integer as tile_vnni's
// and its output the same bits. The weights are the row tile as they lie (16 rows K apart: 16 K
// contiguous bytes), x is packed per call into column tiles, and the product costs the same at
// one x row or sixteen, where tile_vnni's VNNI port binds past five. The draft's matrices on
// one thread (`python benchmarks/forward_matrices.py --model draft --rows 4,12,16,56`, this
// build against SSD_CPU_AMX=0, twice): 12 rows 52-54 ms against 72-73, 16 rows 54-57 against
// 89-91, 56 rows (a prompt's prefill) 122-124 against 336-341; at ten rows an earlier build
// was already ahead (59-63 against 66-70 ms), below it tile_vnni is as fast or faster (four
// rows 42-44 ms).
struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Tile 0: the int32 product [16 weight rows][16 x rows]; 1: x, 16 groups of four k by 16 rows
// (zero past the last); 2: 16 weight rows of 64 k. Every tile 16 rows of 64 bytes. A constant:
// stores into a local config may be moved past the ldtilecfg that reads them.
constexpr TileConfig kTiles = {1, 0, {}, {64, 64, 64}, {16, 16, 16}};
constexpr int64_t kAmxRows = 10;  // x rows from which the AMX tiles serve a call

// Linux hands a process the AMX tile registers only once asked (arch_prctl XCOMP_PERM, XTILEDATA).
bool amx_granted() {
  static const bool granted = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return granted;
}

// The 16 rows of a tile of 64-byte rows, as offsets in 4-byte units: scatter and gather indices.
inline __m512i tile_rows() {
  return _mm512_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224,
                           240);
}

// xq [M, K] as column tiles: per chunk of 16 rows, per 64 k, [16 groups][16 rows][4].
std::vector<int8_t> pack_columns(const int8_t* xq, int64_t M, int64_t K) {
  const int64_t KB = K / 64, chunks = (M + 15) / 16;
  std::vector<int8_t> xb(chunks * KB * 1024, 0);
  const __m512i rows = tile_rows();
  for (int64_t m = 0; m < M; ++m) {
    int8_t* dst = xb.data() + m / 16 * KB * 1024 + m % 16 * 4;
    for (int64_t kb = 0; kb < KB; ++kb)  // 64 k: four to each of the block's 16 tile rows
      _mm512_i32scatter_epi32(dst + kb * 1024, rows, _mm512_loadu_si512(xq + m * K + kb * 64), 4);
  }
  return xb;
}

// Weight rows [n, n + 16) against x rows [m0, m0 + 16): their integer products into c
// [16 weight rows][16 x rows].
inline void tile_amx_q8(const int8_t* xb, const int8_t* w, int32_t* c, int64_t K, int64_t m0,
                        int64_t n) {
  const int64_t KB = K / 64;
  _tile_zero(0);
  for (int64_t kb = 0; kb < KB; ++kb) {
    _tile_loadd(1, xb + (m0 / 16 * KB + kb) * 1024, 64);
    _tile_loadd(2, w + n * K + kb * 64, K);
    _tile_dpbssd(0, 2, 1);
  }
  _tile_stored(0, c, 64);
}

// The outputs of weight rows [n, n + 16) from their tiles `c` (one per chunk of x rows): for each
// x row m the tile's column m (16 outputs, contiguous in out) plus the K % 64 tail, converted
// and scaled by x's row scale as tile_vnni does.
inline void store_tiles(const int32_t* c, const int8_t* xq, const float* xs, const int8_t* w,
                        float* out, int64_t M, int64_t K, int64_t N, int64_t n) {
  const int64_t K64 = K / 64 * 64;
  const __m512i column = tile_rows();
  for (int64_t m = 0; m < M; ++m) {
    __m512i dot = _mm512_i32gather_epi32(column, c + m / 16 * 256 + m % 16, 4);
    if (K64 < K) {
      alignas(64) int32_t tail[16];
      for (int64_t r = 0; r < 16; ++r) tail[r] = tail_q8(xq + m * K, w + (n + r) * K, K64, K, 0);
      dot = _mm512_add_epi32(dot, _mm512_load_si512(tail));
    }
    const __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(xs[m]));
    _mm512_storeu_ps(out + m * N + n, y);
  }
}

// As `matmul`, by groups of 16 weight rows: one parallel region, each task the same share of
// every matrix's groups; `single(p, n)` computes the N_p % 16 rows left over. The outputs are
// stored 16 at a time (`store_tiles`; one by one, the conversions of [4864, 896] at 16 rows took
// a third of the call), once per kBatch groups: a read of a tile store waits for it to reach
// the cache, and reads between groups would hold up the next group's loads.
constexpr int64_t kBatch = 32;

template <typename Single>
void matmul_amx(const int8_t* xq, const float* xs, int64_t M, int64_t K,
                const std::vector<int64_t>& Ns, const std::vector<const int8_t*>& ws,
                const std::vector<float*>& os, const Single& single) {
  const std::vector<int8_t> xb = pack_columns(xq, M, K);
  const int64_t P = static_cast<int64_t>(Ns.size()), chunks = (M + 15) / 16;
  int64_t most = 0;
  for (const int64_t N : Ns) most = std::max(most, N / 16);
  at::parallel_for(0, most, 4, [&](int64_t u0, int64_t u1) {
    std::vector<int32_t> c(kBatch * chunks * 256);
    _tile_loadconfig(&kTiles);
    for (int64_t p = 0; p < P; ++p) {
      const int64_t groups = Ns[p] / 16, g0 = u0 * groups / most, g1 = u1 * groups / most;
      const int64_t N = Ns[p];
      for (int64_t gb = g0; gb < g1; gb += kBatch) {
        const int64_t ge = std::min(g1, gb + kBatch);
        for (int64_t g = gb; g < ge; ++g)
          for (int64_t j = 0; j < chunks; ++j)
            tile_amx_q8(xb.data(), ws[p], c.data() + ((g - gb) * chunks + j) * 256, K, j * 16,
                        g * 16);
        for (int64_t g = gb; g < ge; ++g)
          store_tiles(c.data() + (g - gb) * chunks * 256, xq, xs, ws[p], os[p], M, K, N, g * 16);
      }
    }
    _tile_release();
  });
  for (int64_t p = 0; p < P; ++p)
    for (int64_t n = Ns[p] / 16 * 16; n < Ns[p]; ++n) single(p, n);
}
#endif

// One bf16 weight row at a time (AVX2), for the N % R rows left over; same arithmetic per element.
inline void single(const float* x, const c10::BFloat16* w, float* out, int64_t K, int64_t N,
                   int64_t M, int64_t n) {
  for (int64_t m = 0; m < M; ++m) {
    __m256 acc = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8)
      acc = _mm256_fmadd_ps(load8(w + n * K + k), _mm256_loadu_ps(x + m * K + k), acc);
    float s = hsum(acc);
    for (int64_t t = k; t < K; ++t) s += x[m * K + t] * to_float(w[n * K + t]);
    out[m * N + n] = s;
  }
}

// One block of R weight rows (n + r S for r < R) against x rows [m0, m0 + mt), mt <= 6: calls
// tile(MT, RR, m0, n', S) with MT and RR as compile-time constants (RR weight rows per call: with
// 16 vector registers, 4 for one or two x rows, whose accumulators then still hide the FMA
// latency, 2 beyond so that MT * RR fit; with 32 (`Wide`, AVX-512), 4 up to five x rows, and up
// to six where a step needs no widened weights (`Six`: tile_dot's and tile_vnni's 24
// accumulators, 4 weights, x).
template <bool Wide, bool Six = false, typename Tile>
inline void block(const Tile& tile, int64_t mt, int64_t m0, int64_t n, int64_t S) {
  using std::integral_constant;
  auto run = [&](auto MT, auto RR) {
    for (int r = 0; r < R; r += RR) tile(MT, RR, m0, n + r * S, S);
  };
  using Four = integral_constant<int, 4>;
  using Two = integral_constant<int, 2>;
  using Wider = std::conditional_t<Wide, Four, Two>;
  switch (mt) {
    case 1: run(integral_constant<int, 1>{}, Four{}); return;
    case 2: run(integral_constant<int, 2>{}, Four{}); return;
    case 3: run(integral_constant<int, 3>{}, Wider{}); return;
    case 4: run(integral_constant<int, 4>{}, Wider{}); return;
    case 5: run(integral_constant<int, 5>{}, Wider{}); return;
    default: run(integral_constant<int, 6>{}, std::conditional_t<Six, Four, Two>{}); return;
  }
}

// out_p = x w_p^T for the matrices p that share x: blocks of R weight rows in parallel, at least
// 16 blocks (64 rows) per task; within a block the x rows go six at a time, so the block's weights
// come from memory once and from cache after. The N_p % R rows left over go through `single`.
//
// One parallel region serves every matrix: a task takes the same share of each matrix's blocks
// (its range of the largest matrix's blocks, scaled), so no thread waits at the end of one matrix
// for the other before the next starts. Two threads streamed Qwen2.5-1.5B's gate and up matrices
// (2 x [8960, 1536] bf16 per layer) at 24-25 GB/s one call each and at 28 in one call; q, k and v
// at 18-20 and 22-24.
//
// A task's rows [R b0, R b1) of a matrix are cut into R runs of S = b1 - b0 rows, and block j
// takes row j of each run: each of a tile's R weight streams then runs on through its run's
// memory (row n + 1 starts where row n ends) instead of stopping after one row, and the hardware
// prefetchers, which need a few lines to pick up a stream, follow R long streams. Two Zen 3
// cores streamed [8960, 1536] bf16 (rows of 3 KB) at 19 GB/s with adjacent rows per block
// and [1536, 8960] (17.5 KB) at 29: short streams were the difference. On a Xeon with
// AVX-512, against adjacent rows and `prefetch_ahead` alone, one thread went from 13.2 to 14.6
// GB/s at M = 1 and 11.3 to 13.3 at M = 5 (bf16 [8960, 1536]), int8 [4864, 896] from 8.3 to
// 10.2 at M = 5.
//
// `tile(p, MT, RR, m0, n, S)` and `single(p, n)` compute matrix p's outputs. The partition
// changes no output element: each is one dot product in a fixed order (batch invariance).
template <bool Wide = false, bool Six = false, typename Tile, typename Single>
void matmul(int64_t M, const std::vector<int64_t>& Ns, const Tile& tile, const Single& single) {
  const int64_t P = static_cast<int64_t>(Ns.size());
  int64_t most = 0;
  for (const int64_t N : Ns) most = std::max(most, N / R);
  at::parallel_for(0, most, 16, [&](int64_t u0, int64_t u1) {
    for (int64_t p = 0; p < P; ++p) {
      const int64_t blocks = Ns[p] / R;
      const int64_t b0 = u0 * blocks / most, b1 = u1 * blocks / most, S = b1 - b0;
      const auto part = [&](auto MT, auto RR, int64_t m0, int64_t n, int64_t s) {
        tile(p, MT, RR, m0, n, s);
      };
      for (int64_t j = 0; j < S; ++j) {
        const int64_t n = b0 * R + j;
        for (int64_t m = 0; m < M; m += 6) block<Wide, Six>(part, std::min<int64_t>(6, M - m), m, n, S);
      }
    }
  });
  for (int64_t p = 0; p < P; ++p)
    for (int64_t n = Ns[p] / R * R; n < Ns[p]; ++n) single(p, n);
}

// x [M, K] -> 8 bits per row (`q` in [-127, 127]), the row's scale (amax / 127; an all-zero
// row gets scale 0) and `c` = 128 * sum(q): what flipping the weights' sign bits adds to each of
// the row's products (tile_vnni). Eight lanes at a time, tails one by one, with the same
// operations (max, multiply, round to nearest even).
void quantize_q8(const float* x, int64_t M, int64_t K, std::vector<int8_t>& q,
                 std::vector<float>& s, std::vector<int32_t>& c) {
  const int64_t K8 = K / 8 * 8;
  q.resize(M * K);
  s.resize(M);
  c.resize(M);
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t m = 0; m < M; ++m) {
    const float* src = x + m * K;
    int8_t* dst = q.data() + m * K;
    __m256 most = _mm256_setzero_ps();
    for (int64_t k = 0; k < K8; k += 8)
      most = _mm256_max_ps(_mm256_and_ps(magnitude, _mm256_loadu_ps(src + k)), most);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(most), _mm256_extractf128_ps(most, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
    for (int64_t k = K8; k < K; ++k) amax = std::max(amax, std::fabs(src[k]));
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    const __m256 inv8 = _mm256_set1_ps(inv);
    const auto rounded = [&](int64_t k) {
      return _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(src + k), inv8),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    };
    __m256i total = _mm256_setzero_si256();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      __m256i r[4];
      for (int j = 0; j < 4; ++j) total = _mm256_add_epi32(total, r[j] = rounded(k + 8 * j));
      // int32 -> int8 (|v| <= 127): the packs interleave 128-bit lanes, the permute restores order
      const __m256i bytes = _mm256_permutevar8x32_epi32(
          _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3])), order);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), bytes);
    }
    int32_t sum = hsum_epi32(total);
    for (; k < K; ++k) {
      dst[k] = static_cast<int8_t>(std::nearbyint(src[k] * inv));
      sum += dst[k];
    }
    s[m] = amax / 127.f;
    c[m] = 128 * sum;
  }
}

// x [M, K] with each full block of 16 split by parity as `tile16` reads it: elements 0, 2, ...,
// 14, then 1, 3, ..., 15. In a tensor, so that rows of a multiple of 8 floats start 32-byte
// aligned (a std::vector's buffer can start 16 bytes off, and then every other load of x
// straddles two cache lines).
at::Tensor permute16(const float* x, int64_t M, int64_t K) {
  at::Tensor xp = at::empty({M, K}, at::kFloat);
  float* dst = xp.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m) {
    const float* src = x + m * K;
    float* d = dst + m * K;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16)
      for (int j = 0; j < 8; ++j) {
        d[k + j] = src[k + 2 * j];
        d[k + 8 + j] = src[k + 2 * j + 1];
      }
    for (; k < K; ++k) d[k] = src[k];
  }
  return xp;
}

void add_bias(float* o, int64_t M, int64_t N, const c10::optional<at::Tensor>& bias) {
  if (!bias.has_value()) return;
  const at::Tensor bc = bias->to(at::kFloat).contiguous();
  const float* bp = bc.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) o[m * N + n] += bp[n];
}

// x [M, K] with each full block of 32 reordered to the lanes `tile32` widens: the first four of
// each eight, then the last four of each eight.
std::vector<float> permute32(const float* x, int64_t M, int64_t K) {
  std::vector<float> xp(x, x + M * K);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k + 32 <= K; k += 32)
      for (int g = 0; g < 4; ++g)
        for (int j = 0; j < 4; ++j) {
          xp[m * K + k + g * 4 + j] = x[m * K + k + g * 8 + j];
          xp[m * K + k + 16 + g * 4 + j] = x[m * K + k + g * 8 + 4 + j];
        }
  return xp;
}

}  // namespace

namespace ssd_kernels {

void linear_f32(const float* xf, int64_t M, const std::vector<Projection>& parts, bool x_bf16) {
  TORCH_CHECK(!parts.empty(), "ssd cpu linear: no weights");
  const at::Tensor& w0 = parts[0].w;
  const int64_t K = w0.size(1);
  const auto dtype = w0.scalar_type();
  const int64_t P = static_cast<int64_t>(parts.size());
  std::vector<int64_t> Ns;
  std::vector<float*> os;
  for (const Projection& part : parts) {
    const at::Tensor& w = part.w;
    TORCH_CHECK(w.device().is_cpu(), "ssd cpu linear: CPU tensors only");
    TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "ssd cpu linear: w must be a contiguous [N, K]");
    TORCH_CHECK(w.size(1) == K && w.scalar_type() == dtype,
                "ssd cpu linear: the weights of one call share K and dtype");
    TORCH_CHECK(dtype == at::kBFloat16 ? !part.scale.has_value()
                                       : dtype == at::kChar && part.scale.has_value(),
                "ssd cpu linear: weights must be bf16, or int8 with a scale per row");
    Ns.push_back(w.size(0));
    os.push_back(part.out);
  }
  if (dtype == at::kBFloat16) {
    std::vector<const c10::BFloat16*> wps;
    for (const Projection& part : parts) wps.push_back(part.w.data_ptr<c10::BFloat16>());
#if SSD_BF16_DOT
    if (x_bf16) {
      const at::Tensor xt = to_bf16(xf, M, K);
      const c10::BFloat16* xb = xt.data_ptr<c10::BFloat16>();
      matmul<true, true>(
          M, Ns,
          [&](int64_t p, auto MT, auto RR, int64_t m0, int64_t n, int64_t S) {
            tile_dot<decltype(MT)::value, decltype(RR)::value>(xb, wps[p], os[p], K, Ns[p], m0,
                                                               n, S);
          },
          [&](int64_t p, int64_t n) {
            for (int64_t m = 0; m < M; ++m) tile_dot<1, 1>(xb, wps[p], os[p], K, Ns[p], m, n, 1);
          });
      for (int64_t p = 0; p < P; ++p) add_bias(os[p], M, Ns[p], parts[p].bias);
      return;
    }
#endif
#if SSD_AVX512
    const std::vector<float> xp = permute32(xf, M, K);
    matmul<true>(
        M, Ns,
        [&](int64_t p, auto MT, auto RR, int64_t m0, int64_t n, int64_t S) {
          tile32<decltype(MT)::value, decltype(RR)::value>(xp.data(), wps[p], os[p], K, Ns[p], m0,
                                                           n, S);
        },
        [&](int64_t p, int64_t n) {
          for (int64_t m = 0; m < M; ++m) tile32<1, 1>(xp.data(), wps[p], os[p], K, Ns[p], m, n, 1);
        });
#else
    const at::Tensor xt = permute16(xf, M, K);
    const float* xp = xt.data_ptr<float>();
    matmul(
        M, Ns,
        [&](int64_t p, auto MT, auto RR, int64_t m0, int64_t n, int64_t S) {
          tile16<decltype(MT)::value, decltype(RR)::value>(xp, wps[p], os[p], K, Ns[p], m0, n, S);
        },
        [&](int64_t p, int64_t n) { single(xf, wps[p], os[p], K, Ns[p], M, n); });
#endif
    for (int64_t p = 0; p < P; ++p) add_bias(os[p], M, Ns[p], parts[p].bias);
    return;
  }
  std::vector<const int8_t*> wps;
  for (const Projection& part : parts) wps.push_back(part.w.data_ptr<int8_t>());
  std::vector<int8_t> xq;
  std::vector<float> xs;
  std::vector<int32_t> xc;
  quantize_q8(xf, M, K, xq, xs, xc);
#if SSD_AVX512
  const auto product = [&](int64_t p, auto MT, auto RR, int64_t m0, int64_t n, int64_t S) {
    tile_vnni<decltype(MT)::value, decltype(RR)::value>(xq.data(), xs.data(), xc.data(), wps[p],
                                                        os[p], K, Ns[p], m0, n, S);
  };
  constexpr bool wide = true;
#else
  const auto product = [&](int64_t p, auto MT, auto RR, int64_t m0, int64_t n, int64_t S) {
    tile_q8<decltype(MT)::value, decltype(RR)::value>(xq.data(), xs.data(), wps[p], os[p], K,
                                                      Ns[p], m0, n, S);
  };
  constexpr bool wide = false;
#endif
  const auto single = [&](int64_t p, int64_t n) {
    for (int64_t m = 0; m < M; ++m)
      product(p, std::integral_constant<int, 1>{}, std::integral_constant<int, 1>{}, m, n, 1);
  };
#if SSD_AMX
  if (M >= kAmxRows && K >= 64 && amx_granted())
    matmul_amx(xq.data(), xs.data(), M, K, Ns, wps, os, single);
  else
#endif
    matmul<wide, /*Six=*/wide>(M, Ns, product, single);
  for (int64_t p = 0; p < P; ++p) {
    const at::Tensor sc = parts[p].scale->to(at::kFloat).contiguous();
    const float* sp = sc.data_ptr<float>();
    float* o = os[p];
    const int64_t N = Ns[p];
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) o[m * N + n] *= sp[n];
    add_bias(o, M, N, parts[p].bias);
  }
}

}  // namespace ssd_kernels

namespace {

// x [..., K] against each w [N_p, K]: [..., N_p] per matrix, in x's dtype, in one parallel region.
std::vector<at::Tensor> linear(const at::Tensor& x, at::TensorList w,
                               const c10::List<c10::optional<at::Tensor>>& scale,
                               const c10::List<c10::optional<at::Tensor>>& bias) {
  TORCH_CHECK(x.device().is_cpu(), "ssd cpu linear: CPU tensors only");
  TORCH_CHECK(!w.empty() && scale.size() == w.size() && bias.size() == w.size(),
              "ssd cpu linear: one scale and one bias (or None) per weight");
  const int64_t K = w[0].size(1);
  TORCH_CHECK(x.size(-1) == K, "ssd cpu linear: x's last dim ", x.size(-1), " != K ", K);
  const at::Tensor x2 = x.reshape({-1, K}).to(at::kFloat).contiguous();
  const int64_t M = x2.size(0);
  std::vector<at::Tensor> outs;
  std::vector<ssd_kernels::Projection> parts;
  for (size_t p = 0; p < w.size(); ++p) {
    outs.push_back(at::empty({M, w[p].size(0)}, x2.options()));
    parts.push_back({w[p], scale.get(p), bias.get(p), outs.back().data_ptr<float>()});
  }
  ssd_kernels::linear_f32(x2.data_ptr<float>(), M, parts, x.scalar_type() == at::kBFloat16);
  for (at::Tensor& out : outs) {
    auto shape = x.sizes().vec();
    shape.back() = out.size(1);
    out = out.to(x.scalar_type()).view(shape);
  }
  return outs;
}

}  // namespace
TORCH_LIBRARY_FRAGMENT(ssd_cpu, m) {
  m.def("linear(Tensor x, Tensor[] w, Tensor?[] scale, Tensor?[] bias) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(ssd_cpu, CPU, m) { m.impl("linear", &linear); }
