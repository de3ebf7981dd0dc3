"""The training-mode BatchNorm ops: BN + ReLU (batch_norm_relu, with and without the ReLU) and
the stem's BN + ReLU + max pool (batch_norm_relu_max_pool3x3s2), and the module helpers that
run them: against aten's layers in value, gradient and running statistics, odd shapes,
layouts, NaN/inf, thread counts, the portable loops, and when a helper must run the layers as
written."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shufflenet_ops as so
from shufflenet_ops import reference
from shufflenet_ops.models import shufflenet_v1, shufflenet_v2
from shufflenet_ops.modules.batchnorm import batch_norm_act, batch_norm_relu_max_pool

from _helpers import OpCalls, assert_close, requires_extension, results_per_thread_count

pytestmark = requires_extension
OP = torch.ops.shufflenet_ops.batch_norm_relu_max_pool3x3s2.default
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def aten_layers(x, weight, bias, eps=1e-5):
    """What the stem's op computes, by aten's own modules' functions."""
    return F.relu(F.max_pool2d(F.batch_norm(x, None, None, weight, bias, True, 0.0, eps), 3, 2, 1))


# Each op's output as a function of (x, weight, bias), and the same by aten's functions.
OPS = {
    "stem": (lambda *a: so.batch_norm_relu_max_pool3x3s2(*a)[0], aten_layers),
    "bn_relu": (lambda *a: so.batch_norm_relu(*a)[0],
                lambda x, w, b: F.relu(F.batch_norm(x, None, None, w, b, True, 0.0, 1e-5))),
    "bn": (lambda *a: so.batch_norm_relu(*a, relu=False)[0],
           lambda x, w, b: F.batch_norm(x, None, None, w, b, True, 0.0, 1e-5)),
}


def inputs(shape, dtype, fmt, seed=0, scale=3.0, shift=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift).to(dtype)
    weight = (torch.rand(shape[1], generator=gen, dtype=torch.float64) * 2 - 0.5).to(dtype)  # some negative
    bias = torch.randn(shape[1], generator=gen, dtype=torch.float64).to(dtype)
    return x.to(memory_format=FORMATS[fmt]), weight, bias


def value_and_grads(function, x, weight, bias, seed=1):
    x, weight, bias = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    out = function(x, weight, bias)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
    out.backward(grad)
    return out.detach(), x.grad, weight.grad, bias.grad


SHAPES = [(2, 12, 6, 7), (3, 24, 17, 16), (1, 5, 1, 9), (4, 3, 2, 1), (1, 1, 3, 3), (2, 40, 5, 5), (2, 17, 8, 8)]


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_aten_layers(shape, dtype, fmt, op):
    """Output, gradients of x, weight and bias, in value and layout (float64 and float32)."""
    fused, layers = OPS[op]
    x, weight, bias = inputs(shape, dtype, fmt)
    got = value_and_grads(fused, x, weight, bias)
    expected = value_and_grads(layers, *(t.double() for t in (x, weight, bias)))
    assert_close(got, expected, dtype)
    assert got[0].is_contiguous(memory_format=FORMATS[fmt]) and got[1].is_contiguous(memory_format=FORMATS[fmt])


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_statistics_and_windows_match_the_reference(dtype, fmt):
    """The ops' other outputs: the batch mean and biased variance, and the stem's argmax
    offsets (exactly, in float64)."""
    x, weight, bias = inputs((3, 24, 17, 16), dtype, fmt)
    out, mean, var = torch.ops.shufflenet_ops.batch_norm_relu(x, weight, bias, 1e-5, True)
    assert_close((out, mean, var), reference.batch_norm_relu(x.double(), weight.double(), bias.double(), 1e-5, True),
                 dtype)
    out, mean, var, window = OP(x, weight, bias, 1e-5)
    ref = reference.batch_norm_relu_max_pool3x3s2(x.double(), weight.double(), bias.double(), 1e-5)
    assert_close((out, mean, var), ref[:3], dtype)
    if dtype == torch.float64:
        assert torch.equal(window, ref[3])


