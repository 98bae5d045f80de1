// Paged attention for x86 CPUs with AVX2 + FMA, reading K/V pages in place.
//
// The portable path gathers each sequence's pages into a contiguous copy per layer and runs
// SDPA over the whole padded view; at decoding's one to a few query rows that copy and the
// masked-out slots cost more than the attention itself. Here each (sequence, query, head) row
// walks its visible slots through the block table: scores in fp32, an exact softmax over the
// visible slots only, and the weighted sum of V in fp32. Each row is computed alone in a fixed
// order, so its result does not depend on the batch, the query count or the page bucket.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace {

using ssd_simd::hsum;
using ssd_simd::load8;
using ssd_simd::to_float;

template <typename T>
inline float dot(const float* q, const T* k, int64_t D) {
  __m256 acc = _mm256_setzero_ps();
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(k + d), acc);
  float s = hsum(acc);
  for (; d < D; ++d) s += q[d] * to_float(k[d]);
  return s;
}

template <typename T>
inline void axpy(float a, const T* v, float* out, int64_t D) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t d = 0;
  for (; d + 8 <= D; d += 8)
    _mm256_storeu_ps(out + d, _mm256_fmadd_ps(av, load8(v + d), _mm256_loadu_ps(out + d)));
  for (; d < D; ++d) out[d] += a * to_float(v[d]);
}

// q [B, Q, H, D]; pages [P + 1, page_size, H_kv, D] (the last one the sink); block_tables
// [B, max_pages] (-1: unused, read as the sink); mask [B, 1 or Q, Q, max_pages * page_size].
template <typename T>
void attend(const at::Tensor& q, const at::Tensor& k_pages, const at::Tensor& v_pages,
            const at::Tensor& tables, const at::Tensor& mask, double scale, at::Tensor& out) {
  const int64_t B = q.size(0), Q = q.size(1), H = q.size(2), D = q.size(3);
  const int64_t ps = k_pages.size(1), Hkv = k_pages.size(2), sink = k_pages.size(0) - 1;
  const int64_t maxp = tables.size(1), S = maxp * ps, group = H / Hkv;
  const T* qp = q.data_ptr<T>();
  const T* kp = k_pages.data_ptr<T>();
  const T* vp = v_pages.data_ptr<T>();
  const int64_t* tp = tables.data_ptr<int64_t>();
  const bool* mp = mask.data_ptr<bool>();
  T* op = out.data_ptr<T>();
  const float fscale = static_cast<float>(scale);
  at::parallel_for(0, B * Q * H, 4, [&](int64_t r0, int64_t r1) {
    std::vector<float> qf(D), acc(D), scores(S);
    std::vector<int64_t> slots(S);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / (Q * H), i = (r / H) % Q, h = r % H, kvh = h / group;
      for (int64_t d = 0; d < D; ++d) qf[d] = to_float(qp[r * D + d]) * fscale;
      const bool* row_mask = mp + (b * Q + i) * S;
      int64_t n = 0;
      float best = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < S; ++j) {
        if (!row_mask[j]) continue;
        int64_t page = tp[b * maxp + j / ps];
        if (page < 0) page = sink;
        const int64_t off = ((page * ps + j % ps) * Hkv + kvh) * D;
        const float s = dot(qf.data(), kp + off, D);
        slots[n] = off;
        scores[n++] = s;
        best = std::max(best, s);
      }
      float total = 0.f;
      for (int64_t j = 0; j < n; ++j) total += scores[j] = std::exp(scores[j] - best);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j = 0; j < n; ++j) axpy(scores[j], vp + slots[j], acc.data(), D);
      const float inv = n ? 1.f / total : 0.f;
      for (int64_t d = 0; d < D; ++d) op[r * D + d] = static_cast<T>(acc[d] * inv);
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
