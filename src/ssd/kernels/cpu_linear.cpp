// Small-batch linear layers for x86 CPUs with AVX2 + FMA: y = x @ w^T (+ b).
//
// Decoding multiplies a few activation rows (M <= ~16) by large weight matrices, so the time is
// the time to stream the weights from memory once. ATen's bf16 GEMM on CPUs without AVX-512
// BF16 falls back to a compute-bound path that is 4x slower at M = 5 than at M = 1; these
// kernels read each weight row once per block of rows and keep the product in fp32 registers.
//
// Every output element is one dot product accumulated in the same order (8-lane FMA over k,
// then a fixed horizontal sum, then the scalar tail), whatever M, the row's position in the
// batch or the thread split: results are bitwise independent of batch shape, so a token's
// logits in a K+1-token verification equal its logits in a 1-token decode.
//
// Weights: bf16 [N, K], or int8 [N, K] with one fp32 scale per output row (w = q * scale).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <vector>

namespace {

inline __m256 load8(const c10::BFloat16* p) {
  __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

inline __m256 load8(const int8_t* p) {
  __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
}

inline float to_float(c10::BFloat16 v) { return static_cast<float>(v); }
inline float to_float(int8_t v) { return static_cast<float>(v); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

constexpr int R = 4;  // weight rows per block: independent FMA chains hide FMA latency

// Rows [m0, m0 + MT) of x against weight rows [n, n + R): out[m, n + r] = dot(x[m], w[n + r]).
template <int MT, typename W>
inline void tile(const float* x, const W* w, float* out, int64_t K, int64_t N, int64_t m0,
                 int64_t n) {
  __m256 acc[MT][R];
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < R; ++r) acc[i][r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load8(w + (n + r) * K + k);
    for (int i = 0; i < MT; ++i) {
      __m256 xv = _mm256_loadu_ps(x + (m0 + i) * K + k);
      for (int r = 0; r < R; ++r) acc[i][r] = _mm256_fmadd_ps(wv[r], xv, acc[i][r]);
    }
  }
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < R; ++r) {
      float s = hsum(acc[i][r]);
      for (int64_t t = k; t < K; ++t) s += x[(m0 + i) * K + t] * to_float(w[(n + r) * K + t]);
      out[(m0 + i) * N + n + r] = s;
    }
}

// One weight row at a time, for the N % R rows left over; same arithmetic per element.
template <typename W>
inline void single(const float* x, const W* w, float* out, int64_t K, int64_t N, int64_t M,
                   int64_t n) {
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

// Rows [m0, m0 + MT) of x against R weight rows already widened to fp32 in `wf` [R, K]: the
// same per-lane FMA sequence as `tile`, so the same bits. Used for M > 2, where widening each
// weight row once instead of once per pair of x rows keeps the loop on the FMA units.
template <int MT>
inline void tile_f32(const float* x, const float* wf, float* out, int64_t K, int64_t N,
                     int64_t m0, int64_t n) {
  __m256 acc[MT][R];
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < R; ++r) acc[i][r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm256_loadu_ps(wf + r * K + k);
    for (int i = 0; i < MT; ++i) {
      __m256 xv = _mm256_loadu_ps(x + (m0 + i) * K + k);
      for (int r = 0; r < R; ++r) acc[i][r] = _mm256_fmadd_ps(wv[r], xv, acc[i][r]);
    }
  }
  for (int i = 0; i < MT; ++i)
    for (int r = 0; r < R; ++r) {
      float s = hsum(acc[i][r]);
      for (int64_t t = k; t < K; ++t) s += x[(m0 + i) * K + t] * wf[r * K + t];
      out[(m0 + i) * N + n + r] = s;
    }
}

template <typename W>
inline void widen(const W* w, float* out, int64_t count) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) _mm256_storeu_ps(out + i, load8(w + i));
  for (; i < count; ++i) out[i] = to_float(w[i]);
}

template <typename W>
void matmul(const float* x, const W* w, float* out, int64_t M, int64_t K, int64_t N) {
  const int64_t blocks = N / R;
  // At least 16 blocks per task: a task streams >= 64 weight rows.
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    std::vector<float> wf(M > 2 ? R * K : 0);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b * R;
      if (M <= 2) {
        if (M == 2) tile<2>(x, w, out, K, N, 0, n); else tile<1>(x, w, out, K, N, 0, n);
        continue;
      }
      widen(w + n * K, wf.data(), R * K);
      int64_t m = 0;
      for (; m + 3 <= M; m += 3) tile_f32<3>(x, wf.data(), out, K, N, m, n);
      if (M - m == 2) tile_f32<2>(x, wf.data(), out, K, N, m, n);
      if (M - m == 1) tile_f32<1>(x, wf.data(), out, K, N, m, n);
    }
  });
  for (int64_t n = blocks * R; n < N; ++n) single(x, w, out, K, N, M, n);
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& scale,
                  const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "ssd cpu linear: CPU tensors only");
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "ssd cpu linear: w must be a contiguous [N, K]");
  const int64_t N = w.size(0), K = w.size(1);
  TORCH_CHECK(x.size(-1) == K, "ssd cpu linear: x's last dim ", x.size(-1), " != K ", K);
  at::Tensor x2 = x.reshape({-1, K}).to(at::kFloat).contiguous();
  const int64_t M = x2.size(0);
  at::Tensor out = at::empty({M, N}, x2.options());
  if (M == 0) {
  } else if (w.scalar_type() == at::kBFloat16) {
    TORCH_CHECK(!scale.has_value(), "ssd cpu linear: bf16 weights take no scale");
    matmul(x2.data_ptr<float>(), w.data_ptr<c10::BFloat16>(), out.data_ptr<float>(), M, K, N);
  } else {
    TORCH_CHECK(w.scalar_type() == at::kChar && scale.has_value(),
                "ssd cpu linear: weights must be bf16, or int8 with a scale per row");
    matmul(x2.data_ptr<float>(), w.data_ptr<int8_t>(), out.data_ptr<float>(), M, K, N);
    out.mul_(scale->to(at::kFloat));
  }
  if (bias.has_value()) out.add_(bias->to(at::kFloat));
  auto shape = x.sizes().vec();
  shape.back() = N;
  return out.to(x.scalar_type()).view(shape);
}

}  // namespace

TORCH_LIBRARY(ssd_cpu, m) {
  m.def("linear(Tensor x, Tensor w, Tensor? scale, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(ssd_cpu, CPU, m) { m.impl("linear", &linear); }
