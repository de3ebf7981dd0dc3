"""group_conv1x1_shuffle's interleaved output (``interleave_with``): y = interleave(a, f), f the
conv's own output, written by the conv into y's odd channels (issue 16, item 1).

Every path against the float64 reference (``reference.group_conv1x1_shuffle``, which builds y
with cat and the shuffle by 2): the C++ kernel in both layouts and odd shapes, the autograd
formula (gradcheck, the passthrough's dense gradient), opcheck, torch.compile, bad inputs,
the Triton kernel under the interpreter (a subprocess, as tests/test_triton.py runs it), and
ShuffleNet V2's per-op unit path, which now dispatches no interleave, stack or cat.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import shufflenet_ops as so
from shufflenet_ops import reference

from _helpers import FORMATS, OpCalls, assert_close, requires_extension

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _inputs(n, cin, cout, h, w, groups, fmt, dtype, *, bias=True, residual=False, seed=0, grad=False):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)
        if len(shape) == 4:
            t = t.contiguous(memory_format=FORMATS[fmt])
        return t.requires_grad_(grad)

    x = randn(n, cin, h, w)
    weight = randn(cout, cin // groups, 1, 1)
    b = randn(cout) if bias else None
    r = randn(n, cout, h, w) if residual else None
    a = randn(n, cout, h, w)
    return x, weight, b, r, a


def _expected(x, weight, b, groups, s, relu, r, a):
    f64 = [None if t is None else t.detach().double() for t in (x, weight, b, r, a)]
    x, weight, b, r, a = f64
    return reference.group_conv1x1_shuffle(x, weight, groups, bias=b, shuffle_groups=s, relu=relu, residual=r,
                                           interleave_with=a)


def _format_of(t):
    return "channels_last" if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() else "nchw"


# (n, cin, cout, h, w, groups, shuffle_groups): odd channel counts, 1x1 and 7x9 maps, batch
# 1 and 3, an ungrouped conv with and without an output shuffle, grouped with s = g and s != g.
CASES = [
    (1, 3, 3, 1, 1, 1, 1),
    (3, 3, 3, 7, 9, 1, 1),
    (3, 6, 9, 7, 9, 3, 3),
    (1, 12, 24, 7, 9, 3, 8),
    (3, 8, 6, 1, 1, 2, 3),
    (2, 5, 10, 4, 3, 1, 2),
]


@requires_extension
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("relu,bias,residual", [(True, True, False), (False, False, False), (True, True, True),
                                                (False, True, True)])
def test_cpp_matches_reference(case, fmt, dtype, relu, bias, residual):
    n, cin, cout, h, w, groups, s = case
    x, weight, b, r, a = _inputs(n, cin, cout, h, w, groups, fmt, dtype, bias=bias, residual=residual)
    with so.backend("cpp"):
        y = so.group_conv1x1_shuffle(x, weight, groups, bias=b, shuffle_groups=s, relu=relu, residual=r,
                                     interleave_with=a)
    assert y.shape == (n, 2 * cout, h, w) and y.dtype == dtype
    assert _format_of(y) == _format_of(x) or h * w == 1
    assert_close(y, _expected(x, weight, b, groups, s, relu, r, a), dtype)
    assert torch.equal(y[:, 0::2], a), "the passthrough channels must be copied bit for bit"
    # the odd channels are exactly what the op computes without interleave_with
    with so.backend("cpp"):
        f = so.group_conv1x1_shuffle(x, weight, groups, bias=b, shuffle_groups=s, relu=relu, residual=r)
    torch.testing.assert_close(y[:, 1::2], f, rtol=0, atol=0)


@requires_extension
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channel_slices_are_read_in_place(fmt, dtype):
    """x and interleave_with as channel slices (a V2 unit's x.chunk(2, 1)), x's format kept."""
    gen = torch.Generator().manual_seed(3)
    whole = torch.randn(3, 16, 7, 9, generator=gen).to(dtype).contiguous(memory_format=FORMATS[fmt])
    a, x = whole.chunk(2, 1)
    weight = torch.randn(8, 8, 1, 1, generator=gen).to(dtype)
    b = torch.randn(8, generator=gen).to(dtype)
    with so.backend("cpp"):
        y = so.group_conv1x1_shuffle(x, weight, 1, bias=b, shuffle_groups=1, relu=True, interleave_with=a)
    assert _format_of(y) == fmt
    assert_close(y, _expected(x, weight, b, 1, 1, True, None, a), dtype)
    assert torch.equal(y[:, 0::2], a)


@requires_extension
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_passthrough_of_another_layout(fmt):
    """interleave_with in the other memory format (or a transposed view): y stays in x's."""
    x, weight, b, _, a = _inputs(2, 4, 6, 5, 3, 2, fmt, torch.float32)
    other = "nchw" if fmt == "channels_last" else "channels_last"
    a = a.contiguous(memory_format=FORMATS[other])
    y = so.group_conv1x1_shuffle(x, weight, 2, bias=b, relu=True, interleave_with=a)
    assert _format_of(y) == fmt
    assert torch.equal(y[:, 0::2], a)
    assert_close(y, _expected(x, weight, b, 2, 2, True, None, a), torch.float32)


@requires_extension
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_special_values_pass_through_untouched(fmt):
    """NaN and +-inf in the passthrough are copied, not ReLU'd; the conv half keeps torch's
    ReLU (NaN stays NaN, -inf becomes 0)."""
    x, weight, b, _, a = _inputs(2, 4, 4, 3, 5, 1, fmt, torch.float32)
    a = a.detach().clone()
    a[0, 0, 0, 0], a[0, 1, 1, 1], a[1, 3, 2, 4], a[1, 2, 0, 0] = float("nan"), float("inf"), -float("inf"), -1.0
    x = x.detach().clone()
    x[1, :, 1, 2] = float("nan")
    y = so.group_conv1x1_shuffle(x, weight, 1, bias=b, shuffle_groups=1, relu=True, interleave_with=a)
    torch.testing.assert_close(y[:, 0::2], a, equal_nan=True, rtol=0, atol=0)
    assert y[1, 1::2, 1, 2].isnan().all()
    assert (y[:, 1::2].nan_to_num(0.0) >= 0).all()
    torch.testing.assert_close(y, _expected(x, weight, b, 1, 1, True, None, a).float(), equal_nan=True)


@requires_extension
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("relu,residual,bias", [(True, True, True), (False, False, True), (True, False, False)])
@pytest.mark.parametrize("groups,s", [(1, 1), (3, 3), (3, 2)])
def test_gradcheck(fmt, relu, residual, bias, groups, s):
    x, weight, b, r, a = _inputs(2, 6, 6, 3, 5, groups, fmt, torch.float64, bias=bias, residual=residual, grad=True)

    def run(x, weight, b, r, a):
        return so.group_conv1x1_shuffle(x, weight, groups, bias=b, shuffle_groups=s, relu=relu, residual=r,
                                        interleave_with=a)

    assert torch.autograd.gradcheck(run, (x, weight, b, r, a))


@requires_extension
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_backward_matches_reference_and_gradients_are_dense(fmt, dtype):
    x, weight, b, r, a = _inputs(3, 6, 9, 7, 9, 3, fmt, dtype, residual=True, grad=True)
    go = torch.randn(3, 18, 7, 9, dtype=dtype).contiguous(memory_format=FORMATS[fmt])
    y = so.group_conv1x1_shuffle(x, weight, 3, bias=b, relu=True, residual=r, interleave_with=a)
    grads = torch.autograd.grad(y, (x, weight, b, r, a), go)
    leaves = [t.detach().double().requires_grad_() for t in (x, weight, b, r, a)]
    expected = torch.autograd.grad(_expected_differentiable(*leaves), leaves, go.double())
    for name, got, want in zip(("x", "weight", "bias", "residual", "interleave_with"), grads, expected):
        assert_close(got, want, dtype, name)
    grad_a = grads[4]
    # the passthrough's gradient is a dense tensor in the gradient's memory format, not a
    # strided view of it (a ReLU backward before it would walk every other channel)
    assert grad_a.is_contiguous(memory_format=FORMATS[fmt])
    assert torch.equal(grad_a, go[:, 0::2])


def _expected_differentiable(x, weight, b, r, a):
    return reference.group_conv1x1_shuffle(x, weight, 3, bias=b, shuffle_groups=3, relu=True, residual=r,
                                           interleave_with=a)


@requires_extension
def test_only_the_passthrough_needs_a_gradient():
    x, weight, b, _, a = _inputs(2, 4, 4, 3, 5, 1, "channels_last", torch.float64)
    a.requires_grad_()
    y = so.group_conv1x1_shuffle(x, weight, 1, bias=b, relu=True, interleave_with=a)
    (grad_a,) = torch.autograd.grad(y.sum(), (a,))
    assert torch.equal(grad_a, torch.ones_like(a))


@requires_extension
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_opcheck_with_slices(fmt):
    whole = torch.randn(3, 10, 7, 9, dtype=torch.float64).contiguous(memory_format=FORMATS[fmt])
    a, x = whole.chunk(2, 1)
    weight = torch.randn(5, 5, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    x, a = x.detach().requires_grad_(), a.detach().requires_grad_()
    torch.library.opcheck(torch.ops.shufflenet_ops.group_conv1x1_shuffle.default, (x, weight, b, 1, 1, True, None, a))


@requires_extension
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_torch_compile_forward_and_backward(fmt):
    x, weight, b, _, a = _inputs(2, 6, 6, 3, 5, 3, fmt, torch.float64, grad=True)

    def run(x, weight, b, a):
        return so.group_conv1x1_shuffle(x, weight, 3, bias=b, relu=True, interleave_with=a)

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    y = compiled(x, weight, b, a)
    expected = run(x, weight, b, a)
    torch.testing.assert_close(y, expected)
    go = torch.randn_like(expected)
    torch.testing.assert_close(torch.autograd.grad(y, (x, weight, b, a), go),
                               torch.autograd.grad(expected, (x, weight, b, a), go))


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "reference"])
@pytest.mark.parametrize("bad,error,message", [
    (lambda a: a[:, :3], ValueError, r"interleave_with must have the conv output's shape \(2, 6, 3, 5\), got .2, 3, 3, 5."),
    (lambda a: a[0], ValueError, r"interleave_with must have the conv output's shape"),
    (lambda a: a.double(), TypeError, r"interleave_with dtype torch.float64 does not match input dtype torch.float32"),
    (lambda a: a.to("meta"), RuntimeError, r"interleave_with is on meta but input is on cpu"),
    (lambda a: a.tolist(), TypeError, r"interleave_with must be a torch.Tensor or None, got list"),
])
def test_bad_interleave_with(backend, bad, error, message):
    x, weight, b, _, a = _inputs(2, 4, 6, 3, 5, 2, "nchw", torch.float32)
    with so.backend(backend), pytest.raises(error, match=message):
        so.group_conv1x1_shuffle(x, weight, 2, bias=b, interleave_with=bad(a))


