"""Unit and model level: a ShuffleNet unit (stride 1 and 2) and the whole ShuffleNet V1
(and, with ``--models v2``, ShuffleNet V2 at the model level), eval inference (BN folded by the fused modules) and one training step (forward, backward,
SGD), in images per second; whole models also at batch 1 (single-image latency), against
the deployment runtimes (``deploy.py``), and at other widths for the paper's efficiency
yardstick (``efficiency.py``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..flops import count_flops
from ..fuse import fuse
from ..models.shufflenet_v1 import ShuffleNetV1, stage_channels
from ..models.shufflenet_v2 import shufflenet_v2
from ..modules import ShuffleUnit
from . import deploy
from .layers import add_speedups
from .providers import NetworkProvider, Setup
from .timing import measure_many, synchronize

NETWORK_MODES = ("eval", "train_step")
RUNTIME_SETTLE_S = 0.1  # pause after a deployment runtime's turn in the interleaved rounds


@dataclass(frozen=True)
class NetworkCase:
    """One network at one batch size. ``spec`` rebuilds it (``case_from_spec``), which is how
    a precompile worker gets the same case."""

    level: str  # "unit" or "model"
    name: str
    # ("unit", g, width, stride, batch, input_size), ("model", g, width, batch, input_size, modes)
    # or ("model_v2", width, batch, input_size, modes)
    spec: tuple
    input_shape: tuple[int, ...]
    classes: int  # 0: a feature map (the loss is its mean)
    groups: int  # 0: ShuffleNet V2 (its 1x1 convs are ungrouped)
    width: float
    modes: tuple[str, ...] = NETWORK_MODES
    extra_width: bool = False  # a width timed only for the efficiency table
    macs: int = field(default=0, compare=False)  # multiply-adds per image (models)

    @property
    def batch(self) -> int:
        return self.input_shape[0]

    def build(self, fused: bool) -> nn.Module:
        """The network (same seed: the same weights for fused and naive)."""
        torch.manual_seed(0)
        if self.level == "unit":
            _, g, width, stride, _, _ = self.spec
            cin, cout = _unit_channels(g, width, stride)
            return ShuffleUnit(cin, cout, g, stride, fused=fused)
        if self.spec[0] == "model_v2":
            return shufflenet_v2(self.width, 1000, fused=fused)
        return ShuffleNetV1(self.groups, self.width, 1000, fused=fused)


def _unit_channels(g: int, width_mult: float, stride: int) -> tuple[int, int]:
    width = stage_channels(g, width_mult)[1]
    return (width, width) if stride == 1 else (width, 2 * width)


def unit_case(g: int, width_mult: float, stride: int, batch: int, input_size: int) -> NetworkCase:
    """Stage 2's stride-1 unit, or Stage 3's stride-2 unit (the one that halves 28 -> 14)."""
    size = input_size // 8  # Stage 2 runs at 1/8 of the input
    cin, cout = _unit_channels(g, width_mult, stride)
    return NetworkCase("unit", f"unit g{g} {cin}->{cout} s{stride} {size}x{size}",
                       ("unit", g, width_mult, stride, batch, input_size), (batch, cin, size, size), 0, g, width_mult)


def unit_cases(groups: tuple[int, ...], width_mult: float, batch: int, input_size: int) -> list[NetworkCase]:
    return [unit_case(g, width_mult, stride, batch, input_size) for g in groups for stride in (1, 2)]


def model_case(
    g: int, width_mult: float, batch: int, input_size: int, modes: tuple[str, ...] = NETWORK_MODES,
    extra_width: bool = False,
) -> NetworkCase:
    macs = count_flops(ShuffleNetV1(g, width_mult, 1000, fused=False), (1, 3, input_size, input_size))["total"]
    return NetworkCase("model", f"ShuffleNet V1 {width_mult:g}x g{g} {input_size}px",
                       ("model", g, width_mult, batch, input_size, tuple(modes)), (batch, 3, input_size, input_size),
                       1000, g, width_mult, tuple(modes), extra_width, macs)


def model_cases(
    groups: tuple[int, ...], width_mult: float, batches: tuple[int, ...], input_size: int,
    efficiency_widths: tuple[float, ...] = (), efficiency_groups: tuple[int, ...] = (),
) -> list[NetworkCase]:
    """Per g: eval at every batch size, the training step at the largest only, if above one
    (a batch of one is a latency question, and BatchNorm cannot train on one image at 1x1); then, for ``efficiency_groups``, eval at the other
    ``efficiency_widths`` and the same batch sizes."""
    cases = []
    for g in groups:
        for batch in sorted(batches):
            modes = NETWORK_MODES if batch == max(batches) and batch > 1 else ("eval",)
            cases.append(model_case(g, width_mult, batch, input_size, modes))
    for g in efficiency_groups:
        for width in efficiency_widths:
            if width == width_mult and g in groups:
                continue  # the main rows serve
            for batch in sorted(batches):
                cases.append(model_case(g, width, batch, input_size, ("eval",), extra_width=True))
    return cases


def model_v2_case(width_mult: float, batch: int, input_size: int, modes: tuple[str, ...] = NETWORK_MODES) -> NetworkCase:
    """ShuffleNet V2 (torchvision's structure) at ``width_mult``; ``groups`` is 0."""
    macs = count_flops(shufflenet_v2(width_mult, 1000, fused=False), (1, 3, input_size, input_size))["total"]
    return NetworkCase("model", f"ShuffleNet V2 {width_mult:g}x {input_size}px",
                       ("model_v2", width_mult, batch, input_size, tuple(modes)), (batch, 3, input_size, input_size),
                       1000, 0, width_mult, tuple(modes), False, macs)


def model_v2_cases(widths: tuple[float, ...], batches: tuple[int, ...], input_size: int) -> list[NetworkCase]:
    """Per width: eval at every batch size, the training step at the largest if above one
    (as ``model_cases``)."""
    return [model_v2_case(width, batch, input_size,
                          NETWORK_MODES if batch == max(batches) and batch > 1 else ("eval",))
            for width in widths for batch in sorted(batches)]


def case_from_spec(spec: tuple) -> NetworkCase:
    if spec[0] == "unit":
        return unit_case(*spec[1:])
    if spec[0] == "model_v2":
        return model_v2_case(*spec[1:])
    _, g, width, batch, input_size, modes = spec
    return model_case(g, width, batch, input_size, modes)


def included(case: NetworkCase, provider: NetworkProvider, mode: str, full: bool) -> bool:
    """Whether a run times ``provider`` on ``case`` in ``mode``. What takes long to compile
    on a small CPU waits for ``--full``: the compiled unit peers, torch.compile(fused) of the
    whole models, compiled training steps, and compiled peers at the efficiency table's extra
    widths; the deployment runtimes run whole models in eval only."""
    if mode not in case.modes:
        return False
    if provider.runtime is not None:
        return case.level == "model" and mode == "eval" and (full or provider.name != "openvino_default")
    if provider.converted:
        return case.level == "model" and not case.extra_width
    if case.extra_width and provider.channels_last:
        return False  # the efficiency table compares fused, compiled and deployed, not layouts
    if not provider.compiled or full:
        return True
    return case.level == "model" and mode == "eval" and not provider.fused and not case.extra_width


def _input(case: NetworkCase) -> torch.Tensor:
    return torch.randn(case.input_shape, generator=torch.Generator().manual_seed(1))


def _deployed(case: NetworkCase, provider: NetworkProvider, setup: Setup, exports: deploy.ExportCache):
    """The naive model exported to ONNX (once per model), run by ``provider.runtime`` on the
    same input as the others, after its output is checked against the naive PyTorch model."""
    naive = case.build(False).eval()
    x = _input(case)
    example = torch.randn(2, *case.input_shape[1:])  # batch 2: a batch of 1 could specialise
    path = exports.path(f"{case.spec[0]}_g{case.groups}_{case.width:g}x_{case.input_shape[-1]}px", lambda: naive,
                        example)
    threads = torch.get_num_threads()
    if provider.runtime == "onnxruntime":
        run_array, rtol = deploy.onnxruntime_runner(path, threads), 1e-4
    else:
        precision = None if provider.runtime == "openvino_default" else deploy.openvino_precision(setup.dtype)
        run_array = deploy.openvino_runner(path, threads, precision)
        rtol = 1e-4 if precision == "f32" else 5e-2  # bf16/f16 arithmetic: ~3 significant digits
    array = x.numpy()
    with torch.no_grad():
        expected = naive(x)
    deploy.check_outputs(deploy_label(provider), run_array(array), expected, rtol)

    def infer():
        return run_array(array)

    return infer


def deploy_label(provider: NetworkProvider) -> str:
    return f"{provider.name} {deploy.version(provider.runtime)}"


def prepare(
    case: NetworkCase, provider: NetworkProvider, mode: str, setup: Setup, exports: deploy.ExportCache | None = None
) -> Callable[[], object]:
    """A zero-argument call: one eval forward or one SGD training step of ``case`` as
    ``provider`` runs it (a compiled peer compiles on the first call)."""
    if provider.runtime is not None:
        if exports is None:
            raise ValueError(f"{provider.name} needs an ExportCache")
        return _deployed(case, provider, setup, exports)
    module = case.build(provider.fused)
    if provider.fused:  # the naive network's weights, whatever the construction order
        module.load_state_dict(case.build(False).state_dict())
    memory_format = torch.channels_last if provider.channels_last else setup.memory_format
    module = module.to(setup.device, setup.dtype)
    module = module.to(memory_format=memory_format)
    if provider.converted:
        module = fuse(module)
    generator = torch.Generator().manual_seed(2)
    x = _input(case).to(setup.device, setup.dtype)
    x = x.contiguous(memory_format=memory_format)
    if mode == "eval":
        module.eval()
        net = torch.compile(module, mode=setup.compile_mode) if provider.compiled else module

        def infer():
            with torch.no_grad():
                return net(x)

        return infer
    module.train()
    net = torch.compile(module, mode=setup.compile_mode) if provider.compiled else module
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9)
    target = torch.randint(0, max(case.classes, 1), (case.batch,), generator=generator).to(setup.device)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        out = net(x)
        loss = F.cross_entropy(out.float(), target) if case.classes else out.float().mean()
        loss.backward()
        optimizer.step()
        return loss

    return train_step


