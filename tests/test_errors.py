"""Bad input gets a clear error naming the problem, from every backend, never a crash."""

from __future__ import annotations

import pytest
import torch

import shufflenet_ops as so

from _helpers import requires_extension

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
    ("relu None", lambda x, w, b: so.group_conv1x1_shuffle(x, w, 3, relu=None), TypeError,
     r"relu must be a bool, got NoneType"),
    ("relu a string", lambda x, w, b: so.shuffle_group_conv1x1(x, w, 3, 4, relu="no"), TypeError,
     r"relu must be a bool, got str"),
    ("pool without channels", lambda x, w, b: so.max_pool3x3s2_relu(x[:, :0]), ValueError,
     r"x must have at least one channel"),
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


# Every op's own bad calls (its spec's ``bad_calls``) through each place that checks them:
# the spec's check (the public functions), the C++ op (or its fake kernel, for meta tensors),
# and the dispatcher's CUDA kernel (whose check runs before any launch, so CPU tensors do).
BAD_OP_CALLS = [(spec, bad) for spec in so.ops.SPECS for bad in spec.bad_calls]


def _checkers(spec):
    from shufflenet_ops.ops.spec import checked_cuda_kernel

    yield "check", spec.check
    if so._extension.available():
        yield "C++", getattr(torch.ops.shufflenet_ops, spec.name)
    yield "CUDA kernel", checked_cuda_kernel(spec)


@pytest.mark.parametrize("spec,bad", BAD_OP_CALLS, ids=[f"{spec.name}: {bad[0]}" for spec, bad in BAD_OP_CALLS])
def test_ops_check_their_arguments_everywhere(spec, bad):
    _, make_args, error, message = bad
    args = make_args(next(iter(spec.samples())))
    for where, call in _checkers(spec):
        with pytest.raises(error, match=message):
            call(*args)
            pytest.fail(f"{where} accepted the call")


def test_every_op_has_bad_calls():
    assert all(spec.bad_calls for spec in so.ops.SPECS)


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
