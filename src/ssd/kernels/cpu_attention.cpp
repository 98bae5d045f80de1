// Paged attention for x86 CPUs with AVX2 + FMA, reading K/V pages in place.
//
// The portable path gathers each sequence's pages into a contiguous copy per layer and runs
// SDPA over the whole padded view; at decoding's one to a few query rows that copy and the
// masked-out slots cost more than the attention itself. Here the rows that share a K/V head
// (a group's query heads at every query position) widen its pages to fp32 once and read them
// from cache: scores in fp32, an exact softmax over the visible slots only, and the weighted sum
// of V in fp32. Walking the block table per row, widening every slot for every head, took 11% of
// a draft's 12-row tree step. Each row is still computed alone in a fixed order, so its result
// does not depend on the batch, the query count, the page bucket or the threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace {

using ssd_simd::hsum;
using ssd_simd::to_float;

constexpr int64_t kSlots = 32;  // slots per block: a block's K or V rows stay in L1 for every row

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

// a[0, 8N) += p[j] v[j][0, 8N) for the slots j in [j0, j1) with p[j] != 0 (the visible ones),
// in slot order, the N accumulators in registers.
template <int N>
inline void weigh(const float* p, const float* v, float* a, int64_t j0, int64_t j1, int64_t Dp) {
  __m256 acc[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm256_loadu_ps(a + 8 * i);
  for (int64_t j = j0; j < j1; ++j) {
    if (p[j] == 0.f) continue;
    const __m256 pj = _mm256_set1_ps(p[j]);
    for (int i = 0; i < N; ++i)
      acc[i] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + j * Dp + 8 * i), acc[i]);
  }
  for (int i = 0; i < N; ++i) _mm256_storeu_ps(a + 8 * i, acc[i]);
}

// s[j] = q . k[j] for the slots j in [j0, j1) (a multiple of 4 slots): 8-lane partial sums over
// d, then one horizontal sum. k rows are Dp floats apart.
inline void score(const float* q, const float* k, float* s, int64_t j0, int64_t j1, int64_t Dp) {
  for (int64_t j = j0; j < j1; j += 4) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t d = 0; d < Dp; d += 8) {
      const __m256 qv = _mm256_loadu_ps(q + d);
      const float* kj = k + j * Dp + d;
      a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kj), a0);
      a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kj + Dp), a1);
      a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kj + 2 * Dp), a2);
      a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kj + 3 * Dp), a3);
    }
    s[j] = hsum(a0), s[j + 1] = hsum(a1), s[j + 2] = hsum(a2), s[j + 3] = hsum(a3);
  }
}

// Scores s[0, n8) of one row in place to its softmax's unnormalized weights over the slots
// `seen` marks (the others exactly 0), 8 slots at a time; returns 1 / their sum (0 if none).
inline float softmax(float* s, const uint8_t* seen, int64_t n8) {
  const __m256 none = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 best8 = none;
  for (int64_t j = 0; j < n8; j += 8) {
    const __m128i m8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(seen + j));
    const __m256 mask = _mm256_castsi256_ps(
        _mm256_cmpgt_epi32(_mm256_cvtepu8_epi32(m8), _mm256_setzero_si256()));
    const __m256 x = _mm256_blendv_ps(none, _mm256_loadu_ps(s + j), mask);
    _mm256_storeu_ps(s + j, x);
    best8 = _mm256_max_ps(best8, x);
  }
  const __m256 best = _mm256_set1_ps(hmax(best8));
  __m256 total8 = _mm256_setzero_ps();
  for (int64_t j = 0; j < n8; j += 8) {
    const __m256 x = _mm256_loadu_ps(s + j);
    const __m256 e = _mm256_and_ps(ssd_simd::exp8(_mm256_sub_ps(x, best)),
                                   _mm256_cmp_ps(x, none, _CMP_NEQ_OQ));
    _mm256_storeu_ps(s + j, e);
    total8 = _mm256_add_ps(total8, e);
  }
  const float total = hsum(total8);
  return total > 0.f ? 1.f / total : 0.f;
}

