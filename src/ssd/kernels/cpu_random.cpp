// The random words of `ssd.random.bits` in one native call: Threefry-2x32 (20 rounds) of the
// counters (0, j), j < n, under each key. In tensor ops the 20 rounds are about a hundred
// passes over a vocabulary-sized tensor per draw (12% of a sampled speculative round); here
// each word pair stays in registers, the loop over j vectorizes, and the words are the same
// bit for bit (uint32 arithmetic wraps where the tensor version masks).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

namespace {

constexpr uint32_t kParity = 0x1BD11BDA;
constexpr int kRotations[8] = {13, 15, 26, 6, 17, 29, 16, 24};

inline uint32_t rotl(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

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
    const uint32_t k0 = static_cast<uint32_t>(kp[2 * b]), k1 = static_cast<uint32_t>(kp[2 * b + 1]);
    const uint32_t ks[3] = {k0, k1, k0 ^ k1 ^ kParity};
    at::parallel_for(0, n, 4096, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        uint32_t x0 = ks[0], x1 = static_cast<uint32_t>(j) + ks[1];
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
        o0[b * n + j] = x0;
        o1[b * n + j] = x1;
      }
    });
  }
  return {w0, w1};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ssd_cpu, m) {
  m.def("threefry_bits(Tensor key, int n) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ssd_cpu, CPU, m) { m.impl("threefry_bits", &threefry_bits); }
