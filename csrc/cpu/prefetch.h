// Software prefetch of a row read once from memory, where the hardware prefetcher falls
// behind (short or strided rows). Shared by the stem's dx pass and the interleave ops.
#pragma once

#include <cstdint>

namespace shufflenet_ops::cpu {

// Every cache line of row[0..count) into L1.
template <typename T>
inline void prefetch_row(const T* row, int64_t count) {
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int64_t byte = 0; byte < count * static_cast<int64_t>(sizeof(T)); byte += 64) __builtin_prefetch(bytes + byte);
}

}  // namespace shufflenet_ops::cpu