def run_networks(
    cases: list[NetworkCase],
    providers: list[NetworkProvider],
    setup: Setup,
    min_run_time: float,
    progress: Callable[[str], None],
    full: bool = False,
    exports: deploy.ExportCache | None = None,
) -> list[dict]:
    """Each case in each of its modes, every provider ``included`` for it, timed in
    interleaved rounds; ``full``: see ``included``."""
    rows = []
    for case in cases:
        torch._dynamo.reset()
        for mode in case.modes:
            runners, warmup_s = {}, {}
            for provider in providers:
                if not included(case, provider, mode, full):
                    continue
                progress(f"{case.name} b{case.batch} {mode} {provider.name}")
                start = time.perf_counter()
                run = prepare(case, provider, mode, setup, exports)
                run()  # compile outside the timing
                run()
                synchronize(setup.device)
                runners[provider.name], warmup_s[provider.name] = run, time.perf_counter() - start
            if not runners:
                continue
            # Calls of milliseconds to most of a second (a training step of a 2x model): finer
            # interleaving than the layer rows keeps a burst of other work off any one
            # provider; one sample per round at least (the slow calls get no more).
            # A deployment runtime's threads spin on after its turn and slow the next
            # provider's first calls (benchmarks/README.md); a pause clears it.
            settle = {p.name: RUNTIME_SETTLE_S for p in providers if p.runtime is not None}
            timings = measure_many(runners, setup.device, min_run_time, rounds=5, min_samples=5, settle_s=settle)
            for provider in (p for p in providers if p.name in timings):
                timing = timings[provider.name]
                row = {
                    "level": case.level,
                    "name": case.name,
                    "groups": case.groups,
                    "width": case.width,
                    "batch": case.batch,
                    "mode": mode,
                    "provider": provider.name,
                    "fused": provider.fused,
                    **timing.columns(),
                    "images_per_s": case.batch / (timing.median_ms * 1e-3),
                    "warmup_s": round(warmup_s[provider.name], 3),
                }
                if case.level == "model":
                    row["macs_per_image"] = case.macs
                    row["extra_width"] = case.extra_width
                if provider.runtime is not None:
                    row["runtime_version"] = deploy.version(provider.runtime)
                rows.append(row)
    add_speedups(rows, key=("level", "name", "batch", "mode"))
    return rows
