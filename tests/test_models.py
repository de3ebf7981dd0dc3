"""ShuffleNet V1: Table 1 widths, width rounding, fused vs naive model."""

import pytest
import torch
from torch import nn

from shufflenet_ops import models
from shufflenet_ops.models import ShuffleNetV1, shufflenet_v1, stage_channels
from shufflenet_ops.modules import GroupConv1x1BNShuffle, ShuffleUnit

from _helpers import assert_same_buffers, assert_same_grads, randomize_batchnorm, run_and_backward

DOUBLE = torch.float64
TABLE1_STAGE_CHANNELS = {
    1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088), 8: (384, 768, 1536)
}


@pytest.mark.parametrize("groups", sorted(TABLE1_STAGE_CHANNELS))
def test_table1_architecture_at_1x(groups):
    model = shufflenet_v1(groups)
    assert model.stage_out_channels == (24, *TABLE1_STAGE_CHANNELS[groups])
    assert model.stem[0].out_channels == 24 and model.stem[0].stride == (2, 2)
    assert isinstance(model.stem[3], nn.MaxPool2d)
    stages = (model.stage2, model.stage3, model.stage4)
    for stage, repeats, out_channels in zip(stages, (4, 8, 4), TABLE1_STAGE_CHANNELS[groups]):
        assert len(stage) == repeats
        assert [unit.stride for unit in stage] == [2] + [1] * (repeats - 1)
        assert all(unit.out_channels == out_channels and unit.groups == groups for unit in stage)
    # Stage 2's first pointwise conv is not grouped; every other one is
    assert model.stage2[0].compress.conv.groups == 1
    assert all(unit.compress.conv.groups == groups for unit in list(model.stage2)[1:] + list(model.stage3))
    assert model.fc.in_features == TABLE1_STAGE_CHANNELS[groups][-1] and model.fc.out_features == 1000


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("width_mult", [0.25, 0.5, 1.0, 1.5, 2.0])
def test_scaled_widths_keep_the_divisibility_the_units_need(groups, width_mult):
    stem, *stages = stage_channels(groups, width_mult)
    for channels in stages:
        assert channels % groups == 0 and channels % 4 == 0 and (channels // 4) % groups == 0
    assert (stages[0] - stem) % groups == 0
    # within one rounding quantum of the exact scaled width
    assert abs(stages[0] - TABLE1_STAGE_CHANNELS[groups][0] * width_mult) <= 2 * groups
    shufflenet_v1(groups, width_mult, num_classes=10)  # every unit's own checks pass


def test_scaled_widths_match_the_official_code_where_it_is_known():
    assert stage_channels(3, 0.5) == (12, 120, 240, 480)
    assert stage_channels(3, 2.0) == (48, 480, 960, 1920)
    assert stage_channels(8, 0.5) == (16, 192, 384, 768)
    assert stage_channels(8, 2.0) == (48, 768, 1536, 3072)
    assert stage_channels(3, 1.5)[1:] == (360, 720, 1440)
    assert stage_channels(8, 1.5)[1:] == (576, 1152, 2304)


@pytest.mark.parametrize("size", [(32, 32), (64, 48), (37, 45)])
def test_any_input_size_from_32(size):
    model = shufflenet_v1(3, 0.25, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 7)


@pytest.mark.parametrize("groups", [3, 8])
def test_naive_checkpoint_loads_into_fused_model_with_same_outputs_and_gradients(groups):
    torch.manual_seed(0)
    naive = randomize_batchnorm(shufflenet_v1(groups, 0.25, num_classes=10, fused=False).to(DOUBLE))
    fused = shufflenet_v1(groups, 0.25, num_classes=10, fused=True).to(DOUBLE)
    assert isinstance(fused.stage3[1].compress, GroupConv1x1BNShuffle)
    assert naive.state_dict().keys() == fused.state_dict().keys()
    fused.load_state_dict(naive.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=DOUBLE)
    y_ref, gx_ref = run_and_backward(naive, x)
    y, gx = run_and_backward(fused, x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)
    assert_same_grads(naive, fused)
    assert_same_buffers(naive, fused)
    naive.eval()
    fused.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), naive(x))
    back = shufflenet_v1(groups, 0.25, num_classes=10, fused=False).to(DOUBLE).eval()
    back.load_state_dict(fused.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(back(x), naive(x))


def test_fused_eval_within_float32_tolerance_of_naive():
    torch.manual_seed(0)
    naive = randomize_batchnorm(shufflenet_v1(3, 0.5, num_classes=10, fused=False)).eval()
    fused = shufflenet_v1(3, 0.5, num_classes=10, fused=True).eval()
    fused.load_state_dict(naive.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), naive(x), rtol=1e-4, atol=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="groups must be one of"):
        shufflenet_v1(groups=5)
    with pytest.raises(ValueError, match="width_mult must be one of"):
        shufflenet_v1(width_mult=0.75)
    with pytest.raises(ValueError, match="num_classes"):
        shufflenet_v1(num_classes=0)
    with pytest.raises(ValueError, match="positive"):
        ShuffleNetV1(width_mult=-1.0)
    assert models.shufflenet_v1 is shufflenet_v1 and isinstance(shufflenet_v1(1, 0.25).stage4[0], ShuffleUnit)
