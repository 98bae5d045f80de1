// The random words of `ssd.random.bits` in one native call: Threefry-2x32 (20 rounds) of the
// counters (0, j), j < n, under each key. In tensor ops the 20 rounds are about a hundred
// passes over a vocabulary-sized tensor per draw (12% of a sampled speculative round); here
// each word pair stays in registers, the loop over j vectorizes, and the words are the same
// bit for bit (uint32 arithmetic wraps where the tensor version masks).
//
// `exponential_race` is `ssd.sampling.sample` in one pass: the token maximizing p_j / E_j with
// E_j = -log(u_j), u_j the float64 uniform `ssd.random.uniform` makes of the same words. The
// tensor version writes two words, a uniform, a log and a ratio per token (about 4.5 ms a
// vocabulary row); here the words stay in registers and the log is taken only where the token
// could still win: -log(u) > 1 - u, so p_j / E_j < p_j / (1 - u_j), and a token whose bound
// falls below the best ratio so far is passed over. Nearly every token of a row is.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace {

constexpr uint32_t kParity = 0x1BD11BDA;
constexpr int kRotations[8] = {13, 15, 26, 6, 17, 29, 16, 24};

inline uint32_t rotl(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

// Threefry-2x32 of the counter (0, j) under the key schedule ks.
inline void threefry(const uint32_t ks[3], uint32_t j, uint32_t& y0, uint32_t& y1) {
  uint32_t x0 = ks[0], x1 = j + ks[1];
#pragma GCC unroll 20
  for (int i = 0; i < 20; ++i) {
    x0 += x1;
    x1 = rotl(x1, kRotations[i % 8]) ^ x0;
    if (i % 4 == 3) {
      const int s = (i + 1) / 4;
      x0 += ks[s % 3];
      x1 += ks[(s + 1) % 3] + static_cast<uint32_t>(s);
    }
  }
  y0 = x0;
  y1 = x1;
}

inline void schedule(const int64_t* key, uint32_t ks[3]) {
  ks[0] = static_cast<uint32_t>(key[0]);
  ks[1] = static_cast<uint32_t>(key[1]);
  ks[2] = ks[0] ^ ks[1] ^ kParity;
}

std::tuple<at::Tensor, at::Tensor> threefry_bits(const at::Tensor& key, int64_t n) {
  TORCH_CHECK(key.scalar_type() == at::kLong && key.dim() == 2 && key.size(1) == 2,
              "ssd threefry_bits: key must be an int64 [B, 2]");
  const at::Tensor k = key.contiguous();
  const int64_t B = k.size(0);
  at::Tensor w0 = at::empty({B, n}, k.options()), w1 = at::empty({B, n}, k.options());
  const int64_t* kp = k.data_ptr<int64_t>();
  int64_t* o0 = w0.data_ptr<int64_t>();
  int64_t* o1 = w1.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    uint32_t ks[3];
    schedule(kp + 2 * b, ks);
    at::parallel_for(0, n, 4096, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        uint32_t y0, y1;
        threefry(ks, static_cast<uint32_t>(j), y0, y1);
        o0[b * n + j] = y0;
        o1[b * n + j] = y1;
      }
    });
  }
  return {w0, w1};
}

// The best (ratio, token) of tokens [j0, j1) of one row; ties keep the lower token.
template <typename P>
std::pair<double, int64_t> race(const P* p, const uint32_t ks[3], int64_t j0, int64_t j1) {
  constexpr int64_t kBlock = 256;
  // A skipped token's ratio is below best * (1 - 2^-40) / (1 - 2^-50) (up to roundings of
  // 2^-52): under the best, even where std::log errs by an ulp.
  constexpr double kMargin = 1.0 - 0x1p-40;
  double best = -1.0;
  int64_t arg = j0;
  uint32_t y0[kBlock], y1[kBlock];
  double gap[kBlock];
  for (int64_t base = j0; base < j1; base += kBlock) {
    const int64_t n = std::min(kBlock, j1 - base);
    for (int64_t i = 0; i < n; ++i) threefry(ks, static_cast<uint32_t>(base + i), y0[i], y1[i]);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t bits = (static_cast<int64_t>(y0[i]) << 20) | (y1[i] >> 12);
      gap[i] = 1.0 - (static_cast<double>(bits) + 0.5) * 0x1p-52;  // 1 - u, exact
    }
    const double floor = best * kMargin;
    for (int64_t i = 0; i < n; ++i) {
      const double pj = static_cast<double>(p[base + i]);
      if (!(pj >= floor * gap[i])) continue;
      const double u = 1.0 - gap[i];
      const double ratio = pj / -std::log(u);
      if (ratio > best) {
        best = ratio;
        arg = base + i;
      }
    }
  }
  return {best, arg};
}

// One token per row of probs [R, V] (float32 or float64, unnormalized, non-negative) with keys
// int64 [R, 2]: argmax_j p_j / -log(u_j), the first on ties, as `ssd.sampling.sample` computes.
at::Tensor exponential_race(const at::Tensor& probs, const at::Tensor& key) {
  TORCH_CHECK(probs.dim() == 2 && (probs.scalar_type() == at::kFloat ||
                                   probs.scalar_type() == at::kDouble),
              "ssd exponential_race: probs must be a float32 or float64 [R, V]");
  TORCH_CHECK(key.scalar_type() == at::kLong && key.dim() == 2 && key.size(1) == 2 &&
                  key.size(0) == probs.size(0),
              "ssd exponential_race: key must be an int64 [R, 2], one per row of probs");
  const at::Tensor p = probs.contiguous(), k = key.contiguous();
  const int64_t R = p.size(0), V = p.size(1);
  at::Tensor out = at::empty({R}, k.options());
  int64_t* op = out.data_ptr<int64_t>();
  const int64_t* kp = k.data_ptr<int64_t>();
  constexpr int64_t kChunk = 16384;
  const int64_t chunks = (V + kChunk - 1) / kChunk;
  std::vector<std::pair<double, int64_t>> found(R * chunks);
  at::parallel_for(0, R * chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r = c / chunks, j0 = c % chunks * kChunk, j1 = std::min(V, j0 + kChunk);
      uint32_t ks[3];
      schedule(kp + 2 * r, ks);
      found[c] = p.scalar_type() == at::kFloat ? race(p.data_ptr<float>() + r * V, ks, j0, j1)
                                               : race(p.data_ptr<double>() + r * V, ks, j0, j1);
    }
  });
  for (int64_t r = 0; r < R; ++r) {
    std::pair<double, int64_t> best = found[r * chunks];
    for (int64_t c = 1; c < chunks; ++c)
      if (found[r * chunks + c].first > best.first) best = found[r * chunks + c];
    op[r] = best.second;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ssd_cpu, m) {
  m.def("threefry_bits(Tensor key, int n) -> (Tensor, Tensor)");
  m.def("exponential_race(Tensor probs, Tensor key) -> Tensor");
}

TORCH_LIBRARY_IMPL(ssd_cpu, CPU, m) {
  m.impl("threefry_bits", &threefry_bits);
  m.impl("exponential_race", &exponential_race);
}
