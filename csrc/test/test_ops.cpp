// A C++ user's check of the ops through the dispatcher: each fused op against the unfused
// ATen sequence (conv2d, channel_shuffle, relu), NCHW and channels_last, plus one bad input;
// and the forward kernels' tile plans (csrc/cpu/tiles.h).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <iostream>
#include <optional>

#include "cpu/tiles.h"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::cout << (ok ? "PASS " : "FAIL ") << what << "\n";
  if (!ok) ++failures;
}

// The two conv ops through the dispatcher; group_conv1x1_shuffle also takes interleave_with.
at::Tensor call_conv(const char* name, const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                     int64_t groups, int64_t shuffle, bool relu,
                     const std::optional<at::Tensor>& residual = std::nullopt,
                     const std::optional<at::Tensor>& interleave_with = std::nullopt) {
  using Optional = const std::optional<at::Tensor>&;
  auto& dispatcher = c10::Dispatcher::singleton();
  if (std::string(name) == "shufflenet_ops::group_conv1x1_shuffle") {
    return dispatcher.findSchemaOrThrow(name, "")
        .typed<at::Tensor(const at::Tensor&, const at::Tensor&, Optional, int64_t, int64_t, bool, Optional, Optional)>()
        .call(x, w, b, groups, shuffle, relu, residual, interleave_with);
  }
  return dispatcher.findSchemaOrThrow(name, "")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, Optional, int64_t, int64_t, bool, Optional)>()
      .call(x, w, b, groups, shuffle, relu, residual);
}

at::Tensor conv1x1(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b, int64_t groups) {
  const std::vector<int64_t> one{1, 1}, zero{0, 0};
  return at::conv2d(x, w, b, at::IntArrayRef(one), at::IntArrayRef(zero), at::IntArrayRef(one), groups);
}

}  // namespace

// The forward's tile plans: few tiles split evenly across threads, and no search at all where
// a split would be narrower than one 64-column GEMM panel (tiny inputs).
void check_balanced_plans() {
  using shufflenet_ops::cpu::balanced_plan;
  using shufflenet_ops::cpu::TilePlan;
  const TilePlan fourteen = balanced_plan(1, 16 * 14 * 14, 300, 2);  // 11 tiles of 288 -> 12
  expect(TilePlan(1, 16 * 14 * 14, 300).size() == 11, "TilePlan cuts 3136 pixels into 11 tiles of 288");
  expect(fourteen.size() == 12 && fourteen.tile_pixels >= 150, "balanced_plan splits 11 tiles into 12 on 2 threads");
  expect(fourteen.tile_pixels % 16 == 0, "split images get tiles of whole 64-byte lines");
  // One tile of all 16 7x7 images would leave a thread idle: split below half the target.
  expect(balanced_plan(16, 49, 910, 2).size() == 2, "balanced_plan gives each of 2 threads a tile");
  expect(balanced_plan(1, 16 * 14 * 14, 218, 1).size() == TilePlan(1, 16 * 14 * 14, 218).size(),
         "balanced_plan keeps the plan on 1 thread");
  expect(balanced_plan(2, 4, 4096, 2).size() == TilePlan(2, 4, 4096).size(), "balanced_plan keeps a 1-tile plan");
  expect(balanced_plan(16, 784, 512, 2).size() == TilePlan(16, 784, 512).size(),
         "balanced_plan keeps a plan that already divides evenly");
}

int main() {
  at::manual_seed(0);
  check_balanced_plans();
  const int64_t groups = 3;
  for (auto format : {at::MemoryFormat::Contiguous, at::MemoryFormat::ChannelsLast}) {
    const std::string tag = format == at::MemoryFormat::Contiguous ? " (NCHW)" : " (channels_last)";
    const at::Tensor x = at::randn({2, 24, 5, 7}, at::kDouble).contiguous(format);
    const at::Tensor w = at::randn({48, 8, 1, 1}, at::kDouble);
    const at::Tensor b = at::randn({48}, at::kDouble);

    const at::Tensor fused = call_conv("shufflenet_ops::group_conv1x1_shuffle", x, w, b, groups, groups, true);
    const at::Tensor expected = at::relu(at::channel_shuffle(conv1x1(x, w, b, groups), groups));
    expect(at::allclose(fused, expected), "group_conv1x1_shuffle matches conv2d + channel_shuffle + relu" + tag);
    expect(fused.is_contiguous(format), "output keeps the input's memory format" + tag);

    const int64_t official = 24 / groups;  // the official code's inverse convention
    const at::Tensor fused_in = call_conv("shufflenet_ops::shuffle_group_conv1x1", x, w, std::nullopt, groups,
                                          official, false);
    const at::Tensor expected_in = conv1x1(at::channel_shuffle(x, official), w, std::nullopt, groups);
    expect(at::allclose(fused_in, expected_in), "shuffle_group_conv1x1 matches channel_shuffle + conv2d" + tag);

    const at::Tensor shortcut = at::randn({2, 48, 5, 7}, at::kDouble).contiguous(format);
    const at::Tensor fused_res = call_conv("shufflenet_ops::group_conv1x1_shuffle", x, w, b, groups, 1, true, shortcut);
    const at::Tensor expected_res = at::relu(conv1x1(x, w, b, groups) + shortcut);
    expect(at::allclose(fused_res, expected_res), "residual epilogue matches relu(conv2d + shortcut)" + tag);

    // interleave_with: channel 2j is a's j, 2j + 1 the conv's j (a V2 unit's ending).
    const at::Tensor a = at::randn({2, 48, 5, 7}, at::kDouble).contiguous(format);
    const at::Tensor fused_il = call_conv("shufflenet_ops::group_conv1x1_shuffle", x, w, b, groups, 1, true,
                                          std::nullopt, a);
    const at::Tensor expected_il = at::stack({a, at::relu(conv1x1(x, w, b, groups))}, 2).reshape({2, 96, 5, 7});
    expect(at::allclose(fused_il, expected_il), "interleave_with writes interleave(a, conv)" + tag);

    // The interleave op and its inverse (a copy: exact), the inverse given y's two halves.
    auto& dispatcher = c10::Dispatcher::singleton();
    const at::Tensor y = dispatcher.findSchemaOrThrow("shufflenet_ops::interleave", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>()
                             .call(a, shortcut);
    expect(at::equal(y, at::stack({a, shortcut}, 2).reshape({2, 96, 5, 7})), "interleave(a, b) = shuffle(cat)" + tag);
    const auto [even, odd] = dispatcher.findSchemaOrThrow("shufflenet_ops::deinterleave", "")
                                 .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&)>()
                                 .call(y.slice(1, 0, 48), y.slice(1, 48));
    expect(at::equal(even, a) && at::equal(odd, shortcut), "deinterleave of the halves gives a and b back" + tag);
  }

  bool raised = false;
  try {
    call_conv("shufflenet_ops::group_conv1x1_shuffle", at::randn({2, 24, 5, 7}), at::randn({48, 8, 1, 1}),
              std::nullopt, 5, 5, false);
  } catch (const c10::Error& e) {
    raised = std::string(e.what()).find("must be divisible by groups (5)") != std::string::npos;
  }
  expect(raised, "bad groups raise an error naming the problem");

  std::cout << (failures ? "FAILED" : "OK") << "\n";
  return failures ? 1 : 0;
}
