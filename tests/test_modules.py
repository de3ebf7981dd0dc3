"""Fused modules against the unfused layers they replace; ShuffleUnit fused vs naive."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shufflenet_ops
from shufflenet_ops.modules import (
    Conv2dBN,
    GroupConv1x1BNShuffle,
    GroupConv1x1Shuffle,
    ShuffleGroupConv1x1,
    ShuffleGroupConv1x1BN,
    ShuffleUnit,
    fold_batchnorm,
    shuffle_permutation,
)

from _helpers import assert_same_buffers, assert_same_grads, randomize_batchnorm, run_and_backward

DOUBLE = torch.float64


def naive_conv_bn(conv, bn, shuffle_groups, relu, bn_after_shuffle=False):
    def forward(x):
        y = conv(x)
        if bn_after_shuffle:
            y = bn(torch.channel_shuffle(y, shuffle_groups))
        else:
            y = torch.channel_shuffle(bn(y), shuffle_groups)
        return F.relu(y) if relu else y

    return forward


# ------------------------------------------------------------------ GroupConv1x1Shuffle
@pytest.mark.parametrize(
    "groups,shuffle_groups,bias,relu", [(3, None, True, True), (2, 4, False, False), (1, 1, True, False)]
)
def test_group_conv1x1_shuffle_matches_conv_then_shuffle(groups, shuffle_groups, bias, relu):
    conv = nn.Conv2d(12, 24, 1, groups=groups, bias=bias).to(DOUBLE)
    module = GroupConv1x1Shuffle(12, 24, groups, shuffle_groups, bias=bias, relu=relu).to(DOUBLE)
    module.load_state_dict(conv.state_dict())
    x = torch.randn(2, 12, 5, 7, dtype=DOUBLE)
    expected = torch.channel_shuffle(conv(x), shuffle_groups or groups)
    torch.testing.assert_close(module(x), F.relu(expected) if relu else expected)


def test_group_conv1x1_shuffle_state_dict_loads_both_ways_with_conv2d():
    conv = nn.Conv2d(12, 24, 1, groups=3)
    module = GroupConv1x1Shuffle(12, 24, groups=3)
    assert module.state_dict().keys() == conv.state_dict().keys()
    assert {k: v.shape for k, v in module.state_dict().items()} == {k: v.shape for k, v in conv.state_dict().items()}
    module.load_state_dict(conv.state_dict())
    torch.testing.assert_close(module.weight, conv.weight)
    back = nn.Conv2d(12, 24, 1, groups=3)
    back.load_state_dict(module.state_dict())
    torch.testing.assert_close(back.bias, conv.bias)


def test_from_conv_shares_parameters_and_gradients_match():
    conv = nn.Conv2d(8, 16, 1, groups=4).to(DOUBLE)
    module = GroupConv1x1Shuffle.from_conv(conv, shuffle_groups=4, relu=True)
    assert module.weight is conv.weight and module.bias is conv.bias
    x = torch.randn(3, 8, 4, 4, dtype=DOUBLE)
    y_ref, gx_ref = run_and_backward(lambda t: F.relu(torch.channel_shuffle(conv(t), 4)), x)
    grads_ref = (conv.weight.grad.clone(), conv.bias.grad.clone())
    conv.zero_grad()
    y, gx = run_and_backward(module, x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close((conv.weight.grad, conv.bias.grad), grads_ref)


def test_shuffle_group_conv1x1_matches_shuffle_then_conv():
    conv = nn.Conv2d(12, 6, 1, groups=3, bias=False).to(DOUBLE)
    module = ShuffleGroupConv1x1.from_conv(conv, shuffle_groups=4, relu=True)
    assert module.state_dict().keys() == conv.state_dict().keys()
    x = torch.randn(2, 12, 3, 3, dtype=DOUBLE)
    torch.testing.assert_close(module(x), F.relu(conv(torch.channel_shuffle(x, 4))))


def test_conv_modules_reject_bad_arguments():
    with pytest.raises(ValueError, match="divisible by groups"):
        GroupConv1x1Shuffle(10, 12, groups=3)
    with pytest.raises(ValueError, match="shuffle_groups"):
        GroupConv1x1Shuffle(12, 12, groups=3, shuffle_groups=5)
    with pytest.raises(TypeError, match="groups must be an int"):
        GroupConv1x1Shuffle(12, 12, groups=1.5)
    with pytest.raises(ValueError, match=">= 1"):
        ShuffleGroupConv1x1(12, 12, groups=0, shuffle_groups=1)
    with pytest.raises(ValueError, match="1x1 conv"):
        GroupConv1x1Shuffle.from_conv(nn.Conv2d(4, 4, 3))
    with pytest.raises(TypeError, match="nn.Conv2d"):
        GroupConv1x1Shuffle.from_conv(nn.Linear(4, 4))


def test_shuffle_permutation_matches_torch_channel_shuffle():
    x = torch.arange(24.0).view(1, 24, 1, 1)
    for groups in (2, 3, 4, 6, 8):
        perm = shuffle_permutation(24, groups)
        torch.testing.assert_close(torch.channel_shuffle(x, groups).flatten(), perm.to(x.dtype))
        inverse = shuffle_permutation(24, 24 // groups)
        assert torch.equal(perm[inverse], torch.arange(24))


# ------------------------------------------------------------------- conv + BN modules
CONV_BN_CASES = [
    # (in, out, groups, shuffle_groups, relu, bn_after_shuffle, conv_bias, momentum)
    (12, 24, 3, 3, True, False, False, 0.1),
    (12, 24, 3, 3, True, True, False, 0.1),
    (16, 24, 4, 6, False, False, True, None),  # cumulative moving average
    (16, 24, 4, 8, True, True, True, 0.3),
    (8, 16, 1, 1, True, False, False, 0.1),
]


@pytest.mark.parametrize("cin,cout,groups,shuffle_groups,relu,bn_after_shuffle,conv_bias,momentum", CONV_BN_CASES)
def test_group_conv1x1_bn_shuffle_train_mode_is_exact(
    cin, cout, groups, shuffle_groups, relu, bn_after_shuffle, conv_bias, momentum
):
    conv = nn.Conv2d(cin, cout, 1, groups=groups, bias=conv_bias).to(DOUBLE)
    bn = randomize_batchnorm(nn.BatchNorm2d(cout, momentum=momentum).to(DOUBLE))
    naive_conv, naive_bn = copy.deepcopy(conv), copy.deepcopy(bn)
    fused = GroupConv1x1BNShuffle(conv, bn, shuffle_groups, relu=relu, bn_after_shuffle=bn_after_shuffle)
    naive = naive_conv_bn(naive_conv, naive_bn, shuffle_groups, relu, bn_after_shuffle)
    for step in range(2):  # two steps: momentum=None averages over num_batches_tracked
        x = torch.randn(4, cin, 5, 6, dtype=DOUBLE)
        y_ref, gx_ref = run_and_backward(naive, x, seed=step)
        y, gx = run_and_backward(fused, x, seed=step)
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(gx, gx_ref)
    assert_same_grads(nn.ModuleDict({"conv": naive_conv, "bn": naive_bn}), fused)
    assert_same_buffers(nn.ModuleDict({"conv": naive_conv, "bn": naive_bn}), fused)
    assert int(fused.bn.num_batches_tracked) == 2

    # eval: BN folded into one fused call, same result as the unfused eval-mode layers
    fused.eval()
    naive_bn.eval()
    x = torch.randn(2, cin, 3, 4, dtype=DOUBLE)
    for module in (naive_conv, naive_bn, fused):
        module.zero_grad()
    y_ref, gx_ref = run_and_backward(naive, x)
    y, gx = run_and_backward(fused, x)  # with autograd: gradients flow through the fold
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)
    assert_same_grads(nn.ModuleDict({"conv": naive_conv, "bn": naive_bn}), fused)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), y_ref)


def test_eval_mode_calls_the_fused_op_once_with_folded_bn(monkeypatch):
    conv = nn.Conv2d(12, 24, 1, groups=3, bias=False)
    fused = GroupConv1x1BNShuffle(conv, randomize_batchnorm(nn.BatchNorm2d(24)), relu=True).eval()
    calls = []
    original = shufflenet_ops.functional.group_conv1x1_shuffle

    def spy(x, weight, groups, **kwargs):
        calls.append(kwargs)
        return original(x, weight, groups, **kwargs)

    monkeypatch.setattr(shufflenet_ops.functional, "group_conv1x1_shuffle", spy)
    with torch.no_grad():
        fused(torch.randn(1, 12, 4, 4))
    assert len(calls) == 1
    assert calls[0]["relu"] is True and calls[0]["bias"] is not None and calls[0]["shuffle_groups"] == 3


def test_fold_matches_unfolded_in_float32_and_train_restores_semantics():
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 48, 1, groups=3, bias=False)
    bn = randomize_batchnorm(nn.BatchNorm2d(48))
    naive = naive_conv_bn(conv, bn, 3, relu=True)
    fused = GroupConv1x1BNShuffle(conv, bn, 3, relu=True)  # shares conv and bn with `naive`
    x = torch.randn(4, 24, 8, 8)
    fused.eval()
    bn.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), naive(x), rtol=1e-4, atol=1e-5)
    fused.train()  # switches the shared BN back to batch statistics, too
    stats_before = bn.running_mean.clone()
    with torch.no_grad():
        y = fused(x)
    assert not torch.equal(bn.running_mean, stats_before)  # running stats updated: training semantics
    z = conv(x)
    mean, var = z.mean((0, 2, 3), keepdim=True), z.var((0, 2, 3), unbiased=False, keepdim=True)
    expected = F.relu((z - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1))
    torch.testing.assert_close(y, torch.channel_shuffle(expected, 3), rtol=1e-4, atol=1e-5)


def test_folded_weights_follow_parameter_updates_in_eval_mode():
    conv = nn.Conv2d(8, 8, 1, groups=2, bias=False).to(DOUBLE)
    bn = randomize_batchnorm(nn.BatchNorm2d(8).to(DOUBLE))
    fused = GroupConv1x1BNShuffle(conv, bn, 2).eval()
    x = torch.randn(1, 8, 2, 2, dtype=DOUBLE)
    with torch.no_grad():
        first = fused(x)
        torch.testing.assert_close(fused(x), first)  # cached fold reused
        new_state = {k: v + 0.25 if v.is_floating_point() else v for k, v in fused.state_dict().items()}
        fused.load_state_dict(new_state)  # in-place copies: the cache must notice
        expected = naive_conv_bn(conv, bn, 2, relu=False)(x)
        torch.testing.assert_close(fused(x), expected)
        assert not torch.allclose(expected, first)


def test_shuffle_group_conv1x1_bn_train_and_eval_match_unfused():
    conv = nn.Conv2d(12, 12, 1, groups=3, bias=False).to(DOUBLE)
    bn = randomize_batchnorm(nn.BatchNorm2d(12).to(DOUBLE))
    naive_conv, naive_bn = copy.deepcopy(conv), copy.deepcopy(bn)
    fused = ShuffleGroupConv1x1BN(conv, bn, shuffle_groups=4, relu=True)

    def naive(t):
        return F.relu(naive_bn(naive_conv(torch.channel_shuffle(t, 4))))

    x = torch.randn(3, 12, 4, 5, dtype=DOUBLE)
    y_ref, gx_ref = run_and_backward(naive, x)
    y, gx = run_and_backward(fused, x)
    torch.testing.assert_close((y, gx), (y_ref, gx_ref))
    assert_same_grads(nn.ModuleDict({"conv": naive_conv, "bn": naive_bn}), fused)
    assert_same_buffers(nn.ModuleDict({"conv": naive_conv, "bn": naive_bn}), fused)
    fused.eval()
    naive_bn.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), naive(x))


def test_batchnorm_without_running_stats_uses_batch_statistics_in_eval():
    conv = nn.Conv2d(8, 8, 1, groups=2, bias=False).to(DOUBLE)
    bn = nn.BatchNorm2d(8, track_running_stats=False).to(DOUBLE)
    fused = GroupConv1x1BNShuffle(conv, bn, 2).eval()
    x = torch.randn(2, 8, 3, 3, dtype=DOUBLE)
    torch.testing.assert_close(fused(x), torch.channel_shuffle(bn.eval()(conv(x)), 2))
    with pytest.raises(ValueError, match="running statistics"):
        fold_batchnorm(fused)


def test_conv_bn_modules_reject_bad_arguments():
    with pytest.raises(ValueError, match="1x1"):
        GroupConv1x1BNShuffle(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="num_features"):
        GroupConv1x1BNShuffle(nn.Conv2d(4, 8, 1), nn.BatchNorm2d(4))
    with pytest.raises(TypeError, match="BatchNorm2d"):
        GroupConv1x1BNShuffle(nn.Conv2d(4, 8, 1), nn.BatchNorm1d(8))
    with pytest.raises(ValueError, match="shuffle_groups"):
        ShuffleGroupConv1x1BN(nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6), shuffle_groups=4)


def test_fold_batchnorm_is_permanent_and_leaves_the_original_alone():
    unit = randomize_batchnorm(ShuffleUnit(24, 24, 3, 1, fused=True).to(DOUBLE)).eval()
    x = torch.randn(2, 24, 6, 6, dtype=DOUBLE)
    with torch.no_grad():
        expected = unit(x)
    folded = fold_batchnorm(unit)
    assert isinstance(unit.compress, GroupConv1x1BNShuffle)  # original untouched
    assert isinstance(folded.compress, GroupConv1x1Shuffle) and isinstance(folded.expand, GroupConv1x1Shuffle)
    assert folded.compress.relu and folded.compress.shuffle_groups == 3
    with torch.no_grad():
        torch.testing.assert_close(folded(x), expected)
    with pytest.raises(TypeError, match="nn.Module"):
        fold_batchnorm("model")


# --------------------------------------------------------------------------- ShuffleUnit
UNIT_CASES = [
    # (in, out, groups, stride, grouped_first)
    (24, 24, 3, 1, True),
    (24, 48, 3, 2, True),
    (12, 48, 3, 2, False),
    (16, 16, 1, 1, True),
    (16, 32, 2, 2, True),
    (32, 32, 4, 1, True),
    (32, 64, 8, 2, True),
]


@pytest.mark.parametrize("cin,cout,groups,stride,grouped_first", UNIT_CASES)
def test_shuffle_unit_naive_and_fused_checkpoints_load_both_ways(cin, cout, groups, stride, grouped_first):
    torch.manual_seed(0)
    naive = randomize_batchnorm(ShuffleUnit(cin, cout, groups, stride, grouped_first, fused=False).to(DOUBLE))
    fused = ShuffleUnit(cin, cout, groups, stride, grouped_first, fused=True).to(DOUBLE)
    assert naive.state_dict().keys() == fused.state_dict().keys()
    fused.load_state_dict(naive.state_dict())  # naive -> fused
    x = torch.randn(2, cin, 8, 6, dtype=DOUBLE)
    y_ref, gx_ref = run_and_backward(naive, x)
    y, gx = run_and_backward(fused, x)
    assert y.shape == (2, cout, 8 // stride, 6 // stride)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)
    assert_same_grads(naive, fused)
    assert_same_buffers(naive, fused)

    back = ShuffleUnit(cin, cout, groups, stride, grouped_first, fused=False).to(DOUBLE)
    back.load_state_dict(fused.state_dict())  # fused -> naive
    for module in (naive, fused, back):
        module.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), naive(x))
        torch.testing.assert_close(back(x), naive(x))


def test_shuffle_unit_structure_follows_the_paper():
    unit = ShuffleUnit(240, 240, 3, 1)
    assert unit.compress.conv.out_channels == 60 and unit.compress.conv.groups == 3
    assert unit.compress.relu and unit.compress.shuffle_groups == 3
    assert unit.depthwise.conv.groups == 60 and unit.depthwise.conv.kernel_size == (3, 3)
    # No ReLU before the add: the expand conv's epilogue computes relu(shortcut + branch).
    assert unit.expand.relu and unit.expand.shuffle_groups == 1
    unit.eval()
    x = torch.randn(1, 240, 4, 4)
    hidden = unit.depthwise(unit.compress(x))
    with torch.no_grad():
        branch = F.batch_norm(
            F.conv2d(hidden, unit.expand.conv.weight, groups=3), unit.expand.bn.running_mean,
            unit.expand.bn.running_var, unit.expand.bn.weight, unit.expand.bn.bias, eps=unit.expand.bn.eps,
        )
        torch.testing.assert_close(unit(x), F.relu(x + branch), rtol=1e-4, atol=1e-4)
    first = ShuffleUnit(24, 240, 3, 2, grouped_first=False)
    assert first.compress.conv.groups == 1 and first.compress.shuffle_groups == 3
    assert first.expand.conv.out_channels == 216 and first.depthwise.conv.stride == (2, 2)
    naive = ShuffleUnit(240, 240, 3, 1, fused=False)
    assert isinstance(naive.shuffle, nn.ChannelShuffle) and naive.shuffle.groups == 3
    assert not any(isinstance(m, nn.ReLU) for m in naive.depthwise.modules())


def test_shuffle_unit_rejects_bad_arguments():
    with pytest.raises(ValueError, match="in_channels .* must equal"):
        ShuffleUnit(24, 48, 3, 1)
    with pytest.raises(ValueError, match="must exceed"):
        ShuffleUnit(48, 48, 3, 2)
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        ShuffleUnit(24, 24, 3, 3)
    with pytest.raises(ValueError, match="bottleneck"):
        ShuffleUnit(20, 20, 3, 1)  # bottleneck 5 not divisible by 3
    with pytest.raises(ValueError, match="branch output"):
        ShuffleUnit(25, 48, 3, 2, grouped_first=False)  # 48 - 25 not divisible by 3


def test_folded_weights_follow_data_replacement_and_dtype_changes():
    conv = nn.Conv2d(8, 8, 1, groups=2, bias=False)
    bn = randomize_batchnorm(nn.BatchNorm2d(8))
    fused = GroupConv1x1BNShuffle(conv, bn, 2).eval()
    x = torch.randn(1, 8, 2, 2)
    with torch.no_grad():
        fused(x)
        conv.weight.data = conv.weight.data * 2  # same Parameter, same version, new storage
        torch.testing.assert_close(fused(x), naive_conv_bn(conv, bn, 2, relu=False)(x))
        fused.double()
        assert fused(x.double()).dtype == DOUBLE


def test_frozen_batchnorm_in_a_training_model_is_folded_like_the_unfused_model():
    conv = nn.Conv2d(12, 12, 1, groups=3, bias=False).to(DOUBLE)
    bn = randomize_batchnorm(nn.BatchNorm2d(12).to(DOUBLE))
    fused = GroupConv1x1BNShuffle(conv, bn, 3, relu=True).train()
    bn.eval()  # fine-tuning with frozen BN statistics
    x = torch.randn(2, 12, 3, 3, dtype=DOUBLE)
    stats = bn.running_mean.clone()
    y_ref, gx_ref = run_and_backward(naive_conv_bn(conv, bn, 3, relu=True), x)
    y, gx = run_and_backward(fused, x)
    torch.testing.assert_close((y, gx), (y_ref, gx_ref))
    assert torch.equal(bn.running_mean, stats)


def test_conv2d_bn_folds_any_conv_in_eval_and_is_exact_in_train():
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(12, 12, 3, stride=2, padding=1, groups=12, bias=False).to(DOUBLE)
    bn = nn.BatchNorm2d(12).to(DOUBLE)
    with torch.no_grad():
        bn.running_mean.normal_(generator=gen)
        bn.running_var.uniform_(0.5, 2.0, generator=gen)
        bn.weight.normal_(generator=gen)
        bn.bias.normal_(generator=gen)
    naive = nn.Sequential(copy.deepcopy(conv), copy.deepcopy(bn))
    folded = Conv2dBN(conv, bn)
    assert folded.state_dict().keys() == {k.replace("0.", "conv.", 1).replace("1.", "bn.", 1)
                                          for k in naive.state_dict()}
    x = torch.randn(2, 12, 9, 7, generator=gen, dtype=DOUBLE, requires_grad=True)
    torch.testing.assert_close(folded(x), naive(x))  # train: batch statistics, running stats updated
    for ours, theirs in zip(folded.bn.buffers(), naive[1].buffers()):
        torch.testing.assert_close(ours, theirs)
    folded.eval(), naive.eval()
    conv_calls = []
    handle = folded.conv.register_forward_hook(lambda *args: conv_calls.append(1))
    torch.testing.assert_close(folded(x), naive(x))
    assert conv_calls == []  # folded: one F.conv2d with the BN-scaled weight, no separate BN pass
    handle.remove()
    permanent = fold_batchnorm(folded)
    assert type(permanent) is nn.Conv2d and permanent.bias is not None
    torch.testing.assert_close(permanent(x), naive(x))
    with pytest.raises(ValueError, match="zero padding"):
        Conv2dBN(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(4))
