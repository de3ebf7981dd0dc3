"""The benchmark suite: bytes model by hand, providers computing the same thing, timing,
the CLI and its subcommands on tiny configurations (kernels, ncu with a stand-in ncu,
profile-step, host-overhead, train and 2-process DDP), and benchmarks/device_check.sh's use
of them."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import shufflenet_ops
from shufflenet_ops import reference
from shufflenet_ops.bench import bytes_model
from shufflenet_ops.bench.problem import MODES, LayerProblem, find_problems, placement_problems, shufflenet_problems
from shufflenet_ops.bench.providers import (
    LAYER_PROVIDERS,
    NETWORK_PROVIDERS,
    Setup,
    dense_block_diagonal,
    layer_providers,
    make_layer_inputs,
)
from shufflenet_ops.bench.roofline import Roofline, same_flops_gemm
from shufflenet_ops.bench.timing import Timing, measure_many

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
requires_extension = pytest.mark.skipif(not shufflenet_ops._extension.available(), reason="C++ extension not built")

# g=3, Stage 3 stride-1 unit's first GConv at batch 2: 480 -> 120 channels, 3 groups, 14x14.
GCONV1 = LayerProblem(cin=480, cout=120, groups=3, size=14, batch=2, shuffle_groups=3, relu=True, bias=True,
                      model_groups=3)
GCONV2 = LayerProblem(cin=120, cout=480, groups=3, size=14, batch=2, shuffle_groups=1, relu=False, bias=True,
                      model_groups=3)
# The same second GConv with the unit's shuffle on its input, in the official code's convention.
GCONV2_IN = LayerProblem(cin=120, cout=480, groups=3, size=14, batch=2, shuffle_groups=40, relu=False, bias=True,
                         model_groups=3, placement="in")


# ------------------------------------------------------------------------- bytes model
def test_sizes_by_hand():
    assert GCONV1.x_numel == 2 * 196 * 480 == 188160
    assert GCONV1.y_numel == 2 * 196 * 120 == 47040
    assert GCONV1.weight_numel == 120 * 160 == 19200
    assert GCONV1.bias_numel == 120
    assert GCONV1.macs() == 2 * 196 * 120 * 160 == 7526400
    assert GCONV1.flops("forward_backward") == 3 * GCONV1.flops("forward") == 6 * 7526400


def test_forward_bytes_by_hand():
    X, Y, W, B = 188160, 47040, 19200, 120
    fused = X + W + B + Y  # read x, W, b; write y
    assert bytes_model.bytes_moved("fused", GCONV1, "forward", 4) == 4 * fused == 1018080
    # eager: + conv output written and read by the shuffle, shuffled copy written (3 Y in
    # all beyond x, W, b), + ReLU's read and write of y.
    assert bytes_model.bytes_moved("eager", GCONV1, "forward", 4) == 4 * (fused + 2 * Y + 2 * Y) == 1770720
    # compile: shuffle and ReLU in one pointwise pass.
    assert bytes_model.bytes_moved("compile", GCONV1, "forward", 4) == 4 * (fused + 2 * Y)
    # dense: g times the weight, no shuffle pass, ReLU pass.
    assert bytes_model.bytes_moved("dense", GCONV1, "forward", 4) == 4 * (X + 3 * W + B + Y + 2 * Y)
    # bf16 halves everything.
    assert bytes_model.bytes_moved("fused", GCONV1, "forward", 2) == 2 * fused


def test_input_shuffle_costs_an_input_sized_copy():
    """An input shuffle copies the conv's input (X), not its output: for this expanding conv
    the Y-sized charge of an output shuffle would be 4x too much."""
    X, Y, W, B = 47040, 188160, 19200, 480
    fused = X + W + B + Y
    assert GCONV2_IN.x_numel == X and GCONV2_IN.y_numel == Y == 4 * X
    assert bytes_model.bytes_moved("fused", GCONV2_IN, "forward", 4) == 4 * fused
    assert bytes_model.bytes_moved("eager", GCONV2_IN, "forward", 4) == 4 * (fused + 2 * X)
    assert bytes_model.bytes_moved("compile", GCONV2_IN, "forward", 4) == 4 * (fused + 2 * X)
    assert bytes_model.bytes_moved("dense", GCONV2_IN, "forward", 4) == 4 * (X + 3 * W + B + Y)
    conv = (Y + W + X) + (Y + X + W) + (Y + B)
    assert bytes_model.bytes_moved("fused", GCONV2_IN, "backward", 4) == 4 * conv
    # The unfused backward unshuffles grad input (X -> X).
    assert bytes_model.bytes_moved("eager", GCONV2_IN, "backward", 4) == 4 * (conv + 2 * X)
    assert bytes_model.bytes_moved("compile", GCONV2_IN, "backward", 4) == 4 * (conv + 2 * X)


def test_layer_without_shuffle_or_relu_costs_the_same_unfused():
    for kind in ("fused", "eager", "compile"):
        assert bytes_model.bytes_moved(kind, GCONV2, "forward", 4) == 4 * (188160 + 19200 + 480 + 47040)


def test_backward_bytes_by_hand():
    X, Y, W, B = 188160, 47040, 19200, 120
    conv = (Y + W + X) + (Y + X + W) + (Y + B)  # grad input, grad weight, grad bias
    assert bytes_model.bytes_moved("fused", GCONV1, "backward", 4) == 4 * (3 * Y + conv)
    assert bytes_model.bytes_moved("eager", GCONV1, "backward", 4) == 4 * (3 * Y + 2 * Y + conv)
    assert bytes_model.bytes_moved("compile", GCONV1, "backward", 4) == 4 * (3 * Y + conv)
    both = bytes_model.bytes_moved("eager", GCONV1, "forward", 4) + bytes_model.bytes_moved("eager", GCONV1, "backward", 4)
    assert bytes_model.bytes_moved("eager", GCONV1, "forward_backward", 4) == both
    with pytest.raises(ValueError, match="unknown traffic kind"):
        bytes_model.bytes_moved("magic", GCONV1, "forward", 4)


def test_roofline_fractions():
    timing = Timing(1.0, 1.0, 1.0, 5)
    roof = Roofline(copy_gbs=10.0, gemm_gflops=100.0, copy_timing=timing, gemm_timing=timing, copy_bytes=1,
                    gemm_label="mm 1^3")
    assert roof.memory_fraction(5_000_000, 1e-3) == pytest.approx(0.5)  # 5 GB/s of 10
    assert roof.compute_fraction(20_000_000, 1e-3) == pytest.approx(0.2)  # 20 GFLOP/s of 100


def test_same_flops_gemm_is_a_square_mm_of_the_layers_flops():
    problem = next(p for p in shufflenet_problems((8,), 1.0, 16) if p.cin == 768 and p.cout == 192)
    flops = problem.flops("forward")
    run, gemm_flops = same_flops_gemm(flops, torch.device("cpu"), torch.float32)
    out = run()
    n = out.shape[0]
    assert out.shape == (n, n) and gemm_flops == 2 * n**3
    assert abs(gemm_flops - flops) / flops < 3 / n  # the nearest cube


def test_gemm_rate_weights_each_layer_by_its_time():
    from shufflenet_ops.bench.report import gemm_rates, weighted_table

    def row(provider, fused, mode, ms, count, rate=None):
        r = {"level": "layer", "model_groups": 8, "provider": provider, "fused": fused, "mode": mode,
             "median_ms": ms, "count": count}
        if rate is not None:
            r["gemm_rate"] = rate
        return r

    rows = [row("fused_cpp", True, "forward", 1.0, 3, rate=0.5),  # 3 ms at half the mm's rate
            row("fused_cpp", True, "forward", 2.0, 1, rate=1.0),  # 2 ms at its rate
            row("eager", False, "forward", 4.0, 3, rate=0.1),     # peers do not count
            row("fused_cpp", True, "backward", 1.0, 1)]
    # The dense GEMMs would take 3 * 0.5 + 2 * 1.0 = 3.5 ms for the fused layers' 5 ms.
    assert gemm_rates(rows) == {8: pytest.approx(0.7)}
    table = weighted_table(rows)
    lines = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()]
    assert lines[0] == ["g", "mode", "fused ms", "vs eager", "GEMM rate"]
    assert ["g8", "forward", "5.00", "2.40x", "70%"] in lines
    assert ["g8", "backward", "1.00", "-", "-"] in lines


# --------------------------------------------------------------------------- problems
def test_problems_cover_every_distinct_layer():
    problems = shufflenet_problems((3, 8), 1.0, 16)
    assert len(problems) == 24
    first = [p for p in problems if p.groups == 1]
    # Stage 2's first conv is ungrouped, but the shuffle after it still uses the model's g.
    assert [(p.cin, p.cout, p.shuffle_groups, p.relu) for p in first] == [(24, 60, 3, True), (24, 96, 8, True)]
    assert sum(p.count for p in problems if p.model_groups == 3) == 2 * 16  # two 1x1 convs per unit


def test_placement_problems_are_stage2_in_both_placements():
    problems = placement_problems((3, 8), 1.0, 128)
    assert [p.slug for p in problems] == ["g3_240to60_28x28_1st", "g8_384to96_28x28_1st",
                                          "g3_60to240_28x28_2nd_in-shuffle", "g8_96to384_28x28_2nd_in-shuffle"]
    first, second = problems[0], problems[2]
    assert (first.placement, first.shuffle_groups, first.relu, first.groups) == ("out", 3, True, 3)
    # The official code's convention: shuffle groups = Cin / g on the second conv's input.
    assert (second.placement, second.shuffle_groups, second.relu, second.groups) == ("in", 20, False, 3)
    assert find_problems(problems, ["g8_384to96_28x28_1st", "g3 240->60 28x28 1st"]) == [problems[1], first]
    with pytest.raises(ValueError, match="unknown layer 'g9'"):
        find_problems(problems, ["g9"])


# -------------------------------------------------------------------------- providers
@pytest.mark.parametrize("placement", ["out", "in"])
def test_dense_block_diagonal_is_the_grouped_conv_with_its_shuffle(placement):
    x = torch.randn(2, 12, 3, 3, dtype=torch.float64)
    w = torch.randn(6, 4, 1, 1, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    if placement == "out":
        dense_w, dense_b = dense_block_diagonal(w, b, 3, 3)
        expected = reference.group_conv1x1_shuffle(x, w, 3, bias=b, shuffle_groups=3)
    else:
        dense_w, dense_b = dense_block_diagonal(w, b, 3, 4, "in")
        expected = reference.shuffle_group_conv1x1(x, w, 3, 4, bias=b)
    torch.testing.assert_close(torch.nn.functional.conv2d(x, dense_w, dense_b), expected)


@requires_extension
@pytest.mark.parametrize("problem", [GCONV1, GCONV2, GCONV2_IN], ids=["gconv1", "gconv2", "gconv2_in"])
def test_every_eager_provider_computes_the_layer(problem):
    setup = Setup(torch.device("cpu"), torch.float32, torch.contiguous_format, "default")
    expected = None
    for provider in layer_providers(torch.device("cpu"), compile=False):
        x, w, b = make_layer_inputs(problem, provider, setup, requires_grad=False)
        with torch.no_grad():
            y = provider.make(problem, setup)(x, w, b)
        if expected is None:
            x, w, b = make_layer_inputs(problem, LAYER_PROVIDERS[2], setup, requires_grad=False)  # eager inputs
            x, w, b = x.double(), w.double(), b.double()
            if problem.placement == "in":
                expected = reference.shuffle_group_conv1x1(x, w, problem.groups, problem.shuffle_groups, bias=b)
            else:
                expected = reference.group_conv1x1_shuffle(x, w, problem.groups, bias=b,
                                                           shuffle_groups=problem.shuffle_groups, relu=problem.relu)
        torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4, msg=provider.name)


def test_provider_layouts_follow_their_names():
    """eager is NCHW and eager_channels_last channels_last whatever the run's layout; the
    others take the run's."""
    setup = Setup(torch.device("cpu"), torch.float32, torch.channels_last, "default")
    layouts = {}
    for provider in LAYER_PROVIDERS:
        x, _, _ = make_layer_inputs(GCONV1, provider, setup, requires_grad=False)
        layouts[provider.name] = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert layouts == {"fused_cpp": True, "fused_triton": True, "eager": False, "eager_channels_last": True,
                       "compile": True, "dense": True}


