// What one AVX2 core can issue, with the data in registers or L1: the clock (a chain of
// dependent adds, one per cycle), 256-bit FMAs alone, the loads of a bf16 verification tile
// alone, and both together. The tile is the one `cpu_linear.cpp` runs against five x rows: per
// 64 weight bytes (two rows of 16 bf16), 4 weight loads masked to fp32, 10 x loads and 20 FMAs.
// Its time here is the floor for that arithmetic at five rows, whatever memory does.
//
//   g++ -O2 -mavx2 -mfma benchmarks/avx2_rates.cpp -o /tmp/avx2_rates && /tmp/avx2_rates
#include <chrono>
#include <cstdio>

alignas(64) static float buf[128];
static const long n = 50'000'000;

// One iteration of the tile: weights masked from memory into ymm12/13, x into ymm14, 20 FMAs
// into ten accumulators. `LOADS` off replaces the memory operands with registers.
#define W(off) "vandps " #off "(%1),%%ymm15,%%ymm12\n vandps " #off "+32(%1),%%ymm15,%%ymm13\n"
#define WR "vandps %%ymm11,%%ymm15,%%ymm12\n vandps %%ymm11,%%ymm15,%%ymm13\n"
#define X(off, a, b) "vmovups " #off "(%1),%%ymm14\n" F(a, b)
#define XR(a, b) F(a, b)
#define F(a, b) "vfmadd231ps %%ymm14,%%ymm12,%%ymm" #a "\n vfmadd231ps %%ymm14,%%ymm13,%%ymm" #b "\n"
#define XL(off, a, b) "vmovups " #off "(%1),%%ymm" #a "\n"

template <typename Body>
double ns_per_iteration(Body body) {
  const auto start = std::chrono::steady_clock::now();
  body();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / n * 1e9;
}

int main() {
  const double add = ns_per_iteration([] {
    asm volatile("mov %0,%%rcx\n1:\n add $1,%%rax\n add $1,%%rax\n add $1,%%rax\n add $1,%%rax\n"
                 "dec %%rcx\n jnz 1b\n" ::"r"(n) : "rcx", "rax");
  }) / 4;
  std::printf("clock: %.2f GHz (dependent adds)\n", 1 / add);
  const double both = ns_per_iteration([] {
    asm volatile("mov %0,%%rcx\n1:\n" W(0) X(64, 0, 1) X(96, 2, 3) X(128, 4, 5) X(160, 6, 7)
                 X(192, 8, 9) W(224) X(288, 0, 1) X(320, 2, 3) X(352, 4, 5) X(384, 6, 7)
                 X(416, 8, 9) "dec %%rcx\n jnz 1b\n" ::"r"(n), "r"(buf) : "rcx", "memory");
  });
  const double fmas = ns_per_iteration([] {
    asm volatile("mov %0,%%rcx\n1:\n" WR XR(0, 1) XR(2, 3) XR(4, 5) XR(6, 7) XR(8, 9)
                 WR XR(0, 1) XR(2, 3) XR(4, 5) XR(6, 7) XR(8, 9)
                 "dec %%rcx\n jnz 1b\n" ::"r"(n), "r"(buf) : "rcx", "memory");
  });
  const double loads = ns_per_iteration([] {
    asm volatile("mov %0,%%rcx\n1:\n" W(0) XL(64, 0, 0) XL(96, 1, 0) XL(128, 2, 0) XL(160, 3, 0)
                 XL(192, 4, 0) W(224) XL(288, 5, 0) XL(320, 6, 0) XL(352, 7, 0) XL(384, 8, 0)
                 XL(416, 9, 0) "dec %%rcx\n jnz 1b\n" ::"r"(n), "r"(buf) : "rcx", "memory");
  });
  const auto line = [&](const char* what, double ns) {
    std::printf("%-34s %.2f ns = %4.1f cycles per 64 weight bytes (%.1f GB/s)\n", what, ns,
                ns / add, 64 / ns);
  };
  line("20 FMAs (+ 4 masks), registers only", fmas);
  line("14 loads (4 masked), no FMAs", loads);
  line("the tile: 14 loads and 20 FMAs", both);
}
