// The decoder layers (Llama / Qwen2 without q/k norms) in one call, for bf16 activations on CPU.
//
// Between its seven projections a layer runs about forty small tensor ops (norms, RoPE, the K/V
// write, casts, residuals); dispatched one by one from Python they cost as much as streaming a
// 0.5B draft's layer weights. Here they are plain loops around the same linear and attention
// kernels, every layer of a forward in one call, rounding to bf16 wherever the op-by-op path
// stores a bf16 tensor, so the results are those of `ssd.models.decoder` up to the order of fp32
// sums. Every row is computed alone: the layers are batch-invariant like their kernels.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace {

inline float bf(float v) { return static_cast<float>(c10::BFloat16(v)); }

// The elementwise loops eight lanes at a time (`f` on __m256), the tail one by one (`g` on
// float), each element alone, so a row's values never depend on the others: at a draft's four
// rows the scalar loops (bf16 rounding, silu's exp) took 7% of a tree step.
template <typename F, typename G>
inline void lanes(int64_t n, const F& f, const G& g) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) f(i);
  for (; i < n; ++i) g(i);
}

// v[i] = bf(v[i] + add[i])
void add_round(float* v, const float* add, int64_t n) {
  lanes(
      n,
      [&](int64_t i) {
        const __m256 sum = _mm256_add_ps(_mm256_loadu_ps(v + i), _mm256_loadu_ps(add + i));
        _mm256_storeu_ps(v + i, ssd_simd::round_bf16(sum));
      },
      [&](int64_t i) { v[i] = bf(v[i] + add[i]); });
}

constexpr int64_t kRows = 16;  // rows per task of the elementwise loops: decoding runs them inline

// Per row: bf16(weight * bf16(x / rms(x))), as `rms_norm` with fp32 statistics.
void rms_norm(const float* x, const float* weight, int64_t T, int64_t n, float eps, float* out) {
  at::parallel_for(0, T, kRows, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* row = x + t * n;
      float ss = 0.f;
      for (int64_t j = 0; j < n; ++j) ss += row[j] * row[j];
      const float r = 1.f / std::sqrt(ss / static_cast<float>(n) + eps);
      const __m256 r8 = _mm256_set1_ps(r);
      float* o = out + t * n;
      lanes(
          n,
          [&](int64_t j) {
            const __m256 normed =
                ssd_simd::round_bf16(_mm256_mul_ps(_mm256_loadu_ps(row + j), r8));
            const __m256 scaled = _mm256_mul_ps(_mm256_loadu_ps(weight + j), normed);
            _mm256_storeu_ps(o + j, ssd_simd::round_bf16(scaled));
          },
          [&](int64_t j) { o[j] = bf(weight[j] * bf(row[j] * r)); });
    }
  });
}

// `linear` then the bf16 rounding of its output, for projections of one x in one parallel region.
struct Out {
  const at::Tensor& w;
  c10::optional<at::Tensor> scale, bias;
  std::vector<float>& out;
};

void project(const std::vector<float>& x, int64_t T, const std::vector<Out>& outs) {
  std::vector<ssd_kernels::Projection> parts;
  for (const Out& o : outs) {
    o.out.resize(T * o.w.size(0));
    parts.push_back({o.w, o.scale, o.bias, o.out.data()});
  }
  ssd_kernels::linear_f32(x.data(), T, parts, /*x_bf16=*/true);
  for (const Out& o : outs) {
    float* v = o.out.data();
    lanes(
        static_cast<int64_t>(o.out.size()),
        [&](int64_t i) { _mm256_storeu_ps(v + i, ssd_simd::round_bf16(_mm256_loadu_ps(v + i))); },
        [&](int64_t i) { v[i] = bf(v[i]); });
  }
}