// q [B, Q, H, D]; pages [P + 1, page_size, H_kv, D] (the last one the sink); block_tables
// [B, max_pages] (-1: unused, read as the sink); mask [B, 1, Q, max_pages * page_size].
//
// A task is one sequence, one K/V head and a share of the query rows that read it (query
// positions times the heads of its group). The task widens its K and V rows to fp32 once, up to
// the last slot one of its rows sees, into rows of Dp = D rounded up to 8 (zeros past D); every
// row then reads them kSlots slots at a time, all rows per block, so a block is read from L1.
// Per row: scores as 8-lane partial sums over d then one horizontal sum; masked slots -inf; the
// softmax's weights 8 slots at a time (masked ones exactly 0, so they add nothing and are
// skipped); V summed in slot order. Lanes sit at fixed slot indices, so a row's result does not
// depend on the other rows, the task's range or the page bucket.
template <typename T>
void attend(const at::Tensor& q, const at::Tensor& k_pages, const at::Tensor& v_pages,
            const at::Tensor& tables, const at::Tensor& mask, double scale, at::Tensor& out) {
  const int64_t B = q.size(0), Q = q.size(1), H = q.size(2), D = q.size(3);
  const int64_t ps = k_pages.size(1), Hkv = k_pages.size(2), sink = k_pages.size(0) - 1;
  const int64_t maxp = tables.size(1), S = maxp * ps, group = H / Hkv, R = Q * group;
  const int64_t Dp = (D + 7) / 8 * 8;
  const T* qp = q.data_ptr<T>();
  const T* kp = k_pages.data_ptr<T>();
  const T* vp = v_pages.data_ptr<T>();
  const int64_t* tp = tables.data_ptr<int64_t>();
  const bool* mp = mask.data_ptr<bool>();
  T* op = out.data_ptr<T>();
  const float fscale = static_cast<float>(scale);
  // rows split into shares where a step has fewer (sequence, K/V head) pairs than threads
  const int64_t shares = std::clamp<int64_t>(at::get_num_threads() / (B * Hkv), 1, R);
  at::parallel_for(0, B * Hkv * shares, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> kf, vf, qf, sc, acc, inv;
    std::vector<uint8_t> vis;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / (Hkv * shares), kvh = t / shares % Hkv, share = t % shares;
      const int64_t r0 = share * R / shares, rows = (share + 1) * R / shares - r0;
      const auto row_mask = [&](int64_t r) { return mp + (b * Q + (r0 + r) / group) * S; };
      const auto head_row = [&](int64_t r) {
        return (b * Q + (r0 + r) / group) * H + kvh * group + (r0 + r) % group;
      };
      int64_t last = 0;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = S - 1; j >= last; --j)
          if (row_mask(r)[j]) {
            last = j + 1;
            break;
          }
      const int64_t n8 = (last + 7) / 8 * 8;
      kf.assign(n8 * Dp, 0.f);
      vf.assign(n8 * Dp, 0.f);
      for (int64_t j = 0; j < last; ++j) {
        int64_t page = tp[b * maxp + j / ps];
        if (page < 0) page = sink;
        const int64_t off = ((page * ps + j % ps) * Hkv + kvh) * D;
        for (int64_t d = 0; d < D; ++d) {
          kf[j * Dp + d] = to_float(kp[off + d]);
          vf[j * Dp + d] = to_float(vp[off + d]);
        }
      }
      qf.assign(rows * Dp, 0.f);
      vis.assign(rows * n8, 0);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t d = 0; d < D; ++d) qf[r * Dp + d] = to_float(qp[head_row(r) * D + d]) * fscale;
        std::copy(row_mask(r), row_mask(r) + last, vis.begin() + r * n8);
      }

      sc.resize(rows * n8);
      for (int64_t j0 = 0; j0 < n8; j0 += kSlots)
        for (int64_t r = 0; r < rows; ++r)
          score(qf.data() + r * Dp, kf.data(), sc.data() + r * n8, j0, std::min(n8, j0 + kSlots),
                Dp);
      inv.resize(rows);
      for (int64_t r = 0; r < rows; ++r)
        inv[r] = softmax(sc.data() + r * n8, vis.data() + r * n8, n8);

      acc.assign(rows * Dp, 0.f);
      for (int64_t j0 = 0; j0 < n8; j0 += kSlots) {
        const int64_t j1 = std::min(n8, j0 + kSlots);
        for (int64_t r = 0; r < rows; ++r) {
          const float* p = sc.data() + r * n8;
          int64_t d = 0;
          float* a = acc.data() + r * Dp;
          for (; d + 64 <= Dp; d += 64) weigh<8>(p, vf.data() + d, a + d, j0, j1, Dp);
          for (; d < Dp; d += 8) weigh<1>(p, vf.data() + d, a + d, j0, j1, Dp);
        }
      }
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t d = 0; d < D; ++d)
          op[head_row(r) * D + d] = static_cast<T>(acc[r * Dp + d] * inv[r]);
    }
  });
}

}  // namespace

namespace ssd_kernels {

at::Tensor paged_attention(const at::Tensor& q, const at::Tensor& k_pages,
                           const at::Tensor& v_pages, const at::Tensor& block_tables,
                           const at::Tensor& mask, double scale) {
  TORCH_CHECK(q.dim() == 4 && k_pages.dim() == 4 && v_pages.sizes() == k_pages.sizes(),
              "ssd paged attention: q [B, Q, H, D], pages [P + 1, page_size, H_kv, D]");
  TORCH_CHECK(q.scalar_type() == k_pages.scalar_type() && q.scalar_type() == v_pages.scalar_type(),
              "ssd paged attention: q and pages must share a dtype");
  TORCH_CHECK(q.size(3) == k_pages.size(3) && q.size(2) % k_pages.size(2) == 0,
              "ssd paged attention: head dims differ or H is not a multiple of H_kv");
  TORCH_CHECK(block_tables.scalar_type() == at::kLong && mask.scalar_type() == at::kBool,
              "ssd paged attention: int64 block tables and a bool mask");
  const int64_t S = block_tables.size(1) * k_pages.size(1);
  TORCH_CHECK(mask.dim() == 4 && mask.size(0) == q.size(0) && mask.size(1) == 1 &&
                  mask.size(2) == q.size(1) && mask.size(3) == S,
              "ssd paged attention: mask must be [B, 1, Q, max_pages * page_size]");
  const at::Tensor qc = q.contiguous(), kc = k_pages.contiguous(), vc = v_pages.contiguous();
  const at::Tensor tc = block_tables.contiguous(), mc = mask.contiguous();
  at::Tensor out = at::empty_like(qc);
  switch (q.scalar_type()) {
    case at::kFloat: attend<float>(qc, kc, vc, tc, mc, scale, out); break;
    case at::kBFloat16: attend<c10::BFloat16>(qc, kc, vc, tc, mc, scale, out); break;
    default: TORCH_CHECK(false, "ssd paged attention: float32 or bfloat16 only");
  }
  return out;
}

}  // namespace ssd_kernels

TORCH_LIBRARY_FRAGMENT(ssd_cpu, m) {
  m.def(
      "paged_attention(Tensor q, Tensor k_pages, Tensor v_pages, Tensor block_tables, "
      "Tensor mask, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(ssd_cpu, CPU, m) { m.impl("paged_attention", &ssd_kernels::paged_attention); }
