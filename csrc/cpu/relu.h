// ReLU with torch's special values: relu(nan) = nan, relu(-inf) = 0, relu(+inf) = +inf.
// Every kernel's ReLU goes through these, so the NaN behaviour is defined in one place.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

namespace shufflenet_ops::cpu {

// `v < 0` is false for NaN, so NaN is returned as it is. (std::max(v, 0) is the same select,
// but whether it keeps NaN depends on its argument order: std::max(0, v) returns 0.)
template <typename T>
inline T relu(T v) {
  return v < T(0) ? T(0) : v;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// maxps returns its second operand when either operand is NaN: v goes second, so a NaN lane
// stays NaN (_mm512_max_ps(v, 0) turns it into 0). Still one maxps per vector.
__attribute__((target("avx512f"))) inline __m512 relu_ps(__m512 v) { return _mm512_max_ps(_mm512_setzero_ps(), v); }
#endif

}  // namespace shufflenet_ops::cpu
