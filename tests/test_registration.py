"""Op registration, from every op's spec: opcheck and the C++ kernel vs the reference on the
spec's samples; torch.compile(fullgraph=True), backend selection, the package without its
extension, and a property test over random valid shapes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._prims_common import suggest_memory_format

import shufflenet_ops as so
from shufflenet_ops import reference

from _helpers import assert_close, requires_extension

pytestmark = requires_extension
ops = torch.ops.shufflenet_ops


SAMPLES = [(spec, args) for spec in so.ops.SPECS for args in spec.samples()]
SAMPLE_IDS = [f"{spec.name}-{i}" for i, (spec, _) in enumerate(SAMPLES)]


@pytest.mark.parametrize("spec,args", SAMPLES, ids=SAMPLE_IDS)
def test_opcheck(spec, args):
    torch.library.opcheck(getattr(ops, spec.name), args)


@pytest.mark.parametrize("spec,args", SAMPLES, ids=SAMPLE_IDS)
def test_cpp_kernel_matches_reference(spec, args):
    """Every op's C++ kernel against its spec's reference (float64), in value and layout."""
    got = getattr(ops, spec.name)(*args)
    expected = spec.reference(*args)
    assert_close(got, expected, torch.float64)
    first = got[0] if isinstance(got, tuple) else got
    if first.dim() == 4:
        assert first.is_contiguous(memory_format=suggest_memory_format(args[0])), "output not in the input's layout"


def test_every_schema_op_has_a_spec_and_a_table_entry():
    schema = {s.name for s in torch._C._jit_get_all_schemas() if s.name.startswith("shufflenet_ops::")}
    assert schema == {spec.qualname for spec in so.ops.SPECS}
    protocol = {name for name in vars(so.ops.KernelTable) if not name.startswith("_")}
    assert protocol == {spec.name for spec in so.ops.SPECS}
    assert all(any(True for _ in spec.samples()) for spec in so.ops.SPECS), "a spec without samples"


def test_torch_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()

    def block(x, w1, b1, w2):
        y = so.group_conv1x1_shuffle(x, w1, 3, bias=b1, relu=True)
        y = so.channel_shuffle(y, 4)
        return so.shuffle_group_conv1x1(y, w2, 3, 8)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 5, 5, generator=gen, requires_grad=True)
    w1 = torch.randn(24, 4, 1, 1, generator=gen, requires_grad=True)
    b1 = torch.randn(24, generator=gen, requires_grad=True)
    w2 = torch.randn(12, 8, 1, 1, generator=gen, requires_grad=True)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    y = compiled(x, w1, b1, w2)
    y.square().sum().backward()
    grads = [t.grad.clone() for t in (x, w1, b1, w2)]
    for t in (x, w1, b1, w2):
        t.grad = None
    with so.backend("reference"):
        y_ref = block(x, w1, b1, w2)
    y_ref.square().sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    for g, t in zip(grads, (x, w1, b1, w2)):
        torch.testing.assert_close(g, t.grad, rtol=1e-4, atol=1e-4)


def test_torch_compile_inductor_fullgraph():
    torch._dynamo.reset()
    x = torch.randn(2, 24, 4, 4)
    w = torch.randn(48, 8, 1, 1)
    b = torch.randn(48)
    fn = torch.compile(lambda x: so.group_conv1x1_shuffle(x, w, 3, bias=b, relu=True).sum(1), fullgraph=True)
    torch.testing.assert_close(fn(x), reference.group_conv1x1_shuffle(x, w, 3, bias=b, relu=True).sum(1))


# ----------------------------------------------------------- backend selection
def test_backend_context_manager_and_env_var(monkeypatch):
    calls = []
    real = reference.group_conv1x1_shuffle

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(reference, "group_conv1x1_shuffle", spy)
    x, w = torch.randn(1, 6, 2, 2), torch.randn(6, 2, 1, 1)
    so.group_conv1x1_shuffle(x, w, 3)
    assert calls == []  # auto on CPU: the C++ kernel
    with so.backend("reference"):
        so.group_conv1x1_shuffle(x, w, 3)
        with so.backend("cpp"):  # innermost wins
            so.group_conv1x1_shuffle(x, w, 3)
    assert calls == [1]
    monkeypatch.setenv("SHUFFLENET_OPS_BACKEND", "reference")  # read at call time
    so.group_conv1x1_shuffle(x, w, 3)
    assert calls == [1, 1]
    with so.backend("auto"):  # the context manager overrides the environment
        so.group_conv1x1_shuffle(x, w, 3)
    assert calls == [1, 1]


def test_double_backward_fails_loudly():
    x = torch.randn(1, 6, 2, 2, requires_grad=True)
    w = torch.randn(6, 2, 1, 1, requires_grad=True)
    (gx,) = torch.autograd.grad(so.group_conv1x1_shuffle(x, w, 3).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


def test_gradient_penalty_through_the_fused_conv_fails_loudly():
    """A second-order term through the weight's gradient: an error, never a detached
    (silently wrong) gradient; the reference backend computes it."""
    x = torch.randn(1, 12, 3, 3, dtype=torch.float64)
    w = torch.randn(12, 4, 1, 1, dtype=torch.float64, requires_grad=True)

    def penalised_loss():
        loss = so.group_conv1x1_shuffle(x, w, 3, shuffle_groups=1, relu=True).pow(2).sum()
        (gw,) = torch.autograd.grad(loss, w, create_graph=True)
        return loss + gw.pow(2).sum()

    with pytest.raises(RuntimeError, match="double backward"):
        penalised_loss().backward()
    with so.backend("reference"):
        assert torch.autograd.gradgradcheck(lambda w: so.group_conv1x1_shuffle(x, w, 3, relu=True), (w,))


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_every_public_op_keeps_channels_last(backend):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 5, 7, generator=gen).contiguous(memory_format=torch.channels_last)
    w = torch.randn(24, 4, 1, 1, generator=gen)
    with so.backend(backend):
        outputs = {
            "group_conv1x1_shuffle": so.group_conv1x1_shuffle(x, w, 3),
            "shuffle_group_conv1x1": so.shuffle_group_conv1x1(x, w, 3, 4),
            "channel_shuffle": so.channel_shuffle(x, 3),
            "max_pool3x3s2_relu": so.max_pool3x3s2_relu(x),
            "avg_pool3x3s2_relu": so.avg_pool3x3s2_relu(x),
        }
    for name, y in outputs.items():
        assert y.is_contiguous(memory_format=torch.channels_last), name


def test_channel_shuffle_without_channels_is_differentiable():
    x = torch.randn(2, 0, 3, 3, requires_grad=True)
    so.channel_shuffle(x, 3).sum().backward()
    assert x.grad.shape == x.shape


def test_torch_ops_are_differentiable_directly():
    x = torch.randn(2, 12, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(24, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: ops.group_conv1x1_shuffle(x, w, None, 3, 3, False), (x, w))
    assert torch.autograd.gradcheck(lambda x, w: ops.shuffle_group_conv1x1(x, w, None, 3, 4, False), (x, w))


def test_without_extension_reference_works_and_cpp_says_how_to_build():
    """Simulate a checkout where the C++ extension was never built."""
    code = (
        "import sys, warnings; sys.modules['shufflenet_ops._C'] = None\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import torch, shufflenet_ops as so\n"
        "assert any('pip install --no-build-isolation' in str(m.message) for m in w), [str(m.message) for m in w]\n"
        "x, wt = torch.randn(1, 6, 2, 2), torch.randn(6, 2, 1, 1)\n"
        "with so.backend('reference'):\n"
        "    y = so.group_conv1x1_shuffle(x, wt, 3)\n"
        "assert torch.allclose(y, torch.channel_shuffle(torch.nn.functional.conv2d(x, wt, groups=3), 3))\n"
        "try:\n"
        "    so.group_conv1x1_shuffle(x, wt, 3)\n"
        "except RuntimeError as e:\n"
        "    assert 'pip install --no-build-isolation' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error without the extension')\n"
        "print('OK')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SHUFFLENET_OPS_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr


# ------------------------------------------------------------ property test
@st.composite
def conv_problems(draw):
    groups = draw(st.integers(1, 8))
    cin = groups * draw(st.integers(1, 6))
    cout = groups * draw(st.integers(1, 6))
    placement = draw(st.sampled_from(["output", "input"]))
    channels = cout if placement == "output" else cin
    shuffle = draw(st.sampled_from([s for s in range(1, channels + 1) if channels % s == 0]))
    return dict(
        placement=placement,
        groups=groups,
        cin=cin,
        cout=cout,
        shuffle=shuffle,
        batch=draw(st.integers(0, 3)),
        height=draw(st.integers(1, 9)),
        width=draw(st.integers(1, 9)),
        bias=draw(st.booleans()),
        relu=draw(st.booleans()),
        channels_last=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=60, deadline=None)
@given(conv_problems())
def test_property_random_shapes_match_reference(p):
    gen = torch.Generator().manual_seed(p["seed"])
    x = torch.randn(p["batch"], p["cin"], p["height"], p["width"], generator=gen, dtype=torch.float64)
    if p["channels_last"]:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(p["cout"], p["cin"] // p["groups"], 1, 1, generator=gen, dtype=torch.float64)
    b = torch.randn(p["cout"], generator=gen, dtype=torch.float64) if p["bias"] else None
    leaves = [t.clone().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]

    def run(impl, x, w, b=None):
        if p["placement"] == "output":
            return impl.group_conv1x1_shuffle(x, w, p["groups"], bias=b, shuffle_groups=p["shuffle"], relu=p["relu"])
        return impl.shuffle_group_conv1x1(x, w, p["groups"], p["shuffle"], bias=b, relu=p["relu"])

    y, y_ref = run(so, *leaves), run(reference, *ref_leaves)
    assert_close(y, y_ref, torch.float64)
    # The output follows the input's memory format as torch reads it ((N, 1, H, W) is both).
    assert y.is_contiguous(memory_format=suggest_memory_format(x))
    go = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    y.backward(go)
    y_ref.backward(go)
    for a, r in zip(leaves, ref_leaves):
        assert_close(a.grad, r.grad, torch.float64)
