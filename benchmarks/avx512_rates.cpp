// Issue rate of the AVX-512 instructions the CPU kernels could build a dot product from, with
// the data in registers (24 independent accumulators, so latency is hidden): ns per instruction.
// Decides between vdpbf16ps (32 bf16 pairs) and widening + vfmadd231ps (16 fp32 pairs).
//
//   g++ -O2 -mavx512f -mavx512bw -mavx512bf16 -mavx512vnni benchmarks/avx512_rates.cpp \
//       -o /tmp/avx512_rates && /tmp/avx512_rates
#include <immintrin.h>

#include <chrono>
#include <cstdio>

template <typename V, typename F>
void rate(const char* name, V init, F op) {
  V acc[24];
  for (auto& a : acc) a = init;
  const long n = 20'000'000;
  const auto start = std::chrono::steady_clock::now();
  for (long i = 0; i < n; ++i) {
#pragma GCC unroll 24
    for (auto& a : acc) a = op(a);
    asm volatile("" : "+v"(acc[0]));  // keep the loop from being folded
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  volatile float sink = 0;
  for (auto& a : acc) sink = sink + reinterpret_cast<float*>(&a)[0];
  std::printf("%-28s %.3f ns\n", name, s / (24.0 * n) * 1e9);
}

int main() {
  const __m512i xb = _mm512_set1_epi16(0x3f80), wb = _mm512_set1_epi16(0x3f00);
  const __m512 xf = _mm512_set1_ps(1.0f), wf = _mm512_set1_ps(0.5f);
  const __m512i x8 = _mm512_set1_epi8(3), w8 = _mm512_set1_epi8(5);
  rate("vdpbf16ps (32 pairs)", _mm512_setzero_ps(),
       [&](__m512 a) { return _mm512_dpbf16_ps(a, (__m512bh)xb, (__m512bh)wb); });
  rate("vfmadd231ps (16 pairs)", _mm512_setzero_ps(),
       [&](__m512 a) { return _mm512_fmadd_ps(xf, wf, a); });
  rate("vpunpcklwd (widen 16 bf16)", _mm512_setzero_si512(),
       [&](__m512i a) { return _mm512_unpacklo_epi16(a, wb); });
  rate("vpdpbusd (64 byte pairs)", _mm512_setzero_si512(),
       [&](__m512i a) { return _mm512_dpbusd_epi32(a, x8, w8); });
  rate("vcvtdq2ps", _mm512_setzero_si512(),
       [&](__m512i a) { return _mm512_castps_si512(_mm512_cvtepi32_ps(a)); });
  rate("vpdpwssd (32 int16 pairs)", _mm512_setzero_si512(),
       [&](__m512i a) { return _mm512_dpwssd_epi32(a, x8, w8); });
  rate("vpmovsxbw (widen 32 int8)", _mm512_setzero_si512(),
       [&](__m512i a) { return _mm512_cvtepi8_epi16(_mm512_castsi512_si256(a)); });
}
