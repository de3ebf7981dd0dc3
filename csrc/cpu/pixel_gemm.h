// The GEMM of a kernel that chains layers over pixel-major buffers (the fused unit,
// shuffle_unit_kernel.cpp): C = A @ B + a bias per column (+ residual), then ReLU, with A read through
// arbitrary strides or a column-offset table. small_gemm (AVX-512, float32) where it runs,
// plain loops of the same arithmetic elsewhere.
#pragma once

#include <cstdint>
#include <type_traits>

#include "relu.h"
#include "small_gemm.h"

namespace shufflenet_ops::cpu {

// C (m x n, ldc) = A (m x k) @ B (k x n, contiguous) + col_bias (+ residual) (ReLU), A's
// element (i, kk) at a[i * a_row + (a_offsets ? a_offsets[kk] : kk * a_col)]. small_gemm for
// float32 where it runs, else these portable loops (float64, CPUs without AVX-512).
template <typename T>
inline void gemm_bias_relu(int64_t m, int64_t n, int64_t k, const T* a, int64_t a_row, int64_t a_col,
                           const int64_t* a_offsets, const T* b, T* c, int64_t ldc, const T* col_bias,
                           const T* residual, int64_t residual_ld, bool relu, bool vector, bool prefetch_rows) {
  if constexpr (std::is_same_v<T, float>) {
    if (vector) {
      SmallGemmEpilogue epilogue;
      epilogue.col_bias = col_bias;
      epilogue.residual = residual;
      epilogue.residual_ld = residual_ld;
      epilogue.relu = relu;
      if (small_gemm(m, n, k, a, a_row, a_col, b, n, c, ldc, epilogue, /*stream_rows=*/false, prefetch_rows,
                     a_offsets)) {
        return;
      }
    }
  }
  for (int64_t i = 0; i < m; ++i) {
    T* row = c + i * ldc;
    for (int64_t j = 0; j < n; ++j) row[j] = col_bias[j];
    for (int64_t kk = 0; kk < k; ++kk) {
      const T av = a[i * a_row + (a_offsets ? a_offsets[kk] : kk * a_col)];
      const T* brow = b + kk * n;
      for (int64_t j = 0; j < n; ++j) row[j] += av * brow[j];
    }
    for (int64_t j = 0; j < n; ++j) {
      const T v = residual ? row[j] + residual[i * residual_ld + j] : row[j];
      row[j] = relu ? cpu::relu(v) : v;
    }
  }
}

}  // namespace shufflenet_ops::cpu