@pytest.mark.parametrize("op", list(OPS))
def test_strided_input_and_a_large_mean(op):
    """A channel-sliced, column-strided view, and data whose mean is 1e4 standard deviations
    from zero (the shifted sums keep the variance exact)."""
    fused, layers = OPS[op]
    base = torch.randn(2, 30, 9, 14, dtype=torch.float64)
    x = base[:, 3:19, :, ::2] * 1e-3 + 10.0
    weight, bias = torch.rand(16, dtype=torch.float64) + 0.5, torch.randn(16, dtype=torch.float64)
    assert_close(value_and_grads(fused, x, weight, bias), value_and_grads(layers, x, weight, bias), torch.float64)
    x32 = x.float()
    _, _, var, _ = OP(x32, weight.float(), bias.float(), 1e-5)
    torch.testing.assert_close(var.double(), x32.double().var((0, 2, 3), correction=0), rtol=1e-5, atol=0)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_gradcheck(fmt, op):
    x, weight, bias = inputs((2, 5, 5, 6), torch.float64, fmt, seed=3)
    args = tuple(t.requires_grad_() for t in (x, weight, bias))
    assert torch.autograd.gradcheck(OPS[op][0], args)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype, op):
    fused, layers = OPS[op]
    x, weight, bias = inputs((2, 8, 9, 9), torch.float64, "channels_last", seed=4, scale=1.0, shift=0.0)
    got = fused(x.to(dtype), weight.to(dtype), bias.to(dtype))
    assert got.dtype == dtype
    assert_close(got, layers(x, weight, bias), dtype)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_special_values(dtype, fmt, op):
    """NaN and +-inf in x: the same NaN pattern and values as aten's layers."""
    fused, layers = OPS[op]
    x, weight, bias = inputs((2, 4, 7, 7), dtype, fmt, seed=5)
    for value, where in itertools.product((float("nan"), float("inf"), float("-inf")), ((1, 2, 3, 4), (0, 2, 0, 0))):
        bad = x.clone()
        bad[where] = value  # (0, c, 0, 0): the first pixel, the statistics' shift
        got = value_and_grads(fused, bad, weight, bias)
        expected = value_and_grads(layers, bad, weight, bias)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, equal_nan=True, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_blocked_gradients_do_not_leak(dtype, fmt):
    """inf in the output gradient where the ReLU blocked it (output 0) gives no inf or NaN."""
    x, weight, bias = inputs((2, 4, 7, 7), dtype, fmt, seed=5)
    out, mean, var = torch.ops.shufflenet_ops.batch_norm_relu(x, weight, bias, 1e-5, True)
    grad = torch.randn_like(out)
    grad[out == 0] = float("inf")
    got = torch.ops.shufflenet_ops.batch_norm_relu_backward(grad, x, weight, mean, var, out, 1e-5, True)
    assert all(torch.isfinite(t).all() for t in got)
    assert_close(got, so.ops.BY_NAME["batch_norm_relu_backward"].reference(grad, x, weight, mean, var, out, 1e-5, True),
                 dtype)
    out, mean, var, window = OP(x, weight, bias, 1e-5)
    grad = torch.randn_like(out)
    grad[out == 0] = float("inf")
    got = torch.ops.shufflenet_ops.batch_norm_relu_max_pool3x3s2_backward(grad, x, weight, mean, var, window, out, 1e-5)
    expected = so.ops.BY_NAME["batch_norm_relu_max_pool3x3s2_backward"].reference(
        grad, x, weight, mean, var, window, out, 1e-5
    )
    assert all(torch.isfinite(t).all() for t in got)
    assert_close(got, expected, dtype)


@pytest.mark.parametrize("op", list(OPS))
def test_results_do_not_depend_on_the_thread_count(op):
    x, weight, bias = inputs((3, 24, 30, 29), torch.float32, "channels_last", seed=6)

    def run():
        return value_and_grads(OPS[op][0], x, weight, bias)

    results = results_per_thread_count(run)
    assert all(torch.equal(a, b) for result in results[1:] for a, b in zip(results[0], result))


