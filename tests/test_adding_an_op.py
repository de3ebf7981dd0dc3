"""Adding an op takes its schema, its kernel, its spec and its tests, nothing else
(docs/design.md, "Adding an op"): a trivial op, defined here, gets its fake kernel, autograd,
call path, backend choice and the derived checks from ``OpSpec`` alone.

It runs in a subprocess: the op joins the ``shufflenet_ops`` library for that process only
(the registration tests check that the library holds exactly the package's ops).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import shufflenet_ops as so

CODE = textwrap.dedent(
    r'''
    import re
    import torch
    import shufflenet_ops as so
    from shufflenet_ops import _checks
    from shufflenet_ops.ops.spec import OpSpec, register

    def check(x, groups, scale):  # for a real op: csrc/checks.h in C++, _checks.py in its spec
        _checks.check_input(x)
        _checks.check_groups(groups, "groups", x.shape[1], "channels")

    # 1. The schema (for a real op: a line in csrc/ops.cpp) and the CPU kernel (csrc/cpu/).
    def cpu_kernel(x, groups, scale):
        check(x, groups, scale)
        return torch.channel_shuffle(x, groups) * scale

    lib = torch.library.Library("shufflenet_ops", "FRAGMENT")
    lib.define("scaled_shuffle(Tensor x, int groups, float scale) -> Tensor")
    lib.impl("scaled_shuffle", cpu_kernel, "CPU")

    # 2. The spec (for a real op: shufflenet_ops/ops/<family>.py, listed in ops.SPECS).

    def setup_context(ctx, inputs, output):
        x, groups, ctx.scale = inputs
        ctx.inverse_groups = x.shape[1] // groups

    def backward(ctx, grad):
        return SCALED_SHUFFLE.run(ctx.backend, grad, ctx.inverse_groups, ctx.scale), None, None

    def samples():
        x = torch.randn(2, 12, 3, 5, dtype=torch.float64, requires_grad=True)
        yield x, 3, 0.5
        yield x.detach().to(memory_format=torch.channels_last).requires_grad_(), 4, -2.0

    SCALED_SHUFFLE = OpSpec(
        name="scaled_shuffle",
        reference=lambda x, groups, scale: so.reference.channel_shuffle(x, groups) * scale,
        fake=lambda x, groups, scale: torch.empty_like(x),
        check=check,
        setup_context=setup_context,
        backward=backward,
        samples=samples,
        bad_calls=(("groups", lambda a: (a[0], 5, 1.0), ValueError, r"channels \(12\) must be divisible by groups \(5\)"),),
    )
    register(SCALED_SHUFFLE)

    # 3. What the package's tests derive from every spec, here for the new op.
    op = torch.ops.shufflenet_ops.scaled_shuffle
    for args in SCALED_SHUFFLE.samples():
        torch.library.opcheck(op, args)
        torch.testing.assert_close(op(*args), SCALED_SHUFFLE.reference(*args))
        for backend in ("cpp", "reference"):
            with so.backend(backend):
                x = args[0].detach().requires_grad_()
                assert torch.autograd.gradcheck(lambda x: SCALED_SHUFFLE(x, *args[1:]), (x,))
                assert torch.autograd.gradgradcheck(lambda x: SCALED_SHUFFLE(x, *args[1:]), (x,))
    for _, make, error, message in SCALED_SHUFFLE.bad_calls:
        bad = make(next(iter(SCALED_SHUFFLE.samples())))
        for call in (SCALED_SHUFFLE.check, op, SCALED_SHUFFLE):
            try:
                call(*bad)
            except error as e:
                assert re.search(message, str(e)), e
            else:
                raise AssertionError(f"{call} accepted a bad call")
    compiled = torch.compile(lambda x: SCALED_SHUFFLE(x, 3, 2.0).sum(), fullgraph=True, backend="aot_eager")
    x = torch.randn(1, 6, 2, 2)
    torch.testing.assert_close(compiled(x), (torch.channel_shuffle(x, 3) * 2).sum())
    print("OK")
    '''
)


@pytest.mark.skipif(not so._extension.available(), reason="the C++ extension defines the library")
def test_a_new_op_needs_only_its_schema_kernel_and_spec():
    env = {k: v for k, v in os.environ.items() if k not in ("SHUFFLENET_OPS_BACKEND", "TRITON_INTERPRET")}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout[-3000:] + out.stderr[-6000:]