def test_unknown_provider_is_rejected():
    with pytest.raises(ValueError, match="unknown provider"):
        layer_providers(torch.device("cpu"), ["fastest"])


# ----------------------------------------------------------------------------- timing
def test_measure_many_times_each_runner():
    timings = measure_many({"sleep2ms": lambda: time.sleep(0.002), "noop": lambda: None},
                           torch.device("cpu"), min_run_time=0.06)
    sleep = timings["sleep2ms"]
    assert sleep.samples >= 5
    assert 1.9 <= sleep.median_ms < 20
    assert sleep.p20_ms <= sleep.median_ms <= sleep.p80_ms
    assert timings["noop"].median_ms < 0.5



def test_measure_many_pauses_after_a_runtimes_turn(monkeypatch):
    """A runner named in settle_s is followed by a pause (its threads spin on), once per round
    and after the untimed pass that precedes the rounds."""
    from shufflenet_ops.bench import timing

    order = []
    monkeypatch.setattr(timing.time, "sleep", lambda seconds: order.append(("sleep", seconds)))
    timings = measure_many({"runtime": lambda: order.append("runtime"), "torch": lambda: order.append("torch")},
                           torch.device("cpu"), min_run_time=0.003, rounds=3, min_samples=3,
                           settle_s={"runtime": 0.1})
    assert len(timings["runtime"].rounds_ms) == len(timings["torch"].rounds_ms) == 3
    assert order.count(("sleep", 0.1)) == 1 + 3  # the untimed pass, then each round
    assert order[:3] == ["runtime", ("sleep", 0.1), "torch"]
    # Each pause comes right after the runtime's calls, before the torch runner's turn.
    for i, item in enumerate(order):
        if item == ("sleep", 0.1):
            assert order[i - 1] == "runtime" and order[i + 1] == "torch"


