// AVX-512 implementation of small_gemm (see small_gemm.h), chosen at run time: the library
// itself is built for baseline x86-64, and only these functions use AVX-512.
#include "small_gemm.h"

#include <cstdlib>
#include <string>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SHUFFLENET_OPS_HAVE_AVX512_KERNEL 1
#endif

#include "relu.h"

namespace shufflenet_ops::cpu {

#ifdef SHUFFLENET_OPS_HAVE_AVX512_KERNEL
namespace {

// MR rows of A x NV vectors of 16 columns of B: MR * NV accumulators (at most 24 of the 32
// zmm registers), each k step = NV vector loads of B, MR broadcasts of A, MR * NV FMAs.
template <int MR, int NV>
__attribute__((target("avx512f,prfchw"))) inline void block(int64_t k, const float* a, int64_t a_row, int64_t a_col,
                                                     const int64_t* a_offsets, const float* b, int64_t ldb, float* c, int64_t ldc,
                                                     __mmask16 last_mask, const float* row_bias,
                                                     const float* col_bias, const float* residual,
                                                     int64_t residual_ld, bool relu, bool prefetch_next_panel,
                                                     bool prefetch_c, bool stream_c, int64_t rows_ahead) {
  if (rows_ahead > 0) {
    // Rows of A and C that are pixel rows in place (channels_last): the rows rows_ahead on,
    // A's for reading and C's for writing. Each pixel's slice of a group is a short piece of
    // a long row, a stride the hardware prefetcher follows poorly, so the block fetches them.
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) _m_prefetchw(c + (r + rows_ahead) * ldc + 16 * v);
      if (a_col == 1 && !a_offsets) {
        const float* next = a + (r + rows_ahead) * a_row;
        for (int64_t u = 0; u < k; u += 16) _mm_prefetch(reinterpret_cast<const char*>(next + u), _MM_HINT_T0);
      }
    }
  }
  if (prefetch_c) {
    // This block's rows of C in the next panel, for writing: a store to a line not in cache
    // waits for it to be read first, and C's rows are as many plane-apart streams as B's
    // (a unit's expand GConv writes 4x the channels it reads).
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) _m_prefetchw(c + r * ldc + 64 + 16 * v);
  }
  // Fully unrolled (the pragmas) so the accumulators live in registers, not on the stack.
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t kk = 0; kk < k; ++kk) {
    const float* brow = b + kk * ldb;
    if (prefetch_next_panel) {
      // B's rows are K separate streams (NCHW: one per input channel, a plane apart), too many
      // for the hardware prefetcher: fetch the next 64-column panel's slice of this row while
      // this one computes.
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) _mm_prefetch(reinterpret_cast<const char*>(brow + 64 + 16 * v), _MM_HINT_T0);
    }
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      bv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(last_mask, brow + 16 * v) : _mm512_loadu_ps(brow + 16 * v);
    }
    const float* acol = a + (a_offsets ? a_offsets[kk] : kk * a_col);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(acol[r * a_row]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  if (col_bias) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __m512 bias = _mm512_maskz_loadu_ps(v == NV - 1 ? last_mask : __mmask16(0xFFFF), col_bias + 16 * v);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) acc[r][v] = _mm512_add_ps(acc[r][v], bias);
    }
  }
  if (row_bias) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 bias = _mm512_set1_ps(row_bias[r]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_add_ps(acc[r][v], bias);
    }
  }
  if (residual) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const float* res = residual + r * residual_ld + 16 * v;
        acc[r][v] = _mm512_add_ps(acc[r][v], v == NV - 1 ? _mm512_maskz_loadu_ps(last_mask, res) : _mm512_loadu_ps(res));
      }
  }
  if (relu) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = relu_ps(acc[r][v]);  // NaN stays NaN (relu.h)
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* out = c + r * ldc + 16 * v;
      if (v == NV - 1 && last_mask != __mmask16(0xFFFF)) {
        _mm512_mask_storeu_ps(out, last_mask, acc[r][v]);
      } else if (stream_c) {  // a whole vector of an aligned row: one whole line
        _mm512_stream_ps(out, acc[r][v]);
      } else {
        _mm512_storeu_ps(out, acc[r][v]);
      }
    }
  }
}

