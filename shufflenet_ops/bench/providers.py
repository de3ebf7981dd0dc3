"""Every implementation the benchmark compares, defined once.

Layer level (one 1x1 conv as the real layer computes it, see ``LayerProblem``):

- ``fused_cpp`` / ``fused_triton``: this package's one-pass kernel, per backend present
  (C++ on CPU, Triton on CUDA): ``group_conv1x1_shuffle``, or ``shuffle_group_conv1x1`` for
  a problem whose shuffle is on its input (``LayerProblem.placement``);
- ``eager``: the unfused code, ``shufflenet_ops.reference`` (conv2d with bias, then the
  channel shuffle copy, then ReLU; the input shuffle's copy first), NCHW whatever the run's
  layout;
- ``eager_channels_last``: the same code on channels_last tensors;
- ``compile``: ``torch.compile`` of the same unfused code (max-autotune on GPU);
- ``dense``: one dense 1x1 conv whose weight is the block-diagonal expansion of the
  grouped weight with its rows (or, input shuffle, columns) permuted by the shuffle, so it computes the same output in
  one pass at g times the FLOPs (the "just use a GEMM" alternative).

Unit and model level: ``fused`` (``fused=True`` modules), ``naive`` (``fused=False``, the
same weights), ``fuse_naive`` (``shufflenet_ops.fuse`` of the naive model, whole models only),
``compile_naive`` and ``compile_fused`` (``torch.compile`` of each), and at the
model level the deployment peers ``onnxruntime`` and ``openvino``: the naive model exported to
ONNX (``bench/deploy.py``).

``DISPLAY`` gives each provider the name tables and plots show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .. import _extension, functional, reference
from .._backend import backend
from ..modules import shuffle_permutation
from .problem import LayerProblem


@dataclass(frozen=True)
class Setup:
    """Run-wide settings every provider builds its inputs with."""

    device: torch.device
    dtype: torch.dtype
    memory_format: torch.memory_format
    compile_mode: str  # torch.compile mode, e.g. "default" or "max-autotune"


LayerFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class LayerProvider:
    name: str
    description: str
    traffic: str  # the bytes_model kind
    make: Callable[[LayerProblem, Setup], LayerFn]  # (x, weight, bias) -> y
    fused: bool = False
    compiled: bool = False
    memory_format: torch.memory_format | None = None  # forces this input layout (None: the run's)
    dense_weight: bool = False  # takes the block-diagonal dense weight instead
    available: Callable[[torch.device], bool] = lambda device: True


def _layer_fn(module, p: LayerProblem) -> LayerFn:
    """``(x, weight, bias) -> y`` of ``p`` by ``module`` (``functional`` or ``reference``):
    the op of ``p``'s placement."""
    if p.placement == "in":
        return lambda x, weight, bias: module.shuffle_group_conv1x1(
            x, weight, p.groups, p.shuffle_groups, bias=bias, relu=p.relu)
    return lambda x, weight, bias: module.group_conv1x1_shuffle(
        x, weight, p.groups, bias=bias, shuffle_groups=p.shuffle_groups, relu=p.relu)


def _fused(backend_name: str) -> Callable[[LayerProblem, Setup], LayerFn]:
    def make(p: LayerProblem, setup: Setup) -> LayerFn:
        op = _layer_fn(functional, p)

        def run(x, weight, bias):
            with backend(backend_name):
                return op(x, weight, bias)

        return run

    return make


def _unfused(p: LayerProblem, setup: Setup) -> LayerFn:
    return _layer_fn(reference, p)


def _compiled_unfused(p: LayerProblem, setup: Setup) -> LayerFn:
    # dynamic=False: one static graph per shape, as a user compiling a fixed model gets.
    return torch.compile(_unfused(p, setup), mode=setup.compile_mode, dynamic=False)