def test_glibc_malloc_is_pinned_for_the_run():
    import platform

    from shufflenet_ops.bench.timing import pin_glibc_malloc

    result = pin_glibc_malloc()  # idempotent: the CLI test calls it again
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert result == "glibc mallopt: mmap threshold 32 MiB, trim threshold 1 GiB"
    else:
        assert result is None


def test_timed_calls_use_torchs_thread_count():
    """Every timed call, fast (blocked) or slow (one by one), runs at torch's thread count:
    torch's Timer alone would pin the measurement to one thread."""
    seen = {"fast": set(), "slow": set()}

    def fast():
        seen["fast"].add(torch.get_num_threads())

    def slow():
        seen["slow"].add(torch.get_num_threads())
        time.sleep(0.002)

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        timings = measure_many({"fast": fast, "slow": slow}, torch.device("cpu"), min_run_time=0.03)
    finally:
        torch.set_num_threads(previous)
    assert seen == {"fast": {2}, "slow": {2}}
    assert timings["slow"].samples >= 5 and timings["fast"].samples >= 5

# -------------------------------------------------------------------------------- CLI
@requires_extension
def test_cli_quick_tiny(tmp_path, capsys, monkeypatch):
    from shufflenet_ops.bench.__main__ import main

    # No --out: the run writes into a new folder under ./shufflenet-bench-results and says where.
    monkeypatch.chdir(tmp_path)
    # 64x64 input: the Stage 3 layers run at 4x4, the unit at 8x8; g=3 only.
    assert main(["--quick", "--groups", "3", "--batch", "2", "--input-size", "64", "--min-run-time", "0.01",
                 "--precompile-workers", "1", "--no-progress"]) == 0
    captured = capsys.readouterr()
    (out,) = (tmp_path / "shufflenet-bench-results").iterdir()
    assert f"results in {out}" in captured.err
    stdout = captured.out
    # The terminal summary: forward rows only, short column names explained in a legend.
    lines = [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines() if line.startswith("|")]
    assert ["layer", "fused ms", "vs eager", "vs eager CL", "vs compile", "vs dense"] in lines
    assert any(line[0] == "g3 480->120 4x4 1st" for line in lines)
    prose = " ".join(stdout.split())
    assert "1st: a unit's first 1x1 conv" in prose and "eager CL = eager PyTorch, channels_last" in prose
    assert max(len(line) for line in stdout.splitlines()) <= 100

    rows = list(csv.DictReader(open(out / "results.csv")))
    layer_rows = [r for r in rows if r["level"] == "layer"]
    assert {r["provider"] for r in layer_rows} == {"fused_cpp", "eager", "eager_channels_last", "compile", "dense"}
    assert {r["mode"] for r in layer_rows} == {"forward", "backward", "forward_backward"}
    # The two most frequent shapes x (5 providers in forward + 4 in each training mode: the
    # compiled peer's training graph waits for --full).
    assert len(layer_rows) == 2 * (5 + 4 + 4)
    assert {r["mode"] for r in layer_rows if r["provider"] == "compile"} == {"forward"}
    for r in layer_rows:
        assert float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"])
        expected_gbs = float(r["model_bytes"]) / (float(r["median_ms"]) * 1e-3) / 1e9
        assert float(r["effective_gbs"]) == pytest.approx(expected_gbs)
        assert len(r["round_medians_ms"].split()) == 3 and float(r["round_spread"]) >= 1
        if r["provider"] == "fused_cpp":
            assert float(r["fused_speedup"]) == pytest.approx(1.0)
        if r["mode"] == "forward":  # timed beside a dense mm of the same FLOPs
            assert float(r["gemm_rate"]) == pytest.approx(float(r["gflops"]) / float(r["same_flops_gemm_gflops"]))
        else:
            assert r["gemm_rate"] == ""
    units = [r for r in rows if r["level"] == "unit"]
    assert {(r["provider"], r["mode"]) for r in units} == {
        (p, m) for p in ("fused", "naive", "naive_channels_last") for m in ("eval", "train_step")
    }

    payload = json.load(open(out / "results.json"))
    info = payload["provenance"]
    # The compiled peers were compiled in worker processes first: 2 shapes x the inference
    # graph; the unit's compiled peers are not in --quick.
    assert info["precompile"]["workers"] == 1 and info["precompile"]["jobs"] == 2
    for key in ("device", "cpu", "torch", "triton", "git_commit", "date", "load_average_start", "load_average_end",
                "malloc"):
        assert key in info
    roof = payload["roofline"]
    assert roof["copy_gbs"] > 0 and roof["gemm_gflops"] == pytest.approx(max(roof["gemm_rates"].values()))
    # Every forward row's same-FLOPs GEMM is a dense GEMM of this run: none beats the roof.
    assert all(float(r["same_flops_gemm_gflops"]) <= roof["gemm_gflops"] * (1 + 1e-9)
               for r in layer_rows if r["mode"] == "forward")
    assert payload["gemm_rate"]["3"] > 0 and "GEMM rate" in stdout
    markdown = (out / "results.md").read_text()
    assert "| g3 480->120 4x4 1st | 7     | forward " in markdown  # every mode, with the count
    assert f"% of {roof['gemm_label']} |" in markdown and "best dense GEMM of the run" in markdown
    for name in ("speedup.png", "roofline.png", "networks.png", "results.md"):
        assert (out / name).stat().st_size > 1000
    (out / "speedup.png").unlink()
    assert main(["--replot", str(out)]) == 0  # redrawn from results.json alone
    assert (out / "speedup.png").stat().st_size > 1000