template <int NV>
__attribute__((target("avx512f,prfchw"))) void column_panel(int64_t m, int64_t k, const float* a, int64_t a_row,
                                                     int64_t a_col, const int64_t* a_offsets, const float* b, int64_t ldb, float* c,
                                                     int64_t ldc, __mmask16 last_mask, const float* row_bias,
                                                     const float* col_bias, const float* residual,
                                                     int64_t residual_ld, bool relu, bool prefetch_next_panel,
                                                     bool stream_c, bool prefetch_rows) {
  constexpr int kRows = NV >= 4 ? 6 : (NV == 3 ? 7 : 8);  // keep MR * NV <= 24 accumulators
  int64_t i = 0;
  // The first row block of the panel prefetches for the next panel; the others find B in L1.
  for (; i + kRows <= m; i += kRows) {
    block<kRows, NV>(k, a + i * a_row, a_row, a_col, a_offsets, b, ldb, c + i * ldc, ldc, last_mask,
                     row_bias ? row_bias + i : nullptr, col_bias, residual ? residual + i * residual_ld : nullptr,
                     residual_ld, relu, prefetch_next_panel && i == 0, prefetch_next_panel && !stream_c, stream_c,
                     prefetch_rows ? kRows : 0);
  }
  switch (m - i) {  // remainder rows
#define SHUFFLENET_OPS_REMAINDER(R)                                                                  \
  case R:                                                                                            \
    block<R, NV>(k, a + i * a_row, a_row, a_col, a_offsets, b, ldb, c + i * ldc, ldc, last_mask,               \
                 row_bias ? row_bias + i : nullptr, col_bias,                                        \
                 residual ? residual + i * residual_ld : nullptr, residual_ld, relu,                 \
                 prefetch_next_panel && i == 0, prefetch_next_panel && !stream_c, stream_c, 0);     \
    break;
    SHUFFLENET_OPS_REMAINDER(1)
    SHUFFLENET_OPS_REMAINDER(2)
    SHUFFLENET_OPS_REMAINDER(3)
    SHUFFLENET_OPS_REMAINDER(4)
    SHUFFLENET_OPS_REMAINDER(5)
    SHUFFLENET_OPS_REMAINDER(6)
    SHUFFLENET_OPS_REMAINDER(7)
#undef SHUFFLENET_OPS_REMAINDER
    default:
      break;
  }
}

// One reduction step of dot_block: 16 elements (fewer where masked) of MR rows of A and NR
// rows of B, MR + NR vector loads feeding MR * NR FMAs.
template <int MR, int NR>
__attribute__((target("avx512f"))) inline void dot_step(int64_t p, __mmask16 mask, const float* a, int64_t lda,
                                                        const float* b, int64_t ldb, __m512 (&acc)[MR][NR]) {
  __m512 av[MR], bv[NR];
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) av[r] = _mm512_maskz_loadu_ps(mask, a + r * lda + p);
#pragma GCC unroll 4
  for (int j = 0; j < NR; ++j) bv[j] = _mm512_maskz_loadu_ps(mask, b + j * ldb + p);
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[r][j] = _mm512_fmadd_ps(av[r], bv[j], acc[r][j]);
}

// MR rows of A against NR rows of B over the whole reduction: vector accumulators, each
// summed across its lanes once at the end (a fixed order, so fixed bits).
template <int MR, int NR>
__attribute__((target("avx512f"))) inline void dot_block(int64_t k, const float* a, int64_t lda, const float* b,
                                                         int64_t ldb, float* c, int64_t ldc) {
  __m512 acc[MR][NR];
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[r][j] = _mm512_setzero_ps();
  int64_t p = 0;
  for (; p + 16 <= k; p += 16) dot_step<MR, NR>(p, __mmask16(0xFFFF), a, lda, b, ldb, acc);
  if (p < k) dot_step<MR, NR>(p, static_cast<__mmask16>((1u << (k - p)) - 1u), a, lda, b, ldb, acc);
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) c[r * ldc + j] += _mm512_reduce_add_ps(acc[r][j]);
}