def _dense(p: LayerProblem, setup: Setup) -> LayerFn:
    def run(x, dense_weight, dense_bias):
        y = F.conv2d(x, dense_weight, dense_bias)
        return F.relu(y) if p.relu else y

    return run


def dense_block_diagonal(
    weight: torch.Tensor, bias: torch.Tensor | None, groups: int, shuffle_groups: int, placement: str = "out"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The dense ``(Cout, Cin, 1, 1)`` weight equal to the grouped conv with its shuffle:
    block-diagonal; ``placement="out"`` (shuffle after the conv): rows and bias permuted by
    the shuffle; ``"in"`` (shuffle before it): columns moved to the input channels they read,
    ``conv(shuffle(x), D) == conv(x, D')`` with ``D'[:, perm] = D``."""
    cout, k = weight.shape[0], weight.shape[1]
    n = cout // groups
    dense = weight.new_zeros(cout, k * groups, 1, 1)
    for i in range(groups):
        dense[i * n:(i + 1) * n, i * k:(i + 1) * k] = weight[i * n:(i + 1) * n]
    if placement == "in":
        moved = torch.empty_like(dense)
        moved[:, shuffle_permutation(k * groups, shuffle_groups, weight.device)] = dense
        return moved, None if bias is None else bias.contiguous()
    order = shuffle_permutation(cout, shuffle_groups, weight.device)
    return dense[order].contiguous(), None if bias is None else bias[order].contiguous()


def _on_cpu_with_extension(device: torch.device) -> bool:
    return device.type == "cpu" and _extension.available()


def _on_cuda_with_triton(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


LAYER_PROVIDERS: tuple[LayerProvider, ...] = (
    LayerProvider("fused_cpp", "fused C++ kernel (one pass)", "fused", _fused("cpp"), fused=True,
                  available=_on_cpu_with_extension),
    LayerProvider("fused_triton", "fused Triton kernel (one pass)", "fused", _fused("triton"), fused=True,
                  available=_on_cuda_with_triton),
    LayerProvider("eager", "conv2d + channel_shuffle + relu, NCHW", "eager", _unfused,
                  memory_format=torch.contiguous_format),
    LayerProvider("eager_channels_last", "conv2d + channel_shuffle + relu, channels_last", "eager", _unfused,
                  memory_format=torch.channels_last),
    LayerProvider("compile", "torch.compile of the unfused code", "compile", _compiled_unfused, compiled=True),
    LayerProvider("dense", "dense conv, block-diagonal weight, rows (columns) permuted by the output (input) shuffle", "dense", _dense,
                  dense_weight=True),
)


def layer_providers(device: torch.device, names: list[str] | None = None, compile: bool = True) -> list[LayerProvider]:
    """The providers that can run on ``device`` (in the order above), optionally by name."""
    known = {p.name for p in LAYER_PROVIDERS}
    for name in names or ():
        if name not in known:
            raise ValueError(f"unknown provider {name!r}; choose from {', '.join(sorted(known))}")
    chosen = [
        p for p in LAYER_PROVIDERS
        if p.available(device) and (names is None or p.name in names) and (compile or not p.compiled)
    ]
    if not any(p.fused for p in chosen):
        raise ValueError(f"no fused provider can run on {device} (is the C++ extension built?)")
    return chosen


def make_layer_inputs(
    p: LayerProblem, provider: LayerProvider, setup: Setup, requires_grad: bool, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(x, weight, bias)`` for one provider: the same values for every provider (same
    seed), in its layout (``provider.memory_format``, else the run's), the dense weight for
    ``dense``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(p.batch, p.cin, p.size, p.size, generator=generator)
    weight = torch.randn(p.cout, p.cin // p.groups, 1, 1, generator=generator) / (p.cin // p.groups) ** 0.5
    bias = torch.randn(p.cout, generator=generator) if p.bias else None
    if provider.dense_weight:
        weight, bias = dense_block_diagonal(weight, bias, p.groups, p.shuffle_groups, p.placement)
    x = x.to(setup.device, setup.dtype).contiguous(memory_format=provider.memory_format or setup.memory_format)
    weight = weight.to(setup.device, setup.dtype)
    bias = None if bias is None else bias.to(setup.device, setup.dtype)
    if requires_grad:
        for t in (x, weight, bias):
            if t is not None:
                t.requires_grad_()
    return x, weight, bias


# ------------------------------------------------------------------ units and models
@dataclass(frozen=True)
class NetworkProvider:
    name: str
    description: str
    fused: bool
    compiled: bool
    channels_last: bool = False  # weights and input in channels_last, whatever --layout says
    runtime: str | None = None  # a deployment runtime that runs the exported naive model (eval only)
    converted: bool = False  # shufflenet_ops.fuse() of the naive network (existing code, converted)


NETWORK_PROVIDERS: tuple[NetworkProvider, ...] = (
    NetworkProvider("fused", "fused modules (BN folded in eval)", fused=True, compiled=False),
    NetworkProvider("naive", "conv, BN, ReLU, nn.ChannelShuffle as separate modules", fused=False, compiled=False),
    NetworkProvider("naive_channels_last", "the naive network with channels_last weights and input", fused=False,
                    compiled=False, channels_last=True),
    NetworkProvider("fuse_naive", "shufflenet_ops.fuse() of the naive network (a model as people write it, "
                    "converted without retraining), given channels_last input and weights as fuse() asks on CPU",
                    fused=False, compiled=False, channels_last=True, converted=True),
    NetworkProvider("compile_naive", "torch.compile of the naive network", fused=False, compiled=True),
    NetworkProvider("compile_fused", "torch.compile of the fused network", fused=True, compiled=True),
    NetworkProvider("onnxruntime", "ONNX Runtime (CPU) on the naive model exported with torch.onnx.export(dynamo=True)",
                    fused=False, compiled=False, runtime="onnxruntime"),
    NetworkProvider("openvino", "OpenVINO (CPU, LATENCY hint, the run's precision) on the same ONNX file",
                    fused=False, compiled=False, runtime="openvino"),
    NetworkProvider("openvino_default", "OpenVINO (CPU, LATENCY hint) at its default precision (bf16 on CPUs "
                    "with AVX512_BF16 or AMX)", fused=False, compiled=False, runtime="openvino_default"),
)


def network_providers(compile: bool = True, deploy: bool = True) -> list[NetworkProvider]:
    return [p for p in NETWORK_PROVIDERS if (compile or not p.compiled) and (deploy or p.runtime is None)]


# name -> (display name for legends and descriptions, short name for table headers)
DISPLAY: dict[str, tuple[str, str]] = {
    "fused_cpp": ("fused (C++ kernel)", "fused"),
    "fused_triton": ("fused (Triton kernel)", "fused"),
    "eager": ("eager PyTorch, NCHW", "eager"),
    "eager_channels_last": ("eager PyTorch, channels_last", "eager CL"),
    "compile": ("torch.compile (unfused code)", "compile"),
    "dense": ("dense conv (block-diagonal weight)", "dense"),
    "fused": ("fused (this package)", "fused"),
    "naive": ("eager naive", "eager"),
    "naive_channels_last": ("eager naive, channels_last", "eager CL"),
    "fuse_naive": ("fuse(naive)", "fuse()"),
    "compile_naive": ("torch.compile(naive)", "compile"),
    "compile_fused": ("torch.compile(fused)", "compile(fused)"),
    "onnxruntime": ("ONNX Runtime", "ORT"),
    "openvino": ("OpenVINO", "OpenVINO"),
    "openvino_default": ("OpenVINO, default precision", "OV default"),
    "same_flops_gemm": ("dense torch.mm, same FLOPs", "mm"),
}


def display_name(name: str) -> str:
    return DISPLAY.get(name, (name, name))[0]


def short_name(name: str) -> str:
    return DISPLAY.get(name, (name, name))[1]