@pytest.mark.slow
def test_portable_loops_without_avx512():
    """SHUFFLENET_OPS_CPU_GEMM=blas turns the AVX-512 loops off: float32 then runs the
    portable loops, with the same window offsets and bitwise the same results, for both ops."""
    code = (
        "import torch, shufflenet_ops as so\n"
        "torch.manual_seed(0)\n"
        "x = torch.randn(3, 21, 13, 12).contiguous(memory_format=torch.channels_last)\n"
        "w, b = torch.rand(21) + 0.5, torch.randn(21)\n"
        "op = torch.ops.shufflenet_ops\n"
        "out = op.batch_norm_relu_max_pool3x3s2(x, w, b, 1e-5)\n"
        "g = torch.randn_like(out[0])\n"
        "grads = op.batch_norm_relu_max_pool3x3s2_backward(g, x, w, *out[1:3], out[3], out[0], 1e-5)\n"
        "bn = op.batch_norm_relu(x, w, b, 1e-5, True)\n"
        "bn_grads = op.batch_norm_relu_backward(x, x, w, bn[1], bn[2], bn[0], 1e-5, True)\n"
        "torch.save((out, grads, bn, bn_grads), __import__('sys').argv[1])\n"
    )
    results = []
    for gemm in ("", "blas"):
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bn_pool_{os.getpid()}_{gemm or 'vector'}.pt")
        env = dict(os.environ, SHUFFLENET_OPS_CPU_GEMM=gemm)
        run = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, env=env, timeout=300,
                             check=False)
        assert run.returncode == 0, run.stderr
        results.append(torch.load(path))
        os.remove(path)
    flat = [[t for part in result for t in part] for result in results]
    assert all(torch.equal(v, p) for v, p in zip(*flat))  # bit for bit (no FMA contraction)


def test_statistics_of_a_channel_with_inf_first():
    """An inf in the first pixel (the sums' shift) gives the channel an inf mean, as torch's,
    not NaN."""
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    x[0, 1, 0, 0] = float("inf")
    _, mean, _ = torch.ops.shufflenet_ops.batch_norm_relu(x, torch.ones(3, dtype=x.dtype), torch.zeros(3, dtype=x.dtype),
                                                         1e-5, True)
    assert mean[1] == float("inf") and torch.isfinite(mean[[0, 2]]).all()


@pytest.mark.parametrize("where,value", [("anywhere", 9), ("anywhere", 255), ("top-left padding", 0),
                                         ("bottom-right padding", 8)])
def test_backward_rejects_window_offsets_outside_the_input(where, value):
    """The backward reads x at each window offset: an offset past 8 or into the padding is
    a ValueError, never an out-of-bounds read."""
    x, weight, bias = inputs((2, 3, 7, 7), torch.float32, "channels_last")
    out, mean, var, window = OP(x, weight, bias, 1e-5)
    bad = window.clone()
    if where == "anywhere":
        bad[1, 2, 1, 1] = value
    else:
        bad[0, 1, 0, 0] = value if where.startswith("top") else window[0, 1, 0, 0]
        bad[0, 1, -1, -1] = value if where.startswith("bottom") else window[0, 1, -1, -1]
    with pytest.raises(ValueError, match="window holds an offset outside"):  # (checked before either loop)
        torch.ops.shufflenet_ops.batch_norm_relu_max_pool3x3s2_backward(
            torch.ones_like(out), x, weight, mean, var, bad, out, 1e-5)
    # The forward's own offsets pass: 7x7 has a border row and column of padding on each side.
    torch.ops.shufflenet_ops.batch_norm_relu_max_pool3x3s2_backward(torch.ones_like(out), x, weight, mean, var, window,
                                                                     out, 1e-5)


def test_raw_ops_name_a_missing_tensor():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(TypeError, match="weight must be a torch.Tensor, got None"):
        torch.ops.shufflenet_ops.batch_norm_relu(x, None, torch.zeros(3), 1e-5, True)


# ------------------------------------------------------------------- the module helpers
BN_RELU_OP = torch.ops.shufflenet_ops.batch_norm_relu.default

# helper name -> (what it runs: layers -> callable of x, the op it calls, its layers)
HELPERS = {
    "stem": (lambda layers: lambda x: batch_norm_relu_max_pool(x, *layers), OP, ("bn", "relu", "pool")),
    "bn_relu": (lambda layers: lambda x: batch_norm_act(x, *layers), BN_RELU_OP, ("bn", "relu")),
    "bn": (lambda layers: lambda x: batch_norm_act(x, *layers), BN_RELU_OP, ("bn",)),
}


def tail_layers(helper, channels, dtype=torch.float64, **bn_options):
    bn = nn.BatchNorm2d(channels, **bn_options).to(dtype)
    if bn.affine:
        with torch.no_grad():
            bn.weight.uniform_(-0.5, 1.5)
            bn.bias.normal_()
    layers = {"bn": bn, "relu": nn.ReLU(inplace=True), "pool": nn.MaxPool2d(3, 2, 1)}
    return [layers[name] for name in HELPERS[helper][2]]