template <int MR>
__attribute__((target("avx512f"))) void dot_row_panel(int64_t n, int64_t k, const float* a, int64_t lda,
                                                      const float* b, int64_t ldb, float* c, int64_t ldc) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) dot_block<MR, 4>(k, a, lda, b + j * ldb, ldb, c + j, ldc);
  switch (n - j) {
    case 3: dot_block<MR, 3>(k, a, lda, b + j * ldb, ldb, c + j, ldc); break;
    case 2: dot_block<MR, 2>(k, a, lda, b + j * ldb, ldb, c + j, ldc); break;
    case 1: dot_block<MR, 1>(k, a, lda, b + j * ldb, ldb, c + j, ldc); break;
    default: break;
  }
}

}  // namespace

bool small_gemm_available() { return __builtin_cpu_supports("avx512f"); }

bool small_gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_row, int64_t a_col, const float* b,
                int64_t ldb, float* c, int64_t ldc, const SmallGemmEpilogue& epilogue, bool stream_rows,
                bool prefetch_rows, const int64_t* a_offsets) {
  static const bool available = small_gemm_available();
  if (!available) return false;
  // In-place channel-major output whose rows are whole 64-byte lines: stream it to memory
  // (non-temporal stores) instead of reading each line in before overwriting it. The output
  // of a layer is as large as its input or 4x it, so those reads would cost as much as the
  // writes. Rows that do not start on a line or are not a whole number of lines apart (most
  // 14x14 and 7x7 planes: 196 and 49 pixels) are stored normally, prefetched for writing
  // by block() where another panel follows.
  const bool stream = stream_rows && (reinterpret_cast<uintptr_t>(c) & 63) == 0 && ldc % 16 == 0;
  // Panels of 64 columns (4 vectors) keep a K x 64 slice of B in L1/L2 while every row of A
  // streams past it; the last panel takes 1-4 vectors, its last one masked.
  for (int64_t j = 0; j < n; j += 64) {
    const int64_t width = n - j < 64 ? n - j : 64;
    const bool prefetch = stream_rows && j + 64 < n;  // another panel follows
    const int vectors = static_cast<int>((width + 15) / 16);
    const int tail = static_cast<int>(width - 16 * (vectors - 1));
    const __mmask16 last_mask = static_cast<__mmask16>((1u << tail) - 1u);
    // One instantiation per panel width in vectors (the accumulator block is a template).
    using Panel = decltype(&column_panel<1>);
    static constexpr Panel kPanels[] = {column_panel<1>, column_panel<2>, column_panel<3>, column_panel<4>};
    kPanels[vectors - 1](m, k, a, a_row, a_col, a_offsets, b + j, ldb, c + j, ldc, last_mask, epilogue.row_bias,
                         epilogue.col_bias ? epilogue.col_bias + j : nullptr,
                         epilogue.residual ? epilogue.residual + j : nullptr, epilogue.residual_ld, epilogue.relu,
                         prefetch, stream, prefetch_rows);
  }
  if (stream) _mm_sfence();  // streamed stores are weakly ordered: drain before other threads read C
  return true;
}

bool small_gemm_nt_accumulate(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                              int64_t ldb, float* c, int64_t ldc) {
  static const bool available = small_gemm_available();
  if (!available) return false;
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) dot_row_panel<4>(n, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc);
  switch (m - i) {
    case 3: dot_row_panel<3>(n, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc); break;
    case 2: dot_row_panel<2>(n, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc); break;
    case 1: dot_row_panel<1>(n, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc); break;
    default: break;
  }
  return true;
}

#else

bool small_gemm_available() { return false; }

bool small_gemm(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t,
                const SmallGemmEpilogue&, bool, bool, const int64_t*) {
  return false;
}

bool small_gemm_nt_accumulate(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*,
                              int64_t) {
  return false;
}

#endif

bool use_small_gemm() {
  static const bool use = [] {
    const char* choice = std::getenv("SHUFFLENET_OPS_CPU_GEMM");
    return small_gemm_available() && !(choice && std::string(choice) == "blas");
  }();
  return use;
}

}  // namespace shufflenet_ops::cpu
