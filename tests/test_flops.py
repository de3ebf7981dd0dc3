"""count_flops / count_params, and the paper's Table 1 complexity row."""

import pytest
import torch
from torch import nn

import shufflenet_ops
from shufflenet_ops import count_flops, count_params
from shufflenet_ops.models import shufflenet_v1
from shufflenet_ops.modules import ShuffleUnit

# Table 1, "Complexity" row (MFLOPs = million multiply-adds), 224x224 input
TABLE1_COMPLEXITY = {1: 143, 2: 140, 3: 137, 4: 133, 8: 137}


@pytest.mark.parametrize("groups", sorted(TABLE1_COMPLEXITY))
def test_table1_complexity_row(groups):
    flops = count_flops(shufflenet_v1(groups), (1, 3, 224, 224))
    # The paper counts the convolution layers (stem and units), not the FC layer.
    conv_macs = flops["total"] - flops["Linear"]
    assert round(conv_macs / 1e6) == TABLE1_COMPLEXITY[groups]
    assert flops["Linear"] == shufflenet_v1(groups).fc.in_features * 1000


def test_paper_unit_example():
    # Sec. 3.2: c=240, m=60, g=3, 28x28 -> hw(2cm/g + 9m) = 7,949,760 multiply-adds
    flops = count_flops(ShuffleUnit(240, 240, groups=3, stride=1), (1, 240, 28, 28))
    assert flops["total"] == 28 * 28 * (2 * 240 * 60 // 3 + 9 * 60) == 7_949_760


def test_by_layer_type_fused_and_naive_agree():
    fused = count_flops(shufflenet_v1(3, 0.5, num_classes=10), (2, 3, 64, 64))
    naive = count_flops(shufflenet_v1(3, 0.5, num_classes=10, fused=False), (2, 3, 64, 64))
    assert fused["total"] == naive["total"]
    assert "GroupConv1x1BNShuffle" in fused and "GroupConv1x1BNShuffle" not in naive
    assert fused["total"] == sum(v for k, v in fused.items() if k != "total")
    refused = count_flops(shufflenet_ops.fuse(shufflenet_v1(3, 0.5, num_classes=10, fused=False)), (2, 3, 64, 64))
    assert refused["total"] == naive["total"]


def test_batch_size_scales_counts_and_linear_is_counted():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, groups=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    one = count_flops(model, (1, 3, 4, 4))
    assert one == {"Conv2d": 8 * 16 * 27, "Linear": 128 * 5, "total": 8 * 16 * 27 + 640}
    assert count_flops(model, (3, 3, 4, 4))["total"] == 3 * one["total"]


def test_counting_changes_nothing_in_the_model():
    model = shufflenet_v1(2, 0.25, num_classes=10).train()
    model.stage2[0].compress.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}
    count_flops(model, (2, 3, 32, 32))
    assert {name: m.training for name, m in model.named_modules()} == modes
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
        assert value.device.type == "cpu"


def test_data_dependent_model_is_counted_with_a_real_forward():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 6, 1)

        def forward(self, x):
            return self.conv(x) if x.abs().sum().item() >= 0 else x  # .item() fails on meta

    assert count_flops(DataDependent(), (1, 4, 5, 5)) == {"Conv2d": 6 * 25 * 4, "total": 600}


def test_count_params():
    model = shufflenet_v1(3, 0.5, num_classes=10)
    params = count_params(model)
    assert params["total"] == sum(p.numel() for p in model.parameters())
    assert params["Linear"] == model.fc.weight.numel() + model.fc.bias.numel()
    assert count_params(shufflenet_v1(3, 0.5, num_classes=10, fused=False)) == params
    shared = nn.Linear(3, 3)
    assert count_params(nn.Sequential(shared, shared))["total"] == 12


def test_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module"):
        count_flops("model")
    with pytest.raises(ValueError, match="input_size"):
        count_flops(nn.Conv2d(3, 3, 1), (1, 3, 0, 4))
    with pytest.raises(TypeError, match="nn.Module"):
        count_params(None)
