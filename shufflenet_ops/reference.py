"""Pure-PyTorch (unfused) references of every op.

These are the definitions the fast kernels are tested against and the "eager unfused"
baseline the benchmarks time. They are written for clarity: each is the textbook
sequence of separate passes (conv, then a materialised shuffle, then bias/ReLU).
Autograd comes from PyTorch itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: output channel j*groups + i <- input channel i*(C/groups) + j.

    Identical to ``torch.channel_shuffle(x, groups)``; written out as the paper's
    reshape -> transpose -> flatten so the definition is visible.
    """
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The ShuffleNet V2 unit's ending, ``shuffle(cat(a, b), 2)``: ``a``'s channel j becomes
    channel 2j, ``b``'s channel j channel 2j + 1."""
    return channel_shuffle(torch.cat((a, b), 1), 2)


def deinterleave(first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of ``interleave`` for ``y = cat(first, second)`` (y given as two channel
    parts, as a V2 unit's two halves): ``(y[:, 0::2], y[:, 1::2])``."""
    y = torch.cat((first, second), 1)
    return y[:, 0::2], y[:, 1::2]


def _as_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    return weight if weight.dim() == 4 else weight.reshape(weight.shape[0], weight.shape[1], 1, 1)


def group_conv1x1_shuffle(
    x: torch.Tensor,
    weight: torch.Tensor,
    groups: int,
    *,
    bias: torch.Tensor | None = None,
    shuffle_groups: int | None = None,
    relu: bool = False,
    residual: torch.Tensor | None = None,
    interleave_with: torch.Tensor | None = None,
) -> torch.Tensor:
    """``act(shuffle(conv1x1(x, weight, groups) + bias, shuffle_groups) + residual)``, unfused;
    with ``interleave_with``, ``shuffle(cat(interleave_with, that), 2)``."""
    y = F.conv2d(x, _as_conv_weight(weight), bias, groups=groups)
    y = channel_shuffle(y, groups if shuffle_groups is None else shuffle_groups)
    y = _epilogue(y, residual, relu)
    return y if interleave_with is None else channel_shuffle(torch.cat((interleave_with, y), 1), 2)


def _epilogue(y: torch.Tensor, residual: torch.Tensor | None, relu: bool) -> torch.Tensor:
    if residual is not None:
        y = y + residual
    return F.relu(y) if relu else y


def shuffle_group_conv1x1(
    x: torch.Tensor,
    weight: torch.Tensor,
    groups: int,
    shuffle_groups: int,
    *,
    bias: torch.Tensor | None = None,
    relu: bool = False,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``act(conv1x1(shuffle(x, shuffle_groups), weight, groups) + bias + residual)``, unfused."""
    y = F.conv2d(channel_shuffle(x, shuffle_groups), _as_conv_weight(weight), bias, groups=groups)
    return _epilogue(y, residual, relu)


def max_pool3x3s2_relu(x: torch.Tensor) -> torch.Tensor:
    """relu(max_pool2d(x, 3, stride=2, padding=1)): the ShuffleNet stem's pool and ReLU."""
    return F.relu(F.max_pool2d(x, 3, stride=2, padding=1))


def avg_pool3x3s2_relu(x: torch.Tensor) -> torch.Tensor:
    """relu(avg_pool2d(x, 3, stride=2, padding=1)) (padding counted, as nn.AvgPool2d): the
    stride-2 unit's shortcut with the ReLU that follows its concat."""
    return F.relu(F.avg_pool2d(x, 3, stride=2, padding=1))


def batch_norm_relu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, relu: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BatchNorm in training (batch statistics), then the ReLU if ``relu``, with the batch's
    mean and biased variance (detached: the statistics the caller folds into its running ones)."""
    z = F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)
    mean, var = x.detach().mean((0, 2, 3)), x.detach().var((0, 2, 3), correction=0)
    return (F.relu(z) if relu else z), mean, var


def batch_norm_relu_max_pool3x3s2(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stem's BatchNorm in training (batch statistics), ReLU and 3x3/2 max pool:
    ``relu(max_pool2d(batch_norm(x), 3, stride=2, padding=1))``, with the batch's mean and
    biased variance (detached: the statistics the caller folds into its running ones) and
    each output's argmax as its offset in the 3x3 window (``dh * 3 + dw``, uint8)."""
    z = F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)
    pooled, index = F.max_pool2d(z, 3, stride=2, padding=1, return_indices=True)
    oh, ow = pooled.shape[2:]
    rows = torch.arange(oh, device=x.device).view(oh, 1) * 2 - 1
    cols = torch.arange(ow, device=x.device).view(1, ow) * 2 - 1
    window = (index // x.shape[3] - rows) * 3 + (index % x.shape[3] - cols)
    mean, var = x.detach().mean((0, 2, 3)), x.detach().var((0, 2, 3), correction=0)
    return F.relu(pooled), mean, var, window.to(torch.uint8)


def shuffle_unit(
    x: torch.Tensor,
    compress_weight: torch.Tensor,
    compress_bias: torch.Tensor,
    depthwise_weight: torch.Tensor,
    depthwise_bias: torch.Tensor,
    expand_weight: torch.Tensor,
    expand_bias: torch.Tensor,
    compress_groups: int,
    expand_groups: int,
    shuffle_groups: int,
    stride: int,
) -> torch.Tensor:
    """A ShuffleNet V1 unit with its BNs folded (paper Fig. 2b / 2c), layer by layer:
    ``h = relu(conv1x1(x) + b)``, ``d = depthwise3x3(h, stride) + b``,
    ``e = conv1x1(shuffle(d, shuffle_groups)) + b``, then ``relu(x + e)`` (stride 1) or
    ``cat(relu(avg_pool3x3s2(x)), relu(e))`` (stride 2). Weights in ``nn.Conv2d``'s layout."""
    d = _compress_depthwise(x, compress_weight, compress_bias, depthwise_weight, depthwise_bias, stride,
                            compress_groups)
    e = F.conv2d(channel_shuffle(d, shuffle_groups), _as_conv_weight(expand_weight), expand_bias, groups=expand_groups)
    if stride == 1:
        return F.relu(x + e)
    return torch.cat((avg_pool3x3s2_relu(x), F.relu(e)), dim=1)


def _compress_depthwise(v, compress_weight, compress_bias, depthwise_weight, depthwise_bias, stride, compress_groups):
    """depthwise3x3(relu(conv1x1(v) + b), stride) + b: the first two layers of a unit's branch."""
    h = F.relu(F.conv2d(v, _as_conv_weight(compress_weight), compress_bias, groups=compress_groups))
    return F.conv2d(h, depthwise_weight, depthwise_bias, stride=stride, padding=1, groups=h.shape[1])


def _bottleneck_branch(v, compress_weight, compress_bias, depthwise_weight, depthwise_bias, expand_weight, expand_bias,
                       stride, compress_groups, expand_groups):
    """relu(conv1x1(depthwise3x3(relu(conv1x1(v) + b), stride) + b) + b): ShuffleNet V2's branch2."""
    d = _compress_depthwise(v, compress_weight, compress_bias, depthwise_weight, depthwise_bias, stride,
                            compress_groups)
    return F.relu(F.conv2d(d, _as_conv_weight(expand_weight), expand_bias, groups=expand_groups))


def shuffle_unit_v2(
    x: torch.Tensor,
    compress_weight: torch.Tensor,
    compress_bias: torch.Tensor,
    depthwise_weight: torch.Tensor,
    depthwise_bias: torch.Tensor,
    expand_weight: torch.Tensor,
    expand_bias: torch.Tensor,
    branch1_depthwise_weight: torch.Tensor | None,
    branch1_depthwise_bias: torch.Tensor | None,
    branch1_pointwise_weight: torch.Tensor | None,
    branch1_pointwise_bias: torch.Tensor | None,
    stride: int,
    compress_groups: int = 1,
    expand_groups: int = 1,
    branch1_groups: int = 1,
) -> torch.Tensor:
    """A ShuffleNet V2 unit with its BNs folded (paper Fig. 3c / 3d; torchvision's
    ``InvertedResidual``), layer by layer with torch's cat and shuffle: stride 1
    ``shuffle(cat(x1, branch2(x2)), 2)`` with ``x1, x2 = x.chunk(2, 1)``; stride 2
    ``shuffle(cat(branch1(x), branch2(x)), 2)``. branch2 = 1x1 + ReLU, 3x3 depthwise
    (``stride``), 1x1 + ReLU; branch1 = 3x3/2 depthwise, 1x1 + ReLU. Weights in
    ``nn.Conv2d``'s layout; the branch1 tensors are None for stride 1."""
    branch2_input = x.chunk(2, dim=1)[1] if stride == 1 else x
    right = _bottleneck_branch(branch2_input, compress_weight, compress_bias, depthwise_weight, depthwise_bias,
                               expand_weight, expand_bias, stride, compress_groups, expand_groups)
    if stride == 1:
        left = x.chunk(2, dim=1)[0]
    else:
        d = F.conv2d(x, branch1_depthwise_weight, branch1_depthwise_bias, stride=2, padding=1, groups=x.shape[1])
        left = F.relu(F.conv2d(d, _as_conv_weight(branch1_pointwise_weight), branch1_pointwise_bias,
                               groups=branch1_groups))
    return channel_shuffle(torch.cat((left, right), dim=1), 2)
