// Index math of the channel shuffle, shared by every CPU kernel (docs/design.md, "Op conventions"
// and "The GEMM of each placement").
#pragma once

#include <cstdint>
#include <vector>

namespace shufflenet_ops {

// shuffle(x, s)[c] = x[shuffle_source(c, C, s)]: output channel j*s + i reads input channel
// i*(C/s) + j. s = 1 and s = C are the identity; the inverse of shuffle(., s) is shuffle(., C/s).
inline int64_t shuffle_source(int64_t c, int64_t channels, int64_t s) {
  return (c % s) * (channels / s) + c / s;
}

// The memory channel of every row of a grouped 1x1 conv operand, plus, per group, whether
// the group's rows are evenly spaced in memory (then a GEMM addresses them directly with a
// leading dimension of stride * channel_stride, no copy) or need a gather/scatter.
struct RowMap {
  int64_t groups = 1;
  int64_t rows_per_group = 0;
  std::vector<int64_t> channel;       // channel[g * rows_per_group + r]
  std::vector<int64_t> group_stride;  // > 0: channel = channel[first] + r * stride; 0: irregular

  // Rows are read (or written) through shuffle(., shuffle) on `channels` channels.
  RowMap(int64_t channels, int64_t groups_, int64_t shuffle) : groups(groups_), rows_per_group(channels / groups_) {
    channel.resize(channels);
    for (int64_t c = 0; c < channels; ++c) channel[c] = shuffle_source(c, channels, shuffle);
    group_stride.assign(groups, 0);
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t* ch = channel.data() + g * rows_per_group;
      const int64_t stride = rows_per_group > 1 ? ch[1] - ch[0] : 1;
      bool even = stride > 0;
      for (int64_t r = 1; even && r < rows_per_group; ++r) even = ch[r] - ch[r - 1] == stride;
      group_stride[g] = even ? stride : 0;
    }
  }

  const int64_t* group_channels(int64_t g) const { return channel.data() + g * rows_per_group; }
};

// Forward of y = Pout(conv(Pin(x))): conv input row r reads channel shuffle_source(r, Cin, in_shuffle).
inline RowMap input_rows(int64_t cin, int64_t groups, int64_t in_shuffle) {
  return RowMap(cin, groups, in_shuffle);
}
// Conv output row r lands in the channel c with shuffle_source(c, Cout, out_shuffle) == r, i.e.
// channel shuffle_source(r, Cout, Cout / out_shuffle) (the inverse shuffle).
inline RowMap output_rows(int64_t cout, int64_t groups, int64_t out_shuffle) {
  return RowMap(cout, groups, cout / out_shuffle);
}

}  // namespace shufflenet_ops
