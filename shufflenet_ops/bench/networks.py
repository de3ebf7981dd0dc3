"""Unit and model level: a ShuffleNet unit (stride 1 and 2) and the whole ShuffleNet V1,
eval inference (BN folded by the fused modules) and one training step (forward, backward,
SGD), in images per second."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.shufflenet_v1 import ShuffleNetV1, stage_channels
from ..modules import ShuffleUnit
from .layers import add_speedups
from .providers import NetworkProvider, Setup
from .timing import measure_many, synchronize

NETWORK_MODES = ("eval", "train_step")


@dataclass(frozen=True)
class NetworkCase:
    level: str  # "unit" or "model"
    name: str
    build: Callable[[bool], nn.Module]  # fused -> module (same seed: same weights)
    input_shape: tuple[int, ...]
    classes: int  # 0: a feature map (the loss is its mean)


def unit_cases(groups: tuple[int, ...], width_mult: float, batch: int, input_size: int) -> list[NetworkCase]:
    """Stage 2's stride-1 unit and Stage 3's stride-2 unit (the one that halves 28 -> 14)."""
    cases = []
    size = input_size // 8  # Stage 2 runs at 1/8 of the input
    for g in groups:
        width = stage_channels(g, width_mult)[1]
        for stride, cin, cout in ((1, width, width), (2, width, 2 * width)):
            def build(fused: bool, cin=cin, cout=cout, g=g, stride=stride) -> nn.Module:
                torch.manual_seed(0)
                return ShuffleUnit(cin, cout, g, stride, fused=fused)

            cases.append(NetworkCase(
                "unit", f"unit g{g} {cin}->{cout} s{stride} {size}x{size}", build, (batch, cin, size, size), 0,
            ))
    return cases


def model_cases(groups: tuple[int, ...], width_mult: float, batch: int, input_size: int) -> list[NetworkCase]:
    cases = []
    for g in groups:
        def build(fused: bool, g=g) -> nn.Module:
            torch.manual_seed(0)
            return ShuffleNetV1(g, width_mult, 1000, fused=fused)

        cases.append(NetworkCase(
            "model", f"ShuffleNet V1 {width_mult:g}x g{g} {input_size}px", build, (batch, 3, input_size, input_size), 1000,
        ))
    return cases


def compiled_peer_skipped(
    case: NetworkCase, provider: NetworkProvider, mode: str, compile_model_training: bool
) -> bool:
    """Whether the default run leaves this peer out: without ``--full``, a whole model's only
    compiled peer is torch.compile(naive) in eval (Inductor needs minutes for the others on a
    small CPU); units keep all theirs."""
    if not provider.compiled or case.level != "model" or compile_model_training:
        return False
    return mode == "train_step" or provider.fused


def prepare(case: NetworkCase, provider: NetworkProvider, mode: str, setup: Setup) -> Callable[[], object]:
    """A zero-argument call: one eval forward or one SGD training step of ``case`` as
    ``provider`` runs it (a compiled peer compiles on the first call)."""
    module = case.build(provider.fused)
    if provider.fused:  # the naive network's weights, whatever the construction order
        module.load_state_dict(case.build(False).state_dict())
    memory_format = torch.channels_last if provider.channels_last else setup.memory_format
    module = module.to(setup.device, setup.dtype)
    module = module.to(memory_format=memory_format)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(case.input_shape, generator=generator).to(setup.device, setup.dtype)
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
    target = torch.randint(0, max(case.classes, 1), (case.input_shape[0],), generator=generator).to(setup.device)

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
    modes: list[str],
    setup: Setup,
    min_run_time: float,
    progress: Callable[[str], None],
    compile_model_training: bool = True,
) -> list[dict]:
    """``compile_model_training=False`` keeps only torch.compile(naive) in whole-model eval
    (Inductor needs minutes for the other compiled whole-model peers on a small CPU); units
    are always compiled."""
    rows = []
    for case in cases:
        torch._dynamo.reset()
        for mode in modes:
            runners, warmup_s = {}, {}
            for provider in providers:
                if compiled_peer_skipped(case, provider, mode, compile_model_training):
                    continue
                progress(f"{case.name} {mode} {provider.name}")
                start = time.perf_counter()
                run = prepare(case, provider, mode, setup)
                run()  # compile outside the timing
                run()
                synchronize(setup.device)
                runners[provider.name], warmup_s[provider.name] = run, time.perf_counter() - start
            # Calls of 5-500 ms: their medians need more samples, and finer interleaving,
            # than the layer rows to keep a burst of other work off any one provider.
            timings = measure_many(runners, setup.device, min_run_time, rounds=5, min_samples=10)
            batch = case.input_shape[0]
            for provider in (p for p in providers if p.name in timings):
                timing = timings[provider.name]
                rows.append({
                    "level": case.level,
                    "name": case.name,
                    "batch": batch,
                    "mode": mode,
                    "provider": provider.name,
                    "fused": provider.fused,
                    **timing.columns(),
                    "images_per_s": batch / (timing.median_ms * 1e-3),
                    "warmup_s": round(warmup_s[provider.name], 3),
                })
    add_speedups(rows, key=("name", "mode"))
    return rows