@requires_extension
@pytest.mark.parametrize("bad,error,message", [
    (lambda a: a[:, :3], ValueError, r"interleave_with must have the conv output's shape \(2, 6, 3, 5\), got \[2, 3, 3, 5\]"),
    (lambda a: a.double(), TypeError, r"interleave_with dtype Double does not match input dtype Float"),
])
def test_cpp_op_checks_interleave_with(bad, error, message):
    x, weight, b, _, a = _inputs(2, 4, 6, 3, 5, 2, "nchw", torch.float32)
    with pytest.raises(error, match=message):
        torch.ops.shufflenet_ops.group_conv1x1_shuffle(x, weight, b, 2, 2, False, None, bad(a))


# ------------------------------------------------------------------- ShuffleNet V2
def _v2_pair(stride, fmt):
    from shufflenet_ops.models.shufflenet_v2 import InvertedResidual

    from _helpers import randomize_batchnorm

    inp = 24 if stride == 2 else 58
    torch.manual_seed(0)
    naive = randomize_batchnorm(InvertedResidual(inp, 58, stride, fused=False)).eval().double()
    fused = InvertedResidual(inp, 58, stride, fused=True).eval().double()
    fused.load_state_dict(naive.state_dict())
    x = torch.randn(2, inp, 9, 7, dtype=torch.float64).contiguous(memory_format=FORMATS[fmt])
    return naive, fused, x