def test_compile_jobs_name_every_compiled_graph():
    """One precompile job per graph the compiled peers build: forward's inference graph and
    (--full) the training graph that backward and forward_backward share, per layer shape;
    each compiled unit/model run (default: the whole model's torch.compile(naive) in eval)."""
    from shufflenet_ops.bench import networks
    from shufflenet_ops.bench.precompile import compile_jobs

    problems = shufflenet_problems((3,), 1.0, 2, 64)[:2]
    providers = [p for p in LAYER_PROVIDERS if p.name in ("eager", "compile")]
    cases = networks.unit_cases((3,), 1.0, 2, 64) + networks.model_cases((3,), 1.0, (1, 2), 64)
    for full in (False, True):
        runs = [(c, p, m) for c in cases for m in c.modes for p in NETWORK_PROVIDERS
                if networks.included(c, p, m, full)]
        jobs = compile_jobs(problems, providers, list(MODES), runs, full)
        layer_labels = {job.label for job in jobs if job.problem is not None}
        graphs = ("forward", "backward") if full else ("forward",)  # the training graph: --full
        assert layer_labels == {f"{p.name} {m} compile" for p in problems for m in graphs}
        network_labels = [job.label for job in jobs if job.network is not None]
        model = cases[-1].name
        assert network_labels[0].startswith(model)  # the longest compiles first
        if not full:  # the default: the whole model's torch.compile(naive) in eval, at each batch size
            assert sorted(network_labels) == [f"{model} b1 eval compile_naive", f"{model} b2 eval compile_naive"]
        else:
            units = [f"{c.name} b2 {m} {p}" for c in cases[:2] for m in networks.NETWORK_MODES
                     for p in ("compile_naive", "compile_fused")]
            models = ([f"{model} b1 eval {p}" for p in ("compile_naive", "compile_fused")]
                      + [f"{model} b2 {m} {p}" for m in networks.NETWORK_MODES
                         for p in ("compile_naive", "compile_fused")])
            assert sorted(network_labels) == sorted(units + models)
        # A worker rebuilds each case from its spec.
        assert all(networks.case_from_spec(job.network).spec == job.network for job in jobs if job.network)


@requires_extension
def test_precompile_fills_the_inductor_cache(tmp_path, monkeypatch):
    """A worker process compiles a peer into the on-disk cache; the main process's compile of
    the same graph then loads it (an FX graph cache hit, no new compile)."""
    from torch._dynamo.utils import counters

    from shufflenet_ops.bench import precompile
    from shufflenet_ops.bench.layers import layer_runner

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    problem = LayerProblem(cin=12, cout=6, groups=3, size=4, batch=2, shuffle_groups=3, relu=True, bias=True)
    setup = Setup(torch.device("cpu"), torch.float32, torch.contiguous_format, "default")
    job = precompile.CompileJob("tiny forward compile", "forward", "compile", problem=problem)
    spent = precompile.precompile([job], setup, workers=1)
    assert spent["jobs"] == 1 and spent["seconds"]["tiny forward compile"] > 0
    assert any((tmp_path / "inductor").rglob("*")), "the worker wrote nothing to the cache"

    torch._dynamo.reset()
    counters.clear()
    provider = next(p for p in LAYER_PROVIDERS if p.name == "compile")
    layer_runner(problem, provider, "forward", setup)()
    assert counters["inductor"]["fxgraph_cache_hit"] == 1
    assert counters["inductor"]["fxgraph_cache_miss"] == 0


def test_console_script_help():
    from shufflenet_ops.bench.__main__ import SUBCOMMANDS

    script = os.path.join(os.path.dirname(sys.executable), "shufflenet-bench")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "shufflenet_ops.bench"]
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--quick" in result.stdout and "--no-compile" in result.stdout
    # The help names every subcommand but the one ncu runs.
    assert all(f"shufflenet-bench {name} " in result.stdout for name in SUBCOMMANDS if name != "ncu-profile")


