"""fuse() on ShuffleNet V1 units as users write them: each becomes one ``fused_unit`` call,
the whole-unit op (shuffle_unit) in inference, the per-op path in training.

PYTEST_DONT_REWRITE: the official-style unit has an ``assert`` in its forward, and fuse()
must see it as Python compiles it, not as pytest's assertion rewriting does.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shufflenet_ops as so

from _helpers import OpCalls, assert_close, assert_same_training, randomize_batchnorm, requires_extension

pytestmark = requires_extension
UNIT_OP = torch.ops.shufflenet_ops.shuffle_unit.default


class UserUnit(nn.Module):
    """A ShuffleNet V1 unit as users write it: ``placement`` of the shuffle ("compress": after
    the compress conv's BN+ReLU, the paper's; "expand": right before the expand conv),
    ``convention`` "paper" (torch.channel_shuffle by g) or "official" (reshape/permute to
    (B/g, g), the official code's)."""

    def __init__(self, cin, cout, groups, stride, placement, convention):
        super().__init__()
        bottleneck, branch = cout // 4, cout - cin if stride == 2 else cout
        self.groups, self.stride, self.placement, self.convention = groups, stride, placement, convention
        self.conv1 = nn.Conv2d(cin, bottleneck, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(bottleneck)
        self.dw = nn.Conv2d(bottleneck, bottleneck, 3, stride, 1, groups=bottleneck, bias=False)
        self.bn2 = nn.BatchNorm2d(bottleneck)
        self.conv3 = nn.Conv2d(bottleneck, branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)

    def shuffle(self, x):
        if self.convention == "paper":
            return torch.channel_shuffle(x, self.groups)
        n, c, h, w = x.size()
        return x.reshape(n, c // self.groups, self.groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        if self.placement == "compress":
            out = self.shuffle(out)
        out = self.bn2(self.dw(out))
        if self.placement == "expand":
            out = self.shuffle(out)
        out = self.bn3(self.conv3(out))
        if self.stride == 1:
            return F.relu(x + out)
        return F.relu(torch.cat((F.avg_pool2d(x, 3, 2, 1), out), 1))


class UserNet(nn.Module):
    def __init__(self, placement, convention):
        super().__init__()
        self.units = nn.Sequential(
            UserUnit(24, 48, 3, 2, placement, convention), UserUnit(48, 48, 3, 1, placement, convention),
            UserUnit(48, 96, 3, 2, placement, convention),
        )

    def forward(self, x):
        return self.units(x)


@pytest.mark.parametrize("placement", ["compress", "expand"])
@pytest.mark.parametrize("convention", ["paper", "official"])
def test_fuse_turns_user_units_into_the_whole_unit_op(placement, convention):
    naive = randomize_batchnorm(UserNet(placement, convention).double())
    fused = so.fuse(copy.deepcopy(naive))
    x = torch.randn(2, 24, 13, 11, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    for model in (naive, fused):
        model.eval()
    with torch.no_grad(), OpCalls() as calls:
        y = fused(x)
    assert calls.ops.count(UNIT_OP) == 3, "a unit ran op by op"
    with torch.no_grad():
        assert_close(y, naive(x), torch.float64)
        assert_close(fused.float()(x.float()), naive(x), torch.float32)
    fused.double()
    # training (and a gradient in eval) runs the per-op path: equal outputs and gradients
    for model in (naive, fused):
        model.train()
    assert_same_training(naive, fused, x)


class OfficialStyleUnit(nn.Module):
    """The official ShuffleNetV1 code's stride-1 block: the shuffle before the expand conv,
    written with x.data.size() and an assert on the channel count."""

    def __init__(self, channels, groups):
        super().__init__()
        mid = channels // 4
        self.group = groups
        self.branch_main_1 = nn.Sequential(
            nn.Conv2d(channels, mid, 1, groups=groups, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, 1, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
        )
        self.branch_main_2 = nn.Sequential(nn.Conv2d(mid, channels, 1, groups=groups, bias=False),
                                           nn.BatchNorm2d(channels))

    def channel_shuffle(self, x):
        batchsize, num_channels, height, width = x.data.size()
        assert num_channels % self.group == 0
        x = x.reshape(batchsize, num_channels // self.group, self.group, height, width).permute(0, 2, 1, 3, 4)
        return x.reshape(batchsize, num_channels, height, width)

    def forward(self, old_x):
        x = self.branch_main_2(self.channel_shuffle(self.branch_main_1(old_x)))
        return F.relu(x + old_x)


def test_fuse_official_unit_with_shape_queries():
    """The assert on x.data.size() reads a value the whole-unit op never computes: it reads
    the same shape from a stand-in, and the unit still runs as one op."""
    naive = randomize_batchnorm(nn.Sequential(OfficialStyleUnit(48, 3), OfficialStyleUnit(48, 3)).double()).eval()
    fused = so.fuse(copy.deepcopy(naive)).eval()
    x = torch.randn(1, 48, 9, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), OpCalls() as calls:
        y = fused(x)
    assert calls.ops.count(UNIT_OP) == 2
    with torch.no_grad():
        assert_close(y, naive(x), torch.float64)
