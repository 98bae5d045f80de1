// The CPU kernels one source calls in another (the fused decoder layer calls the other two).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

// The AVX-512 paths (BF16 dot products, VNNI) where the build targets them; AVX2 + FMA otherwise.
#if defined(__AVX512BF16__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define SSD_AVX512 1
#else
#define SSD_AVX512 0
#endif

// AMX int8 tile products (Xeons since Sapphire Rapids) where the build targets them too.
#if SSD_AVX512 && defined(__AMX_TILE__) && defined(__AMX_INT8__)
#define SSD_AMX 1
#else
#define SSD_AMX 0
#endif

// vdpbf16ps for bf16 weights, where the build asks for it (CPUs that issue it at the FMA rate).
#if SSD_AVX512 && defined(SSD_CPU_BF16_DOT)
#define SSD_BF16_DOT 1
#else
#define SSD_BF16_DOT 0
#endif

// The AVX-512 tiles' prefetches 4 KB ahead into L2 (the int8 tiles' instead of 1 KB ahead into
// L1), where the build asks for it (AMD's cores).
#if SSD_AVX512 && defined(SSD_CPU_L2_PREFETCH)
#define SSD_L2_PREFETCH 1
#else
#define SSD_L2_PREFETCH 0
#endif

namespace ssd_kernels {

// out [M, N] = x [M, K] w^T (* scale per output row for int8 w) (+ bias), all in fp32.
struct Projection {
  const at::Tensor& w;
  c10::optional<at::Tensor> scale, bias;
  float* out;
};

// Projections of one x (same K and dtype) in one parallel region: no thread waits for the
// others between them.
// `x_bf16`: x holds bf16 values (the layers' activations), which a build with SSD_BF16_DOT then
// multiplies as bf16; other x (fp32 activations against bf16 weights) go through the fp32 FMAs.
void linear_f32(const float* x, int64_t M, const std::vector<Projection>& parts,
                bool x_bf16 = false);

// q [B, Q, H, D] against one layer's pages through the block tables, under `mask`.
at::Tensor paged_attention(const at::Tensor& q, const at::Tensor& k_pages,
                           const at::Tensor& v_pages, const at::Tensor& block_tables,
                           const at::Tensor& mask, double scale);

}  // namespace ssd_kernels
