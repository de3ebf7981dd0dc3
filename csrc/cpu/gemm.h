// Row-major GEMM on the BLAS that torch itself links (MKL on x86 wheels, OpenBLAS elsewhere).
// Leading dimensions are free, which is what lets a grouped 1x1 conv read and write
// channels in shuffled order without a copy (ld = stride * H*W: docs/design.md, "The GEMM of
// each placement").
#pragma once

#include <climits>
#include <cstdint>

extern "C" {
// Fortran BLAS, exported by libtorch_cpu (ATen calls the same symbols).
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace shufflenet_ops::cpu {

// BLAS takes 32-bit sizes: operands whose leading dimension does not fit are packed instead.
inline bool fits_blas(int64_t v) { return v > 0 && v <= INT_MAX; }

// C (m x n, ldc) = alpha * op(A) (m x k) @ op(B) (k x n) + beta * C, all row-major.
// Column-major BLAS computes the transpose: C^T = op(B)^T op(A)^T.
template <typename T>
inline void gemm_row_major(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                           int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  const int ilda = static_cast<int>(lda), ildb = static_cast<int>(ldb), ildc = static_cast<int>(ldc);
  if constexpr (sizeof(T) == sizeof(float)) {
    sgemm_(&tb, &ta, &in, &im, &ik, &alpha, b, &ildb, a, &ilda, &beta, c, &ildc);
  } else {
    dgemm_(&tb, &ta, &in, &im, &ik, &alpha, b, &ildb, a, &ilda, &beta, c, &ildc);
  }
}

}  // namespace shufflenet_ops::cpu
