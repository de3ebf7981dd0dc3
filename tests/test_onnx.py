"""ONNX export of fused models (shufflenet_ops.onnx) and exporting with a dynamic batch.

Every exported model is made from a batch-1 example with a dynamic batch, run in ONNX
Runtime at batch 1 and 3, and compared with the naive PyTorch model; its graph must hold
standard ONNX operators only (it runs where this package is not installed).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import shufflenet_ops as so
from shufflenet_ops import reference
from shufflenet_ops.models import shufflenet_v1

from _helpers import randomize_batchnorm, requires_extension

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

pytestmark = requires_extension

FP32 = {"rtol": 1e-4, "atol": 1e-4}
BATCH = {"x": {0: torch.export.Dim("n")}}
# Ops of the library that only the backward pass uses; every other op needs a translation.
BACKWARD_OPS = {"conv1x1_shuffle_grad_input", "conv1x1_shuffle_grad_weight", "conv1x1_shuffle_grad_bias", "relu_grad",
                "batch_norm_relu_max_pool3x3s2_backward", "batch_norm_relu_backward"}
TRAINING_OPS = {"batch_norm_relu_max_pool3x3s2", "batch_norm_relu"}  # an inference graph folds the BN instead


def library_ops() -> set[str]:
    """Every op of the shufflenet_ops library, from the registered schemas."""
    prefix = f"{so.ops.spec.LIBRARY}::"
    return {s.name[len(prefix):] for s in torch._C._jit_get_all_schemas() if s.name.startswith(prefix)}


def run_onnx(program: torch.onnx.ONNXProgram, *inputs: torch.Tensor) -> torch.Tensor:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(program.model_proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {arg.name: t.numpy() for arg, t in zip(session.get_inputs(), inputs)}
    return torch.from_numpy(session.run(None, feeds)[0])


def assert_standard_onnx(program: torch.onnx.ONNXProgram) -> None:
    """Only default-domain ONNX operators: no custom domain, no local functions."""
    model = program.model_proto
    onnx.checker.check_model(model)
    domains = {node.domain for node in model.graph.node}
    assert domains <= {"", "ai.onnx"}, f"custom-domain nodes: {domains}"
    assert not model.functions, [f.name for f in model.functions]
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}


def check_export(model: nn.Module, naive: nn.Module, example: torch.Tensor, **kwargs) -> torch.onnx.ONNXProgram:
    """Export ``model`` from ``example`` (batch 1) with a dynamic batch; compare ONNX Runtime
    at batch 1 and 3 with ``naive``."""
    program = so.onnx.export(model, (example,), dynamic_shapes=BATCH, **kwargs)
    assert_standard_onnx(program)
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        x = torch.randn(batch, *example.shape[1:], generator=generator)
        with torch.no_grad():
            expected = naive(x)
        torch.testing.assert_close(run_onnx(program, x), expected, **FP32)
    return program


def model_pair(groups: int, width_mult: float = 1.0) -> tuple[nn.Module, nn.Module]:
    """(fused, naive) ShuffleNet V1 in eval mode with the same non-trivial weights."""
    naive = randomize_batchnorm(shufflenet_v1(groups, width_mult, num_classes=10, fused=False)).eval()
    with torch.no_grad():
        naive.fc.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))  # outputs of order 1
    fused = shufflenet_v1(groups, width_mult, num_classes=10, fused=True).eval()
    fused.load_state_dict(naive.state_dict())
    return fused, naive


def test_translation_table_covers_every_inference_op():
    table = so.onnx.translation_table()
    assert set(so.onnx.INFERENCE_OPS) == library_ops() - BACKWARD_OPS - TRAINING_OPS  # a new op must be classified
    assert {op.name() for op in table} == {f"{so.ops.spec.LIBRARY}::{name}" for name in so.onnx.INFERENCE_OPS}
    assert all(callable(fn) for fn in table.values())


@pytest.mark.parametrize("groups, size", [(3, 64), (8, 32)])
def test_fused_shufflenet_v1_exports_and_matches_naive(groups, size):
    fused, naive = model_pair(groups, width_mult=1.0 if groups == 3 else 0.5)
    program = check_export(fused, naive, torch.randn(1, 3, size, size))
    ops = {(node.op_type) for node in program.model_proto.graph.node}
    assert {"Conv", "Transpose", "MaxPool", "AveragePool"} <= ops


def test_fused_naive_model_exports_and_matches():
    _, naive = model_pair(3, width_mult=0.5)
    fused = so.fuse(naive)
    check_export(fused, naive, torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("stride", [1, 2])
def test_fused_unit_exports_and_matches(stride):
    cin, cout = (48, 48) if stride == 1 else (24, 72)
    naive = randomize_batchnorm(so.ShuffleUnit(cin, cout, 3, stride, fused=False)).eval()
    fused = so.ShuffleUnit(cin, cout, 3, stride, fused=True).eval()
    fused.load_state_dict(naive.state_dict())
    # the table passed by hand, as the README's second form
    program = torch.onnx.export(
        fused, (torch.randn(1, cin, 9, 7),), dynamo=True, dynamic_shapes=BATCH,
        custom_translation_table=so.onnx.translation_table(),
    )
    assert_standard_onnx(program)
    x = torch.randn(3, cin, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(run_onnx(program, x), naive(x), **FP32)


class _Ops(nn.Module):
    """Every inference op once, both conv placements, with and without bias / residual /
    ReLU, a 2-D weight and a shuffle whose groups differ from the conv's."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.w1 = nn.Parameter(torch.randn(24, 4, 1, 1, generator=gen))  # 12 -> 24, groups 3
        self.b1 = nn.Parameter(torch.randn(24, generator=gen))
        self.w2 = nn.Parameter(torch.randn(24, 12, generator=gen))  # 24 -> 24, groups 2, 2-D
        self.w3 = nn.Parameter(torch.randn(12, 6, 1, 1, generator=gen))  # 24 -> 12, groups 4

    def forward(self, x, impl=so):
        y = impl.group_conv1x1_shuffle(x, self.w1, 3, bias=self.b1, relu=True)
        y = impl.shuffle_group_conv1x1(y, self.w2, 2, 6, relu=True, residual=y)
        y = impl.group_conv1x1_shuffle(y, self.w3, 4, shuffle_groups=6)
        y = impl.channel_shuffle(y, 4)
        pools = (so.functional, reference) if impl is so else (reference, reference)
        return torch.cat((pools[0].max_pool3x3s2_relu(y), pools[1].avg_pool3x3s2_relu(-y)), dim=1)