// Rotate-half RoPE on heads [T, H, D] with cos/sin [T, D], each product and the sum in bf16.
void rope(float* x, const float* cos, const float* sin, int64_t T, int64_t H, int64_t D) {
  const int64_t half = D / 2;
  std::vector<float> in(D);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      float* v = x + (t * H + h) * D;
      std::copy(v, v + D, in.begin());
      for (int64_t d = 0; d < D; ++d) {
        const float rot = d < half ? -in[d + half] : in[d - half];
        v[d] = bf(bf(in[d] * cos[t * D + d]) + bf(rot * sin[t * D + d]));
      }
    }
}

std::vector<float> to_f32(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

at::Tensor from_f32(const std::vector<float>& v, at::IntArrayRef shape) {
  return at::from_blob(const_cast<float*>(v.data()), shape, at::kFloat).to(at::kBFloat16);
}

// What every layer of one forward shares: positions' RoPE tables, KV slots, attention metadata.
struct Step {
  int64_t B, Q, T, hid, n_heads, n_kv_heads;
  float eps;
  std::vector<float> cos, sin;  // [T, D]
  const int64_t* slots;         // [T]; -1: padding, written into the sink page
  const at::Tensor& block_tables;
  const at::Tensor& mask;
};

// One layer on x [T, hid] (bf16 values held in fp32), in place. w: attn_norm, wq, wk, wv, wo,
// mlp_norm, w_gate, w_up, w_down (the norms as fp32); extra (each may be None): bq, bk, bv, bo,
// then the int8 scales of wq, wk, wv, wo, w_gate, w_up, w_down. Pages are the layer's
// [P + 1, page_size, H_kv, D].
void layer(std::vector<float>& x, const float* attn_norm, const float* mlp_norm,
           const std::vector<at::Tensor>& w, const std::vector<c10::optional<at::Tensor>>& extra,
           const at::Tensor& k_pages, const at::Tensor& v_pages, const Step& s) {
  const int64_t T = s.T, hid = s.hid;
  const int64_t D = k_pages.size(3), ps = k_pages.size(1), sink = k_pages.size(0) - 1;
  const auto opt = [&](int i) { return extra[i]; };

  std::vector<float> h(T * hid), q, k, v;
  rms_norm(x.data(), attn_norm, T, hid, s.eps, h.data());
  project(h, T, {{w[1], opt(4), opt(0), q}, {w[2], opt(5), opt(1), k}, {w[3], opt(6), opt(2), v}});
  rope(q.data(), s.cos.data(), s.sin.data(), T, s.n_heads, D);
  rope(k.data(), s.cos.data(), s.sin.data(), T, s.n_kv_heads, D);

  // K/V of this step into their slots (padding, slot -1, into the sink page), then attention.
  c10::BFloat16* kp = k_pages.data_ptr<c10::BFloat16>();
  c10::BFloat16* vp = v_pages.data_ptr<c10::BFloat16>();
  const int64_t kv_row = s.n_kv_heads * D;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = s.slots[t] >= 0 ? s.slots[t] : sink * ps;
    for (int64_t j = 0; j < kv_row; ++j) {
      kp[slot * kv_row + j] = c10::BFloat16(k[t * kv_row + j]);
      vp[slot * kv_row + j] = c10::BFloat16(v[t * kv_row + j]);
    }
  }
  const at::Tensor qt = from_f32(q, {s.B, s.Q, s.n_heads, D});
  const at::Tensor att = ssd_kernels::paged_attention(qt, k_pages, v_pages, s.block_tables, s.mask,
                                                      1.0 / std::sqrt(static_cast<double>(D)));
  const std::vector<float> a = to_f32(att);

  std::vector<float> o;
  project(a, T, {{w[4], opt(7), opt(3), o}});
  add_round(x.data(), o.data(), T * hid);

  std::vector<float> g, u, d;
  rms_norm(x.data(), mlp_norm, T, hid, s.eps, h.data());
  project(h, T, {{w[6], opt(8), c10::nullopt, g}, {w[7], opt(9), c10::nullopt, u}});
  const int64_t inter = w[6].size(0);
  at::parallel_for(0, T, kRows, [&](int64_t t0, int64_t t1) {
    // silu(gate) * up
    lanes(
        (t1 - t0) * inter,
        [&](int64_t j) {
          const int64_t i = t0 * inter + j;
          const __m256 gv = _mm256_loadu_ps(g.data() + i);
          const __m256 e = ssd_simd::exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
          const __m256 silu =
              ssd_simd::round_bf16(_mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.f), e)));
          const __m256 gated = _mm256_mul_ps(silu, _mm256_loadu_ps(u.data() + i));
          _mm256_storeu_ps(g.data() + i, ssd_simd::round_bf16(gated));
        },
        [&](int64_t j) {
          const int64_t i = t0 * inter + j;
          g[i] = bf(bf(g[i] / (1.f + std::exp(-g[i]))) * u[i]);
        });
  });
  project(g, T, {{w[8], opt(10), c10::nullopt, d}});
  add_round(x.data(), d.data(), T * hid);
}

