// One decoder layer (Llama / Qwen2 without q/k norms) in one call, for bf16 activations on CPU.
//
// Between its seven projections a layer runs about forty small tensor ops (norms, RoPE, the K/V
// write, casts, residuals); dispatched one by one from Python they cost as much as streaming a
// 0.5B draft's layer weights. Here they are plain loops around the same linear and attention
// kernels, rounding to bf16 wherever the op-by-op path stores a bf16 tensor, so the results are
// those of `ssd.models.decoder` up to the order of fp32 sums. Every row is computed alone: the
// layer is batch-invariant like its kernels.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "kernels.h"

namespace {

inline float bf(float v) { return static_cast<float>(c10::BFloat16(v)); }

constexpr int64_t kRows = 16;  // rows per task of the elementwise loops: decoding runs them inline

// Per row: bf16(weight * bf16(x / rms(x))), as `rms_norm` with fp32 statistics.
void rms_norm(const float* x, const float* weight, int64_t T, int64_t n, float eps, float* out) {
  at::parallel_for(0, T, kRows, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* row = x + t * n;
      float ss = 0.f;
      for (int64_t j = 0; j < n; ++j) ss += row[j] * row[j];
      const float r = 1.f / std::sqrt(ss / static_cast<float>(n) + eps);
      for (int64_t j = 0; j < n; ++j) out[t * n + j] = bf(weight[j] * bf(row[j] * r));
    }
  });
}

// `linear` then the bf16 rounding of its output.
void project(const std::vector<float>& x, int64_t T, const at::Tensor& w,
             const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& bias,
             std::vector<float>& out) {
  out.resize(T * w.size(0));
  ssd_kernels::linear_f32(x.data(), T, w, scale, bias, out.data());
  for (float& v : out) v = bf(v);
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

// w: attn_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up, w_down. extra (each may be None): bq, bk,
// bv, bo, then the int8 scales of wq, wk, wv, wo, w_gate, w_up, w_down. Pages are the layer's
// [P + 1, page_size, H_kv, D]; cos/sin [B, Q, 1, D] bf16; mask [B, 1, Q, S].
at::Tensor decoder_layer(const at::Tensor& x, at::TensorList w,
                         const c10::List<c10::optional<at::Tensor>>& extra, at::Tensor k_pages,
                         at::Tensor v_pages, const at::Tensor& cos, const at::Tensor& sin,
                         const at::Tensor& slot_mapping, const at::Tensor& block_tables,
                         const at::Tensor& mask, double eps, int64_t n_heads,
                         int64_t n_kv_heads) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.dim() == 3,
              "ssd decoder layer: bf16 x [B, Q, hidden]");
  TORCH_CHECK(w.size() == 9 && extra.size() == 11, "ssd decoder layer: 9 weights, 11 extras");
  TORCH_CHECK(k_pages.is_contiguous() && v_pages.is_contiguous() &&
                  k_pages.scalar_type() == at::kBFloat16,
              "ssd decoder layer: contiguous bf16 pages");
  const int64_t B = x.size(0), Q = x.size(1), hid = x.size(2), T = B * Q;
  const int64_t D = k_pages.size(3), ps = k_pages.size(1), sink = k_pages.size(0) - 1;
  const float feps = static_cast<float>(eps);
  auto opt = [&](int i) { return extra.get(i); };
  const std::vector<float> x0 = to_f32(x);
  const std::vector<float> attn_norm = to_f32(w[0]), mlp_norm = to_f32(w[5]);
  const std::vector<float> cf = to_f32(cos), sf = to_f32(sin);

  std::vector<float> h(T * hid), q, k, v;
  rms_norm(x0.data(), attn_norm.data(), T, hid, feps, h.data());
  project(h, T, w[1], opt(4), opt(0), q);
  project(h, T, w[2], opt(5), opt(1), k);
  project(h, T, w[3], opt(6), opt(2), v);
  rope(q.data(), cf.data(), sf.data(), T, n_heads, D);
  rope(k.data(), cf.data(), sf.data(), T, n_kv_heads, D);

  // K/V of this step into their slots (padding, slot -1, into the sink page), then attention.
  const at::Tensor slots = slot_mapping.contiguous();
  const int64_t* sp = slots.data_ptr<int64_t>();
  c10::BFloat16* kp = k_pages.data_ptr<c10::BFloat16>();
  c10::BFloat16* vp = v_pages.data_ptr<c10::BFloat16>();
  const int64_t kv_row = n_kv_heads * D;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = sp[t] >= 0 ? sp[t] : sink * ps;
    for (int64_t j = 0; j < kv_row; ++j) {
      kp[slot * kv_row + j] = c10::BFloat16(k[t * kv_row + j]);
      vp[slot * kv_row + j] = c10::BFloat16(v[t * kv_row + j]);
    }
  }
  const at::Tensor qt = from_f32(q, {B, Q, n_heads, D});
  const at::Tensor att = ssd_kernels::paged_attention(qt, k_pages, v_pages, block_tables, mask,
                                                      1.0 / std::sqrt(static_cast<double>(D)));
  const std::vector<float> a = to_f32(att);

  std::vector<float> o, x1(T * hid);
  project(a, T, w[4], opt(7), opt(3), o);
  for (int64_t i = 0; i < T * hid; ++i) x1[i] = bf(x0[i] + o[i]);

  std::vector<float> g, u, d;
  rms_norm(x1.data(), mlp_norm.data(), T, hid, feps, h.data());
  project(h, T, w[6], opt(8), c10::nullopt, g);
  project(h, T, w[7], opt(9), c10::nullopt, u);
  const int64_t inter = w[6].size(0);
  at::parallel_for(0, T, kRows, [&](int64_t t0, int64_t t1) {
    for (int64_t i = t0 * inter; i < t1 * inter; ++i)
      g[i] = bf(bf(g[i] / (1.f + std::exp(-g[i]))) * u[i]);  // silu(gate) * up
  });
  project(g, T, w[8], opt(10), c10::nullopt, d);
  for (int64_t i = 0; i < T * hid; ++i) x1[i] = bf(x1[i] + d[i]);
  return from_f32(x1, {B, Q, hid});
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ssd_cpu, m) {
  m.def(
      "decoder_layer(Tensor x, Tensor[] w, Tensor?[] extra, Tensor(a!) k_pages, "
      "Tensor(b!) v_pages, Tensor cos, Tensor sin, Tensor slot_mapping, Tensor block_tables, "
      "Tensor mask, float eps, int n_heads, int n_kv_heads) -> Tensor");
}

TORCH_LIBRARY_IMPL(ssd_cpu, CPU, m) { m.impl("decoder_layer", &decoder_layer); }
