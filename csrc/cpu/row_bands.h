// The work split of a kernel that runs a chain of layers over bands of output rows (the
// fused unit, shuffle_unit_kernel.cpp): tasks of (image, band), and the buffer of an
// intermediate layer's rows that a band walks through.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace shufflenet_ops::cpu {

// Bands per image: the fewest that give every thread the same number of tasks when there
// are few images (batch 1 on 2 threads: 2 bands), else one (whole images: no rows recomputed
// at band edges).
inline int64_t bands_per_image(int64_t batch, int64_t rows, int64_t threads) {
  if (batch >= 4 * threads) return 1;
  for (int64_t bands = 1; bands <= rows; ++bands) {
    if ((batch * bands) % threads == 0) return bands;
  }
  return std::min(rows, (threads + batch - 1) / batch);
}

// Output rows [begin, end) of band `band` of `bands` over `rows` rows.
inline std::pair<int64_t, int64_t> band_rows(int64_t band, int64_t bands, int64_t rows) {
  return {band * rows / bands, (band + 1) * rows / bands};
}

// Rows [begin, end) of an intermediate layer, `row_elements` elements each, held in a
// per-thread buffer while a band moves down the image chunk by chunk. Rows that two chunks
// share (a 3x3 window's halo) are kept, not recomputed.
template <typename T>
class RowBuffer {
 public:
  RowBuffer(std::vector<T>& storage, int64_t row_elements) : storage_(storage), row_elements_(row_elements) {}

  // Makes the buffer hold rows [need_begin, need_end): the rows already held in that range
  // move to the front; returns the first row the caller must still compute.
  int64_t hold(int64_t need_begin, int64_t need_end) {
    int64_t compute_from = need_begin;
    if (begin_ <= need_begin && need_begin < end_) {
      std::memmove(storage_.data(), row(need_begin), (end_ - need_begin) * row_elements_ * sizeof(T));
      compute_from = end_;
    }
    begin_ = need_begin;
    end_ = need_end;
    return compute_from;
  }

  T* row(int64_t r) { return storage_.data() + (r - begin_) * row_elements_; }
  int64_t begin() const { return begin_; }

 private:
  std::vector<T>& storage_;
  int64_t row_elements_;
  int64_t begin_ = 0, end_ = 0;
};

}  // namespace shufflenet_ops::cpu