@requires_extension
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_inverted_residual_per_op_path_writes_the_unit_output_in_the_conv(stride, fmt):
    """Eval with a gradient (the per-op path): branch2's last conv writes the unit's output; no
    interleave (stack + copy), cat or shuffle runs, and values and gradients match the naive
    unit (chunk, cat, reshape-transpose shuffle)."""
    naive, fused, x = _v2_pair(stride, fmt)
    x_naive = x.clone().requires_grad_()
    x = x.requires_grad_()
    with OpCalls() as calls:
        y = fused(x)
    names = [str(op) for op in calls.ops]
    conv_op = torch.ops.shufflenet_ops.group_conv1x1_shuffle.default
    assert conv_op in calls.ops
    assert not [n for n in names if any(k in n for k in ("stack", "cat", "channel_shuffle", "shuffle_unit"))], names
    expected = naive(x_naive)
    torch.testing.assert_close(y, expected)
    go = torch.randn_like(expected)
    with OpCalls() as backward_calls:
        y.backward(go)
    # the backward splits the unit's gradient with one copy (deinterleave), no stack; a
    # stride-1 unit's chunk still has its own backward (torch's cat of the halves' gradients)
    backward_names = [str(op) for op in backward_calls.ops]
    assert not [n for n in backward_names if "stack" in n], backward_names
    assert backward_names.count("aten.cat.default") == (1 if stride == 1 else 0), backward_names
    expected.backward(go)
    torch.testing.assert_close(x.grad, x_naive.grad)
    for (name, p), q in zip(fused.named_parameters(), naive.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


@requires_extension
@pytest.mark.parametrize("relu,residual", [(True, False), (False, True)])
def test_onnx_export_interleaves_with_standard_operators(relu, residual):
    """The translation: Conv, the epilogue, then Concat and the shuffle by 2; ONNX Runtime
    against the reference at batch 1 and 3 (dynamic batch)."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    gen = torch.Generator().manual_seed(0)
    weight, b = torch.randn(6, 2, 1, 1, generator=gen), torch.randn(6, generator=gen)

    class Unit(torch.nn.Module):  # the V2 unit's ending: x1 passes through, f(x2) interleaved
        def forward(self, x):
            a, v = x[:, :6], x[:, 6:]
            r = a * 0.5 if residual else None
            return torch.ops.shufflenet_ops.group_conv1x1_shuffle(v, weight, b, 3, 3, relu, r, a)

    example = torch.randn(1, 12, 5, 3, generator=gen)
    program = so.onnx.export(Unit().eval(), (example,), dynamic_shapes={"x": {0: torch.export.Dim("n")}})
    assert {node.domain for node in program.model_proto.graph.node} <= {"", "ai.onnx"}
    assert "Concat" in {node.op_type for node in program.model_proto.graph.node}
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 12, 5, 3, generator=gen)
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        a, v = x[:, :6], x[:, 6:]
        expected = reference.group_conv1x1_shuffle(v, weight, 3, bias=b, shuffle_groups=3, relu=relu,
                                                   residual=a * 0.5 if residual else None, interleave_with=a)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- Triton
if INTERPRETING:
    @pytest.mark.parametrize("fmt", list(FORMATS))
    @pytest.mark.parametrize("relu,residual", [(True, False), (False, True)])
    @pytest.mark.parametrize("case", [(2, 4, 6, 3, 5, 2, 2), (1, 3, 3, 1, 1, 1, 1)], ids=str)
    def test_triton_interpreted(fmt, relu, residual, case):
        n, cin, cout, h, w, groups, s = case
        x, weight, b, r, a = _inputs(n, cin, cout, h, w, groups, fmt, torch.float64, residual=residual, grad=True)
        with so.backend("triton"):
            y = so.group_conv1x1_shuffle(x, weight, groups, bias=b, shuffle_groups=s, relu=relu, residual=r,
                                         interleave_with=a)
            go = torch.randn_like(y)
            leaves = [t for t in (x, weight, b, r, a) if t is not None]
            grads = torch.autograd.grad(y, leaves, go)
        assert _format_of(y) == _format_of(x) or h * w == 1
        assert torch.equal(y[:, 0::2], a)
        ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
        full = dict(zip(("x", "weight", "b", "r", "a"), [x, weight, b, r, a]))
        mapping = iter(ref_leaves)
        ref = {k: (None if v is None else next(mapping)) for k, v in full.items()}
        expected = reference.group_conv1x1_shuffle(ref["x"], ref["weight"], groups, bias=ref["b"], shuffle_groups=s,
                                                   relu=relu, residual=ref["r"], interleave_with=ref["a"])
        assert_close(y, expected, torch.float64)
        for got, want in zip(grads, torch.autograd.grad(expected, ref_leaves, go)):
            assert_close(got, want, torch.float64)
        # the launcher called directly (no autograd): the same bits as through the op
        from shufflenet_ops.triton.conv_forward import group_conv1x1_shuffle as launcher

        direct = launcher(x.detach(), weight.detach(), b.detach(), groups, s, relu,
                          None if r is None else r.detach(), a.detach())
        assert torch.equal(direct, y.detach())
elif HAS_TRITON:
    def test_triton_interpreter_subprocess():
        """The Triton tests of this file, on CPU under TRITON_INTERPRET=1, in a subprocess."""
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        env.pop("SHUFFLENET_OPS_BACKEND", None)
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "triton_interpreted"],
            capture_output=True, text=True, env=env, timeout=900, check=False,
        )
        assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:]
        assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
