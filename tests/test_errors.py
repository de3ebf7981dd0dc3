"""Bad input gets a clear error naming the problem, from every backend, never a crash."""

from __future__ import annotations

import pytest
import torch

import shufflenet_ops as so

from conftest import requires_extension

BACKENDS = [
    pytest.param("cpp", marks=requires_extension),
    "reference",
]


def good():
    return torch.randn(2, 12, 4, 4), torch.randn(24, 4, 1, 1), torch.randn(24)


# (description, call, exception type, regex the message must match)
BAD_CALLS = [
    ("3-D input", lambda x, w, b: so.group_conv1x1_shuffle(x[0], w, 3), ValueError, r"4-D"),
    ("5-D input", lambda x, w, b: so.group_conv1x1_shuffle(x[None], w, 3), ValueError, r"4-D"),
    ("Cin not divisible by groups", lambda x, w, b: so.group_conv1x1_shuffle(x, torch.randn(25, 2, 1, 1), 5),
     ValueError, r"input channels \(12\) must be divisible by groups \(5\)"),
    ("Cout not divisible by groups", lambda x, w, b: so.group_conv1x1_shuffle(x, torch.randn(25, 4, 1, 1), 3),
     ValueError, r"output channels .*\(25\) must be divisible by groups \(3\)"),
    ("output channels not divisible by shuffle_groups",
     lambda x, w, b: so.group_conv1x1_shuffle(x, w, 3, shuffle_groups=5), ValueError,
     r"output channels \(24\) must be divisible by shuffle_groups \(5\)"),
    ("input channels not divisible by shuffle_groups",
     lambda x, w, b: so.shuffle_group_conv1x1(x, w, 3, 5), ValueError,
     r"input channels \(12\) must be divisible by shuffle_groups \(5\)"),
    ("weight shape mismatch", lambda x, w, b: so.group_conv1x1_shuffle(x, torch.randn(24, 3, 1, 1), 3),
     ValueError, r"expected weight.shape\[1\] == 4"),
    ("3x3 kernel", lambda x, w, b: so.group_conv1x1_shuffle(x, torch.randn(24, 4, 3, 3), 3),
     ValueError, r"1x1 kernel"),
    ("3-D weight", lambda x, w, b: so.group_conv1x1_shuffle(x, torch.randn(24, 4, 1), 3),
     ValueError, r"weight must have shape"),
    ("groups 0", lambda x, w, b: so.group_conv1x1_shuffle(x, w, 0), ValueError, r"groups must be >= 1, got 0"),
    ("groups negative", lambda x, w, b: so.group_conv1x1_shuffle(x, w, -3), ValueError, r"groups must be >= 1"),
    ("shuffle_groups 0", lambda x, w, b: so.group_conv1x1_shuffle(x, w, 3, shuffle_groups=0), ValueError,
     r"shuffle_groups must be >= 1, got 0"),
    ("shuffle_groups 0 (input placement)", lambda x, w, b: so.shuffle_group_conv1x1(x, w, 3, 0), ValueError,
     r"shuffle_groups must be >= 1, got 0"),
    ("float groups", lambda x, w, b: so.group_conv1x1_shuffle(x, w, 3.0), TypeError, r"groups must be an int"),
    ("weight dtype mismatch", lambda x, w, b: so.group_conv1x1_shuffle(x, w.double(), 3), TypeError,
     r"weight dtype torch.float64 does not match input dtype torch.float32"),
    ("bias dtype mismatch", lambda x, w, b: so.group_conv1x1_shuffle(x, w, 3, bias=b.double()), TypeError,
     r"bias dtype torch.float64 does not match"),
    ("integer input", lambda x, w, b: so.group_conv1x1_shuffle(x.long(), w.long(), 3), TypeError,
     r"unsupported dtype torch.int64"),
    ("bool input", lambda x, w, b: so.channel_shuffle(x > 0, 3), TypeError, r"unsupported dtype torch.bool"),
    ("bias wrong length", lambda x, w, b: so.group_conv1x1_shuffle(x, w, 3, bias=b[:5]), ValueError,
     r"bias must have shape \(24,\), got \(5,\)"),
    ("bias 2-D", lambda x, w, b: so.group_conv1x1_shuffle(x, w, 3, bias=b[None]), ValueError,
     r"bias must have shape \(24,\)"),
    ("weight on meta device", lambda x, w, b: so.group_conv1x1_shuffle(x, w.to("meta"), 3), RuntimeError,
     r"weight is on meta but input is on cpu"),
    ("bias on meta device", lambda x, w, b: so.group_conv1x1_shuffle(x, w, 3, bias=b.to("meta")), RuntimeError,
     r"bias is on meta but input is on cpu"),
    ("residual wrong shape", lambda x, w, b: so.group_conv1x1_shuffle(x, w, 3, residual=torch.randn(2, 12, 4, 4)),
     ValueError, r"residual must have the output's shape \(2, 24, 4, 4\), got \(2, 12, 4, 4\)"),
    ("residual dtype", lambda x, w, b: so.shuffle_group_conv1x1(x, w, 3, 4, residual=torch.randn(2, 24, 4, 4).double()),
     TypeError, r"residual dtype torch.float64 does not match input dtype torch.float32"),
    ("residual device", lambda x, w, b: so.group_conv1x1_shuffle(x, w, 3, residual=torch.randn(2, 24, 4, 4, device="meta")),
     RuntimeError, r"residual is on meta but input is on cpu"),
    ("not a tensor", lambda x, w, b: so.group_conv1x1_shuffle(x.tolist(), w, 3), TypeError, r"must be a torch.Tensor"),
    ("shuffle: channels not divisible", lambda x, w, b: so.channel_shuffle(x, 5), ValueError,
     r"channels \(12\) must be divisible by groups \(5\)"),
    ("shuffle: groups 0", lambda x, w, b: so.channel_shuffle(x, 0), ValueError, r"groups must be >= 1"),
    ("shuffle: 2-D input", lambda x, w, b: so.channel_shuffle(x[0, 0], 2), ValueError, r"4-D"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call,error,message", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_clear_error(backend, call, error, message):
    with so.backend(backend), pytest.raises(error, match=message):
        call(*good())


# The C++ ops check their arguments too, for callers of torch.ops.shufflenet_ops.* directly.
RAW_BAD_CALLS = [
    ("forward: groups 0", lambda ops, x, w, b: ops.group_conv1x1_shuffle(x, w, b, 0, 1, False), ValueError,
     r"groups must be >= 1"),
    ("forward: weight mismatch", lambda ops, x, w, b: ops.shuffle_group_conv1x1(x, w[:, :3], b, 3, 3, False),
     ValueError, r"expected weight.shape\[1\] == 4"),
    ("forward: int input", lambda ops, x, w, b: ops.group_conv1x1_shuffle(x.int(), w.int(), None, 3, 3, False),
     TypeError, r"unsupported dtype Int"),
    ("forward: residual shape",
     lambda ops, x, w, b: ops.group_conv1x1_shuffle(x, w, b, 3, 3, True, torch.randn(2, 24, 4, 3)),
     ValueError, r"residual must have the output's shape \(2, 24, 4, 4\)"),
    ("forward: bias dtype", lambda ops, x, w, b: ops.group_conv1x1_shuffle(x, w, b.double(), 3, 3, False),
     TypeError, r"bias dtype Double does not match input dtype Float"),
    ("grad input: channels", lambda ops, x, w, b: ops.conv1x1_shuffle_grad_input(x, w, 3, 1, 3), ValueError,
     r"grad_output has 12 channels, weight expects 24"),
    ("grad weight: shape", lambda ops, x, w, b: ops.conv1x1_shuffle_grad_weight(torch.randn(2, 24, 3, 4), x, 3, 1, 3),
     ValueError, r"does not match input shape"),
    ("grad bias: shuffle", lambda ops, x, w, b: ops.conv1x1_shuffle_grad_bias(torch.randn(2, 24, 4, 4), 5),
     ValueError, r"output channels \(24\) must be divisible by out_shuffle \(5\)"),
    ("relu grad: shape", lambda ops, x, w, b: ops.relu_grad(x, x[:, :3]), ValueError, r"does not match output shape"),
    ("shuffle: groups", lambda ops, x, w, b: ops.channel_shuffle(x, 7), ValueError, r"divisible by groups \(7\)"),
]


@requires_extension
@pytest.mark.parametrize("call,error,message", [c[1:] for c in RAW_BAD_CALLS], ids=[c[0] for c in RAW_BAD_CALLS])
def test_raw_ops_check_their_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call(torch.ops.shufflenet_ops, *good())


def test_unknown_backend_names_the_choices(monkeypatch):
    x, w, _ = good()
    monkeypatch.setenv("SHUFFLENET_OPS_BACKEND", "cuda")
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'.*auto, cpp, triton, reference"):
        so.group_conv1x1_shuffle(x, w, 3)
    with pytest.raises(ValueError, match="unknown backend"):
        with so.backend("fast"):
            pass


def test_cpp_backend_refuses_non_cpu_tensors():
    x, w, _ = good()
    with so.backend("cpp"), pytest.raises(RuntimeError, match="CPU tensors only"):
        so.group_conv1x1_shuffle(x.to("meta"), w.to("meta"), 3)