// Every decoder layer of a forward in one call: the weights of `layer` stacked [L, ...], the
// pages [L, P + 1, page_size, H_kv, D]; cos/sin [B, Q, 1, D] bf16; mask [B, 1, Q, S]. Between
// layers x stays in fp32 (its values bf16's), so nothing is converted or dispatched per layer.
at::Tensor decoder_layers(const at::Tensor& x, at::TensorList w,
                          const c10::List<c10::optional<at::Tensor>>& extra, at::Tensor k_pages,
                          at::Tensor v_pages, const at::Tensor& cos, const at::Tensor& sin,
                          const at::Tensor& slot_mapping, const at::Tensor& block_tables,
                          const at::Tensor& mask, double eps, int64_t n_heads,
                          int64_t n_kv_heads) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.dim() == 3,
              "ssd decoder layers: bf16 x [B, Q, hidden]");
  TORCH_CHECK(w.size() == 9 && extra.size() == 11, "ssd decoder layers: 9 weights, 11 extras");
  TORCH_CHECK(k_pages.is_contiguous() && v_pages.is_contiguous() &&
                  k_pages.scalar_type() == at::kBFloat16,
              "ssd decoder layers: contiguous bf16 pages");
  const int64_t L = w[1].size(0), hid = x.size(2);
  TORCH_CHECK(k_pages.size(0) == L, "ssd decoder layers: ", L, " layers, ", k_pages.size(0),
              " layers of pages");
  const at::Tensor slots = slot_mapping.contiguous();
  const Step s{x.size(0), x.size(1), x.size(0) * x.size(1), hid, n_heads, n_kv_heads,
               static_cast<float>(eps), to_f32(cos), to_f32(sin), slots.data_ptr<int64_t>(),
               block_tables, mask};
  const std::vector<float> attn_norm = to_f32(w[0]), mlp_norm = to_f32(w[5]);
  std::vector<float> h = to_f32(x);
  const std::vector<c10::optional<at::Tensor>> extras(extra.begin(), extra.end());
  std::vector<at::Tensor> wl(9);
  std::vector<c10::optional<at::Tensor>> el(11);
  for (int64_t l = 0; l < L; ++l) {
    for (size_t i = 0; i < 9; ++i) wl[i] = w[i].select(0, l);
    for (size_t i = 0; i < 11; ++i)
      el[i] = extras[i] ? c10::optional<at::Tensor>(extras[i]->select(0, l)) : c10::nullopt;
    layer(h, attn_norm.data() + l * hid, mlp_norm.data() + l * hid, wl, el, k_pages.select(0, l),
          v_pages.select(0, l), s);
  }
  return from_f32(h, {x.size(0), x.size(1), hid});
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ssd_cpu, m) {
  m.def(
      "decoder_layers(Tensor x, Tensor[] w, Tensor?[] extra, Tensor(a!) k_pages, "
      "Tensor(b!) v_pages, Tensor cos, Tensor sin, Tensor slot_mapping, Tensor block_tables, "
      "Tensor mask, float eps, int n_heads, int n_kv_heads) -> Tensor");
}

TORCH_LIBRARY_IMPL(ssd_cpu, CPU, m) { m.impl("decoder_layers", &decoder_layers); }
