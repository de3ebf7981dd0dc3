// A register-blocked fp32 GEMM for the shapes grouped 1x1 convs produce: small K (12 to 320
// inputs per group) and one operand read element by element through arbitrary strides.
//
//   C (M x N, ldc) = A (M x K; element (i, k) at a[i * a_row + k * a_col]) @ B (K x N, ldb)
//
// BLAS packs both operands on every call, which costs as much as the arithmetic when K is
// a dozen channels; this kernel packs nothing: A is broadcast straight from memory (so
// transposed or strided weights and channels_last pixel rows cost nothing) and B's rows are
// read as vectors. Returns false where it has no code for this CPU (then use BLAS).
#pragma once

#include <cstdint>

namespace shufflenet_ops::cpu {

bool small_gemm_available();

// Whether the fp32 kernels use small_gemm (default where available) or BLAS:
// SHUFFLENET_OPS_CPU_GEMM=blas forces BLAS (to compare the two in benchmarks). Read once.
bool use_small_gemm();

// The fused epilogue, applied in registers before C is stored: + a bias per row of C
// (row_bias[i]) or per column (col_bias[j]), + residual[i * residual_ld + j], then
// the ReLU if relu (NaN stays NaN: relu.h).
struct SmallGemmEpilogue {
  const float* row_bias = nullptr;
  const float* col_bias = nullptr;
  const float* residual = nullptr;
  int64_t residual_ld = 0;
  bool relu = false;
};

// stream_rows: B's and C's rows are long rows of memory, read and written in place (the
// channel-major layout's pixel planes), so each 64-column panel prefetches the next one's
// slice of every row of B, and C is streamed to memory with non-temporal stores where its
// rows are whole 64-byte lines (else prefetched for writing). Leave it false for operands in
// a buffer (they stay in cache for their next use).
// prefetch_rows: A's rows (and C's) are rows of a larger tensor read in place (the
// channels_last layout's pixels), so each row block prefetches the next block's rows.
// a_offsets: if not null, A's column k is at a_offsets[k] instead of k * a_col, i.e. element
// (i, k) at a[i * a_row + a_offsets[k]]: a GEMM that reads its input channels through a
// shuffle that no single stride describes (a ShuffleNet unit's expand GConv, shuffle_unit).
bool small_gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_row, int64_t a_col, const float* b,
                int64_t ldb, float* c, int64_t ldc, const SmallGemmEpilogue& epilogue = {}, bool stream_rows = false,
                bool prefetch_rows = false, const int64_t* a_offsets = nullptr);

// C (m x n, ldc) += A (m x k) @ B (n x k)^T where the rows of A and B are contiguous (lda,
// ldb apart): the dot-product form of grad weight in the channel-major layout, where the
// reduction (pixels) is the contiguous dimension of both operands. Fixed summation order.
// Returns false where it has no code for this CPU.
bool small_gemm_nt_accumulate(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                              int64_t ldb, float* c, int64_t ldc);

}  // namespace shufflenet_ops::cpu