# ---------------------------------------------------------------- the GPU subcommands
@requires_extension
def test_kernels_both_placements_in_each_precision(tmp_path, capsys):
    """`kernels` on the CPU: the layer level of the main run on both placements, per
    precision, into one results set (the same code times them on CUDA, with CUDA graphs)."""
    from shufflenet_ops.bench.__main__ import main

    layers = "g3_240to60_8x8_1st,g3_60to240_8x8_2nd_in-shuffle"
    assert main(["kernels", "--device", "cpu", "--groups", "3", "--batch", "2", "--input-size", "64",
                 "--layers", layers, "--precisions", "fp32-nchw,fp32-cl", "--providers", "fused_cpp,eager,dense",
                 "--min-run-time", "0.005", "--no-progress", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert {(r["precision"], r["layout"], r["layer"], r["placement"]) for r in rows} == {
        (p, layout, layer, placement) for p, layout in (("fp32-nchw", "nchw"), ("fp32-cl", "channels_last"))
        for layer, placement in zip(layers.split(","), ("out", "in"))}
    assert {r["provider"] for r in rows} == {"fused_cpp", "eager", "dense"}
    assert {r["mode"] for r in rows} == {"forward", "forward_backward"}
    assert not any("graph_ms" in r for r in rows)  # CUDA only
    in_shuffle = next(r for r in rows if r["placement"] == "in" and r["provider"] == "eager" and r["mode"] == "forward")
    problem = placement_problems((3,), 1.0, 2, 64)[1]
    assert int(in_shuffle["model_bytes"]) == bytes_model.bytes_moved("eager", problem, "forward", 4)
    payload = json.load(open(tmp_path / "results.json"))
    assert set(payload["rooflines"]) == {"fp32-nchw", "fp32-cl"}
    assert payload["provenance"]["command"][:2] == ["shufflenet-bench", "kernels"]
    assert [p["slug"] for p in payload["problems"]] == layers.split(",")
    markdown = (tmp_path / "results.md").read_text()
    assert "## fp32-nchw: float32, nchw inputs" in markdown and "## fp32-cl: float32, channels_last inputs" in markdown
    assert "in-shuffle: the unit's shuffle moved to the second conv's input" in markdown
    assert "results in" in capsys.readouterr().err


def test_cuda_graph_times_get_their_own_ratios_and_table():
    from shufflenet_ops.bench.layers import add_speedups, graph_time
    from shufflenet_ops.bench.report import graph_table, kernels_markdown

    def row(provider, ms, graph):
        return {"level": "layer", "name": "g3 240->60 28x28 1st", "count": 3, "mode": "forward",
                "provider": provider, "fused": provider == "fused_triton", "median_ms": ms, "p20_ms": ms,
                "p80_ms": ms, "graph_ms": graph, "precision": "bf16-cl", "dtype": "bfloat16",
                "layout": "channels_last"}

    rows = [row("fused_triton", 0.10, 0.04), row("eager", 0.30, 0.20), row("compile", 0.12, 0.12)]
    add_speedups(rows, key=("name", "mode"))
    assert rows[1]["fused_speedup"] == pytest.approx(3.0) and rows[1]["graph_fused_speedup"] == pytest.approx(5.0)
    lines = [[c.strip() for c in line.strip("|").split("|")] for line in graph_table(rows).splitlines()]
    assert lines[0] == ["layer", "mode", "fused ms", "vs eager", "vs compile"]
    assert lines[2] == ["g3 240->60 28x28 1st", "forward", "0.040", "5.00x", "3.00x"]
    info = {"device": "cuda", "gpu": "H200", "torch": "2.x", "date": "2026-12-01T00:00:00", "precisions": ["bf16-cl"]}
    roofline = Roofline(copy_gbs=4000.0, gemm_gflops=5e5, copy_timing=Timing(1, 1, 1, 1),
                        gemm_timing=Timing(1, 1, 1, 1), copy_bytes=1, gemm_label="mm 8192^3")
    for r in rows:
        r.update(effective_gbs=1.0, memory_roof_fraction=0.1, compute_roof_fraction=0.1)
    text = kernels_markdown(rows, info, {"bf16-cl": roofline})
    assert "### CUDA-graph replay (GPU time)" in text and "triton.testing.do_bench" in text

    # A peer compiled with CUDA graphs of its own is not captured again: its wall time stands in.
    compiled = next(p for p in LAYER_PROVIDERS if p.name == "compile")
    setup = Setup(torch.device("cuda"), torch.bfloat16, torch.channels_last, "max-autotune")
    assert graph_time(lambda: None, compiled, setup, Timing(0.12, 0.1, 0.2, -1)) == (0.12, "inductor cudagraph trees (wall)")


NCU_CSV = """==PROF== Connected to process 1234
{"layer": "ignored: the profiled program's own output"}
"ID","Kernel Name","dram__bytes_read.sum","dram__bytes_write.sum","gpu__time_duration.sum"
"","","byte","byte","nsecond"
"0","conv_kernel","1,000,000","500,000","30,000"
"1","shuffle_kernel","250000","250000","10000"
"""


def test_ncu_sums_each_profile_beside_the_bytes_model(tmp_path, monkeypatch):
    """`ncu` runs one profile per layer and provider (here a stand-in ncu that prints a
    canned CSV) and sums each profile's kernels beside the bytes model."""
    from shufflenet_ops.bench import profiling

    fake = tmp_path / "ncu"
    (tmp_path / "canned.csv").write_text(NCU_CSV)
    fake.write_text(f'#!/usr/bin/env bash\n[ "$1" = --version ] && {{ echo "Version 2025.3"; exit 0; }}\n'
                    f'echo "$*" >> {tmp_path}/calls.log\ncat {tmp_path}/canned.csv\n')
    fake.chmod(0o755)
    monkeypatch.setattr(profiling, "pick_device", lambda name: torch.device("cpu"))
    out = tmp_path / "out"
    assert profiling.ncu_main(["--out", str(out), "--ncu", str(fake), "--layers", "g3_240to60_28x28_1st",
                               "--providers", "fused,eager", "--precision", "bf16-cl", "--batch", "4"]) == 0
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert len(calls) == 2 and all("--profile-from-start off" in c and " ncu-profile g3_240to60_28x28_1st " in c
                                   for c in calls)
    payload = json.load(open(out / "ncu_bytes.json"))
    assert payload["provenance"]["ncu"] == "Version 2025.3"
    fused, eager = payload["results"]
    problem = placement_problems((3, 8), 1.0, 4)[0]
    assert fused["provider"] == "fused_cpp" and eager["provider"] == "eager"
    assert fused["dram_bytes"] == 2_000_000 and fused["kernels"] == 2 and fused["kernel_us"] == pytest.approx(40)
    assert fused["model_bytes"] == bytes_model.bytes_moved("fused", problem, "forward", 2)
    assert eager["model_bytes"] == bytes_model.bytes_moved("eager", problem, "forward", 2)
    assert fused["measured_over_model"] == pytest.approx(2_000_000 / fused["model_bytes"])
    assert (out / "ncu" / "ncu_g3_240to60_28x28_1st__bf16-cl__eager.csv").exists()
    assert len(list(csv.DictReader(open(out / "ncu_bytes.csv")))) == 2


@requires_extension
def test_profile_step_tables(tmp_path):
    from shufflenet_ops.bench.__main__ import main

    assert main(["profile-step", "--device", "cpu", "--groups", "3", "--batch", "2", "--input-size", "64",
                 "--layers", "g3_240to60_8x8_1st", "--precisions", "fp32-nchw", "--steps", "2",
                 "--out", str(tmp_path)]) == 0
    text = (tmp_path / "profile_step.txt").read_text()
    assert json.loads(text.splitlines()[0])["command"][1] == "profile-step"
    assert "=== g3_240to60_8x8_1st fp32-nchw batch 2: fused_cpp forward+backward, wall" in text
    assert "Self CPU" in text and "shufflenet_ops::" in text


@requires_extension
def test_host_overhead_on_the_cpu(tmp_path):
    from shufflenet_ops.bench.__main__ import main

    assert main(["host-overhead", "--min-run-time", "0.01", "--out", str(tmp_path / "host.json")]) == 0
    payload = json.load(open(tmp_path / "host.json"))
    assert payload["provenance"]["command"][:2] == ["shufflenet-bench", "host-overhead"]
    us = payload["us_per_call"]
    assert us["public op, no autograd"] > 0 and us["dispatcher only (torch.ops)"] > 0


def test_device_check_runs_the_cli():
    """benchmarks/device_check.sh parses, and every measurement in it is a subcommand of the
    one benchmark CLI (no script of its own)."""
    import re

    from shufflenet_ops.bench.__main__ import SUBCOMMANDS

    path = os.path.join(ROOT, "benchmarks", "device_check.sh")
    assert subprocess.run(["bash", "-n", path], capture_output=True).returncode == 0
    script = open(path).read()
    used = set(re.findall(r'"\$\{BENCH\[@\]\}" ([a-z][a-z-]+)', script))
    assert used == {"host-overhead", "kernels", "ncu", "profile-step"} and used <= set(SUBCOMMANDS)
    assert not re.search(r"benchmarks/\w+\.py", script)


# ---------------------------------------------------------------------------- training
def _train_module():
    from shufflenet_ops.bench import train

    return train


@requires_extension
def test_train_fused_and_naive_track_each_other(tmp_path, capsys):
    train = _train_module()
    assert train.main(["--steps", "4", "--batch", "16", "--width", "0.25", "--no-progress", "--out", str(tmp_path)]) == 0
    summary = json.load(open(tmp_path / "train_results.json"))
    fused, naive = summary["results"]
    assert (fused["implementation"], naive["implementation"]) == ("fused", "naive")
    assert len(fused["losses"]) == len(naive["losses"]) == 4
    # What benchmarks/README.md says: same weights and batches, but float32 is not bitwise
    # (other kernels, the fused network in channels_last): the first loss differs by rounding,
    # and training amplifies the difference step by step.
    gaps = [abs(a - b) for a, b in zip(fused["losses"], naive["losses"])]
    assert summary["first_step_loss_gap"] == gaps[0] < 1e-5
    assert gaps[1] < 1e-3
    assert any(gap > 0 for gap in gaps)
    assert fused["images_per_s"] > 0 and 0 <= fused["test_accuracy"] <= 1
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "test accuracy" in out and "loss gap fused vs naive: " in out and "compare the curves" in out
    assert "about chance" in out  # 4 steps learn nothing, and the output says so


@requires_extension
def test_train_float64_fused_and_naive_agree(tmp_path):
    """In float64 the same steps agree to ~1e-9: the float32 gap is rounding amplified by
    training, not a difference between the implementations."""
    train = _train_module()
    assert train.main(["--steps", "4", "--batch", "16", "--width", "0.25", "--dtype", "float64", "--no-progress",
                       "--out", str(tmp_path)]) == 0
    summary = json.load(open(tmp_path / "train_results.json"))
    assert summary["first_step_loss_gap"] < 1e-12
    assert max(summary["loss_gaps"]) < 1e-9


def test_train_help_shows_the_defaults():
    result = subprocess.run([sys.executable, "-m", "shufflenet_ops.bench", "train", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "(default: 150)" in result.stdout and "(default: float32)" in result.stdout


@requires_extension
def test_train_ddp_two_processes_stay_in_sync(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "shufflenet_ops.bench", "train", "--ddp", "--fused", "--steps", "3", "--batch", "16",
               "--width", "0.25", "--no-progress", "--device", "cpu", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.load(open(tmp_path / "train_results.json"))
    assert summary["provenance"]["world_size"] == 2
    assert summary["provenance"]["command"][:2] == ["shufflenet-bench", "train"]
    (fused,) = summary["results"]
    assert len(fused["losses"]) == 3
    # DDP averages the gradients across ranks: the two replicas must hold identical weights.
    assert fused["ranks_max_param_diff"] == 0.0


# -------------------------------------------------------------------------- install.sh
def _fake_checkout(tmp_path):
    """A copy of install.sh beside the files its stamps cover, and a fake venv whose python
    logs its arguments (pip calls, the import check) instead of running them."""
    import shutil

    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    (root / "csrc").mkdir()
    shutil.copy(os.path.join(ROOT, "scripts", "install.sh"), root / "scripts" / "install.sh")
    for name in ("setup.py", "pyproject.toml"):
        (root / name).write_text(f"# {name}\n")
    (root / "csrc" / "ops.cpp").write_text("int x;\n")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    python = venv / "bin" / "python"
    # The import check ("-c") fails once after $tmp_path/import_fails is created (a rebuild fixes it).
    python.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n'
                      f'if [ "$1" = -c ] && [ -e {tmp_path}/import_fails ]; then rm {tmp_path}/import_fails; exit 1; fi\n')
    python.chmod(0o755)
    return root, venv, log


def _install(root, venv, log) -> list[str]:
    log.write_text("")
    result = subprocess.run(["bash", str(root / "scripts" / "install.sh")], capture_output=True, text=True,
                            env={**os.environ, "VENV": str(venv)}, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line for line in log.read_text().splitlines() if line.startswith("-m pip")]


def test_install_sh_skips_what_did_not_change(tmp_path):
    root, venv, log = _fake_checkout(tmp_path)
    first = _install(root, venv, log)
    assert any("torch==2.13.0" in c for c in first) and any(c.endswith(" onnxruntime") for c in first)
    assert any(c.endswith(" openvino") for c in first)
    assert any("-e" in c.split() and c.endswith("[test,bench]") for c in first)

    assert _install(root, venv, log) == []  # nothing changed: no pip at all

    (root / "csrc" / "ops.cpp").write_text("int y;\n")  # a C++ source changed: rebuild only
    rebuild = _install(root, venv, log)
    assert len(rebuild) == 1 and "--no-deps" in rebuild[0] and "-e" in rebuild[0].split()
    assert _install(root, venv, log) == []

    (root / "csrc" / "new_kernel.cpp").write_text("int z;\n")  # a new source file: rebuild
    assert len(_install(root, venv, log)) == 1

    (tmp_path / "import_fails").touch()  # the extension is gone (or another checkout's): rebuild
    assert len(_install(root, venv, log)) == 1

    (root / "setup.py").write_text("# setup.py, new extra\n")  # requirements changed: everything
    assert any("torch==2.13.0" in c for c in _install(root, venv, log))
    assert _install(root, venv, log) == []


# ---------------------------------------------------------------- deployment runtimes
def _tiny_model_case(batch=2):
    from shufflenet_ops.bench import networks

    # 0.25x g=3 at 32x32: the smallest ShuffleNet V1 (its Stage 4 runs at 1x1).
    return networks.model_case(3, 0.25, batch, 32, ("eval",))


@requires_extension
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_deployment_runtime_runs_the_exported_naive_model(runtime, tmp_path):
    from shufflenet_ops.bench import deploy, networks

    if deploy.missing(runtime):
        pytest.skip(deploy.missing(runtime))
    case = _tiny_model_case()
    provider = next(p for p in NETWORK_PROVIDERS if p.name == runtime)
    setup = Setup(torch.device("cpu"), torch.float32, torch.contiguous_format, "default")
    exports = deploy.ExportCache(str(tmp_path))
    run = networks.prepare(case, provider, "eval", setup, exports)  # checks the output first
    with torch.no_grad():
        expected = case.build(False).eval()(torch.randn(case.input_shape, generator=torch.Generator().manual_seed(1)))
    out = run()
    assert out.shape == (2, 1000)
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-5)
    # One export serves every batch size (dynamic batch dimension).
    batch1 = networks.prepare(_tiny_model_case(batch=1), provider, "eval", setup, exports)
    assert batch1().shape == (1, 1000) and len(exports.paths) == 1


def test_a_runtime_that_computes_something_else_fails_loudly():
    import numpy as np

    from shufflenet_ops.bench import deploy

    expected = torch.tensor([[1.0, -2.0, 0.5]])
    assert deploy.check_outputs("rt", expected.numpy() + 1e-6, expected, rtol=1e-4) < 1e-4
    with pytest.raises(deploy.OutputMismatch, match="differs from the naive PyTorch model's by 0.05"):
        deploy.check_outputs("rt", expected.numpy() + np.float32(0.1), expected, rtol=1e-4)
    with pytest.raises(deploy.OutputMismatch, match="output shape"):
        deploy.check_outputs("rt", expected.numpy()[0], expected, rtol=1e-4)
    with pytest.raises(deploy.OutputMismatch):
        deploy.check_outputs("rt", expected.numpy() * np.nan, expected, rtol=1e-4)


@requires_extension
def test_missing_runtimes_are_skipped_with_one_line_each(tmp_path, monkeypatch, capsys):
    from shufflenet_ops.bench.__main__ import main

    # A module set to None in sys.modules fails to import, as if it were not installed.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert main(["--levels", "models", "--groups", "3", "--width", "0.25", "--input-size", "32", "--model-batch", "1",
                 "--no-compile", "--min-run-time", "0.005", "--no-progress",
                 "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if "skipping" in line]
    assert skipped == [
        "shufflenet-bench: skipping the ONNX Runtime rows: import of onnxruntime halted; None in sys.modules "
        "(pip install -e '.[bench]' installs it)",
        "shufflenet-bench: skipping the OpenVINO rows: import of openvino halted; None in sys.modules "
        "(pip install -e '.[bench]' installs it)",
    ]
    rows = json.load(open(tmp_path / "results.json"))["results"]
    assert {r["provider"] for r in rows} == {"fused", "naive", "naive_channels_last", "fuse_naive"}


# ------------------------------------------------------------------ efficiency, flags
def _model_row(provider, width, ms, macs, batch=1, fused=False):
    return {"level": "model", "name": f"ShuffleNet V1 {width:g}x g3 224px", "groups": 3, "width": width,
            "batch": batch, "mode": "eval", "provider": provider, "fused": fused, "median_ms": ms,
            "p20_ms": ms, "p80_ms": ms, "images_per_s": batch / ms * 1e3, "macs_per_image": macs,
            "extra_width": width != 1.0}


def test_efficiency_is_time_ratio_over_mac_ratio():
    from shufflenet_ops.bench.efficiency import PAPER_EFFICIENCY, efficiency
    from shufflenet_ops.bench.report import efficiency_table

    assert PAPER_EFFICIENCY == pytest.approx(0.65)
    rows = [_model_row("fused", 0.5, 4.0, 38_000_000, fused=True), _model_row("fused", 1.0, 6.0, 140_000_000, fused=True),
            _model_row("fused", 2.0, 20.0, 524_000_000, fused=True),
            _model_row("onnxruntime", 0.5, 2.0, 38_000_000), _model_row("onnxruntime", 1.0, 4.0, 140_000_000)]
    entries = {(e["provider"], e["width_small"]): e for e in efficiency(rows)}
    assert set(entries) == {("fused", 0.5), ("fused", 1.0), ("onnxruntime", 0.5)}
    fused = entries[("fused", 0.5)]
    assert fused["time_ratio"] == pytest.approx(1.5) and fused["mac_ratio"] == pytest.approx(140 / 38)
    assert fused["efficiency"] == pytest.approx(1.5 / (140 / 38))
    assert entries[("fused", 1.0)]["efficiency"] == pytest.approx((20 / 6) / (524 / 140))
    table = efficiency_table(rows)
    assert "| fused (this package) | 3 | 1     | 4.0     | 6.0   | 20.0  | 0.41     | 0.89   |" in table
    assert "0.65" in table and "MACs per image: 0.5x 38M, 1x 140M, 2x 524M" in table


def test_unsteady_rounds_and_contradictory_rows_are_flagged():
    from shufflenet_ops.bench.layers import add_speedups
    from shufflenet_ops.bench.report import layer_table, warnings_list

    def row(provider, mode, rounds):
        ms = sorted(rounds)[len(rounds) // 2]
        return {"level": "layer", "name": "g3 480->120 14x14 1st", "count": 7, "mode": mode,
                "provider": provider, "fused": provider == "fused_cpp", "median_ms": ms, "p20_ms": ms, "p80_ms": ms,
                "round_medians_ms": rounds, "round_spread": max(rounds) / min(rounds)}

    rows = [row("fused_cpp", "forward", [1.0, 1.0, 1.0]),
            row("eager", "forward", [2.6, 7.4, 2.6]),     # the naive time is bimodal: 2.6x or 7.4x
            row("fused_cpp", "backward", [12.0, 12.1, 12.2]),
            row("fused_cpp", "forward_backward", [7.0, 6.9, 7.1]),  # backward alone took longer
            row("eager", "backward", [20.0, 21.0, 22.0]),
            row("eager", "forward_backward", [30.0, 30.5, 31.0])]
    add_speedups(rows, key=("name", "mode"))
    eager_forward = rows[1]
    assert eager_forward["unsteady"] and not rows[4]["unsteady"]
    assert (eager_forward["speedup_round_min"], eager_forward["speedup_round_max"]) == (2.6, 7.4)
    warned = warnings_list(rows)
    assert warned[0] == ("unsteady: g3 480->120 14x14 1st forward: vs eager PyTorch, NCHW 2.60x, "
                         "2.60x-7.40x across the rounds")
    assert any(w.startswith("contradiction: g3 480->120 14x14 1st fused (C++ kernel): backward 12.10 ms > "
                            "forward+backward 7.00 ms") for w in warned)
    assert not any("eager PyTorch, NCHW: backward" in w for w in warned)
    assert "2.60x*" in layer_table(rows, detail=False)  # the table marks the ratio


def test_a_busy_machine_is_flagged():
    from shufflenet_ops.bench.report import busy_machine, warnings_list

    info = {"device": "cpu", "cpu_count": 2, "torch_threads": 2, "load_average_start": [1.2, 1.0, 0.9],
            "load_average_end": [2.6, 2.0, 1.5]}
    assert busy_machine(info) is None  # the run's own 2 threads, and a little more
    info["load_average_end"] = [3.6, 3.0, 2.5]
    assert busy_machine(info).startswith("busy machine: load average 3.6 on 2 cores")
    assert warnings_list([], None, info)[0].startswith("busy machine")
    assert busy_machine({**info, "device": "cuda"}) is None


def test_compute_roof_is_the_best_dense_gemm():
    from shufflenet_ops.bench.roofline import DENSE_GEMMS, DenseGemm, conv1x1, measure_roofline, raise_compute_roof

    # The roof tries MKL's torch.mm and oneDNN's dense 1x1 conv in channels_last.
    assert {g.kind for g in DENSE_GEMMS} == {"mm", "conv1x1"}
    gemms = (DenseGemm("mm", 64, 64, 64), DenseGemm("mm", 256, 32, 32), conv1x1(2, 32, 8))
    assert [g.label for g in gemms] == ["mm 64^3", "mm 256x32x32", "1x1 conv 2x32x8x8->32 CL"]
    assert gemms[2].flops == 2 * (2 * 8 * 8) * 32 * 32
    roof = measure_roofline(torch.device("cpu"), torch.float32, 0.02, copy_mib=1, gemms=gemms)
    assert set(roof.gemm_rates) == {g.label for g in gemms}
    assert roof.gemm_gflops == max(roof.gemm_rates.values())
    assert roof.gemm_rates[roof.gemm_label] == roof.gemm_gflops
    lifted = raise_compute_roof(roof, 2 * roof.gemm_gflops, DenseGemm("mm", 100, 100, 100))
    assert lifted.gemm_gflops == 2 * roof.gemm_gflops and lifted.gemm_label == "mm 100^3"
    assert raise_compute_roof(roof, roof.gemm_gflops / 2, DenseGemm("mm", 100, 100, 100)) is roof
    x = torch.randn(2, 32, 8, 8)  # the conv computes what its label says
    assert gemms[2].make(torch.device("cpu"), torch.float32)().shape == x.shape


def test_default_out_dir_is_a_new_folder_per_run():
    import datetime

    from shufflenet_ops.bench.report import default_out_dir

    when = datetime.datetime(2026, 11, 30, 9, 5, 7)
    assert default_out_dir(when) == os.path.join("shufflenet-bench-results", "2026-11-30_090507")


@requires_extension
def test_v2_model_rows_only_with_the_models_flag():
    """ShuffleNet V2 at the model level behind --models (default v1: the default run is
    unchanged); its case rebuilds from its spec and every eager provider and mode runs it."""
    from shufflenet_ops.bench import networks
    from shufflenet_ops.bench.__main__ import parse_args

    assert parse_args([]).models == ["v1"]
    args = parse_args(["--models", "v1,v2", "--v2-widths", "0.5"])
    assert args.models == ["v1", "v2"] and args.v2_widths == (0.5,)
    with pytest.raises(SystemExit):
        parse_args(["--models", "v3"])
    cases = networks.model_v2_cases((0.5,), (1, 2), 64)
    assert [(c.batch, c.modes) for c in cases] == [(1, ("eval",)), (2, networks.NETWORK_MODES)]
    case = cases[1]
    assert networks.case_from_spec(case.spec) == case and case.name == "ShuffleNet V2 0.5x 64px"
    assert case.groups == 0 and case.macs == shufflenet_ops.count_flops(case.build(False), (1, 3, 64, 64))["total"]
    setup = Setup(torch.device("cpu"), torch.float32, torch.contiguous_format, "default")
    outputs = {}
    for provider in (p for p in NETWORK_PROVIDERS if not p.compiled and p.runtime is None):
        for mode in case.modes:
            assert networks.included(case, provider, mode, full=False)
            result = networks.prepare(case, provider, mode, setup)()
            if mode == "eval":
                outputs[provider.name] = result
    torch.testing.assert_close(outputs["fused"], outputs["naive"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outputs["fuse_naive"], outputs["naive"], rtol=1e-4, atol=1e-4)
    from shufflenet_ops.bench.report import _model_label

    assert _model_label({"name": case.name, "groups": 0, "width": 0.5}) == "V2 0.5x"