@pytest.mark.parametrize("helper", list(HELPERS))
@pytest.mark.parametrize("options", [{}, {"momentum": None}, {"track_running_stats": False}], ids=str)
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_helper_trains_as_the_layers(fmt, options, helper):
    """Two training steps: outputs, gradients, running statistics and num_batches_tracked
    as the nn.Sequential of the layers has them (momentum, the cumulative average, none
    kept); the op ran."""
    run, op, _ = HELPERS[helper]
    layers = nn.Sequential(*tail_layers(helper, 6, **options))
    twin = nn.Sequential(*tail_layers(helper, 6, **options))
    twin.load_state_dict(layers.state_dict())
    for step in range(2):
        x, _, _ = inputs((3, 6, 9, 10), torch.float64, fmt, seed=10 + step)
        with OpCalls() as calls:
            got = value_and_grads(lambda x, *_: run(list(twin))(x), x, x, x)
        assert op in calls.ops
        expected = value_and_grads(lambda x, *_: layers(x), x, x, x)
        torch.testing.assert_close(got[:2], expected[:2])
        for name, buffer in layers.state_dict().items():
            torch.testing.assert_close(twin.state_dict()[name], buffer, msg=name)
        for a, b in zip(layers.parameters(), twin.parameters()):
            torch.testing.assert_close(b.grad, a.grad)


# (helper, case): a layer the op cannot stand in for, for each helper that has that layer.
AS_WRITTEN = [
    (helper, case)
    for helper, (_, _, names) in HELPERS.items()
    for case, needs in (("eval", "bn"), ("no affine", "bn"), ("bn hook", "bn"), ("global hook", "bn"),
                        ("other pool", "pool"), ("leaky relu", "relu"), ("one value", "bn"))
    if needs in names
]


@pytest.mark.parametrize("helper,case", AS_WRITTEN)
def test_helper_runs_the_layers_as_written(helper, case):
    """Where the op does not compute what the layers do (or they have hooks), the layers run
    as written: the same result as nn.Sequential, and no op call."""
    run, op, names = HELPERS[helper]
    layers = dict(zip(names, tail_layers(helper, 4, affine=case != "no affine")))
    if case == "eval":
        layers["bn"].eval()
    elif case == "bn hook":
        layers["bn"].register_forward_hook(lambda *a: None)
    elif case == "other pool":
        layers["pool"] = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
    elif case == "leaky relu":
        layers["relu"] = nn.LeakyReLU()
    x = torch.randn((1, 4, 1, 1) if case == "one value" else (2, 4, 7, 7), dtype=torch.float64)
    if case == "one value":  # nn.BatchNorm2d's own error
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            run(list(layers.values()))(x)
        return
    expected = nn.Sequential(*layers.values())(x.clone())
    called = []
    hook = (nn.modules.module.register_module_forward_hook(lambda module, *_: called.append(type(module)))
            if case == "global hook" else None)
    try:
        with OpCalls() as calls:
            got = run(list(layers.values()))(x)
    finally:
        if hook is not None:
            hook.remove()
    assert op not in calls.ops
    torch.testing.assert_close(got, expected)
    if case == "global hook":  # every layer was called as a module
        assert called == [type(layer) for layer in layers.values()]


@pytest.mark.parametrize("model", ["v1", "v2"])
def test_models_train_with_the_ops(model):
    """A fused model's training step runs the stem's op (V1, V2) and the BN + ReLU op (V2),
    forward and backward, and trains as the naive model: gradients and running statistics
    (float64)."""
    torch.manual_seed(0)
    build = (lambda fused: shufflenet_v1(3, 0.5, num_classes=10, fused=fused)) if model == "v1" else (
        lambda fused: shufflenet_v2(0.5, num_classes=10, fused=fused))
    naive, fused = build(False).double().train(), build(True).double().train()
    fused.load_state_dict(naive.state_dict())
    x = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    with OpCalls() as calls:
        fused(x).square().sum().backward()
    expected_ops = [OP, torch.ops.shufflenet_ops.batch_norm_relu_max_pool3x3s2_backward.default]
    if model == "v2":
        expected_ops += [BN_RELU_OP, torch.ops.shufflenet_ops.batch_norm_relu_backward.default]
        assert not any(op.name().startswith("aten::native_batch_norm") for op in calls.ops)
    assert all(op in calls.ops for op in expected_ops)
    naive(x).square().sum().backward()
    for (name, a), b in zip(naive.named_parameters(), fused.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    for (name, a), b in zip(naive.named_buffers(), fused.buffers()):
        torch.testing.assert_close(b, a, msg=name)