def test_every_op_exports_and_matches_reference():
    model = _Ops().eval()
    program = check_export(model, lambda x: model(x, impl=reference), torch.randn(1, 12, 7, 6))
    # the translations were used: no aten fallback could have produced these from custom ops
    assert sum(node.op_type == "Transpose" for node in program.model_proto.graph.node) == 4


def test_plain_conv_module_exports():
    conv = so.GroupConv1x1Shuffle(12, 24, groups=3, relu=True).eval()
    check_export(conv, lambda x: reference.group_conv1x1_shuffle(x, conv.weight, 3, bias=conv.bias, relu=True),
                 torch.randn(1, 12, 5, 5))


@pytest.mark.parametrize("groups, example_batch", [(3, 1), (8, 1), (3, 2)])
def test_torch_export_dynamic_batch(groups, example_batch):
    """torch.export of the fused model with a dynamic batch, then run at batch 5.

    From a batch-1 example, torch 2.13's torch.export specializes the size-1 dimension of
    any model (a plain nn.Conv2d too) unless sizes are treated size-obliviously, which is
    what torch.onnx.export does; under that setting the fused model must not guard on the
    batch (it did: its channels_last activations made aten's conv guard n <= 1). From a
    batch-2 example the plain torch.export must work."""
    fused, naive = model_pair(groups, 0.5)
    with torch.fx.experimental._config.patch(backed_size_oblivious=example_batch == 1):
        program = torch.export.export(fused, (torch.randn(example_batch, 3, 32, 32),), dynamic_shapes=BATCH)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), naive(x), **FP32)


def test_eager_fused_model_still_runs_channels_last():
    """The export fix leaves eager inference in channels_last (the fast CPU layout)."""
    fused, _ = model_pair(3, 0.5)
    seen = []
    fused.stage2.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        fused(torch.randn(2, 3, 32, 32))
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()


@pytest.mark.parametrize("stride", [1, 2])
def test_shuffle_unit_op_exports_and_matches_reference(stride):
    """The whole-unit inference op (the fused modules use it in eager inference only; export
    traces their per-op path) called directly: its translation, float32, dynamic batch."""
    from shufflenet_ops.ops.shuffle_unit import SHUFFLE_UNIT

    args = [a.float() if isinstance(a, torch.Tensor) else a for a in list(SHUFFLE_UNIT.samples())[2 * (stride - 1)]]
    weights = nn.ParameterList([nn.Parameter(t, requires_grad=False) for t in args[1:7]])  # inference only

    class Unit(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weights = weights

        def forward(self, x):
            return so.shuffle_unit(x, *self.weights, *args[7:])

    model = Unit().eval()
    check_export(model, lambda x: SHUFFLE_UNIT.reference(x, *weights, *args[7:]), args[0][:1].contiguous())


@pytest.mark.parametrize("stride", [1, 2])
def test_shuffle_unit_v2_op_exports_and_matches_reference(stride):
    """The whole V2 unit op called directly (as shuffle_unit above): its translation, float32,
    dynamic batch, a stride-1 unit's Split and a stride-2 unit's two branches."""
    from shufflenet_ops.ops.shuffle_unit_v2 import SHUFFLE_UNIT_V2

    args = [a.float() if isinstance(a, torch.Tensor) else a for a in list(SHUFFLE_UNIT_V2.samples())[2 * (stride - 1)]]
    tensors = [a for a in args[1:11] if a is not None]
    weights = nn.ParameterList([nn.Parameter(t, requires_grad=False) for t in tensors])  # inference only

    def call(function, x, weights):
        unit = list(weights) + [None] * (10 - len(weights))
        return function(x, *unit, args[11])

    class Unit(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weights = weights

        def forward(self, x):
            return call(so.shuffle_unit_v2, x, self.weights)

    model = Unit().eval()
    check_export(model, lambda x: call(SHUFFLE_UNIT_V2.reference, x, weights), args[0][:1].contiguous())
