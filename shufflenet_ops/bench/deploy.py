"""Deployment peers: the naive model exported to ONNX and run by ONNX Runtime or OpenVINO.

People who deploy ShuffleNet on CPUs run it in one of these runtimes, so the whole-model rows
compare the fused PyTorch model with them too. Each model is exported once per run with
``torch.onnx.export(..., dynamo=True)`` and a dynamic batch dimension (one file serves the
batch-1 and the batch-16 rows), and each runtime's output is checked against the naive
PyTorch model before it is timed: a runtime that computes something else would otherwise
win the table silently.

Threads: the same count as torch (``torch.get_num_threads()``). ONNX Runtime gets it as its
intra-op pool, with one inter-op thread and sequential execution; OpenVINO as
``INFERENCE_NUM_THREADS`` with the ``LATENCY`` hint (one stream: one request at a time uses
every thread, as one torch call does). OpenVINO's CPU plugin computes in bf16 by default on
CPUs with AVX512_BF16 or AMX; the ``openvino`` provider asks for the run's precision
(``INFERENCE_PRECISION_HINT``), ``openvino_default`` (``--full``) keeps the default.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import warnings
from typing import Callable, Iterator

import numpy as np
import torch

# provider name -> the modules it needs (onnx and onnxscript: torch.onnx's dynamo exporter).
REQUIREMENTS = {
    "onnxruntime": ("onnxruntime", "onnx", "onnxscript"),
    "openvino": ("openvino", "onnx", "onnxscript"),
    "openvino_default": ("openvino", "onnx", "onnxscript"),
}


class OutputMismatch(RuntimeError):
    """A runtime's output differs from the naive PyTorch model's."""


def missing(provider: str) -> str | None:
    """Why ``provider`` cannot run here (a missing module), or None if it can."""
    for module in REQUIREMENTS[provider]:
        try:
            importlib.import_module(module)
        except ImportError as error:
            return f"{error} (pip install -e '.[bench]' installs it)"
    return None


def version(provider: str) -> str:
    module = importlib.import_module(REQUIREMENTS[provider][0])
    return str(getattr(module, "__version__", "?")).split("-")[0]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs a warning per optional library it does not find (torchvision's
    ops) and prints its steps: neither belongs in the benchmark's output."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation notices about torch internals
            yield
    finally:
        logger.setLevel(level)


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: str) -> str:
    """Export ``module`` (eval, float32, CPU) to ``path`` with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=({0: batch},),
                                    input_names=["x"], output_names=["y"], verbose=False)
        program.save(path)
    return path


def onnxruntime_runner(path: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {"x": x})[0]

    return run


def openvino_runner(path: str, threads: int, precision: str | None) -> Callable[[np.ndarray], np.ndarray]:
    """``precision``: OpenVINO's ``INFERENCE_PRECISION_HINT`` ("f32", "bf16", "f16"), or
    None for the plugin's default."""
    import openvino

    config: dict[str, object] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = openvino.Core().compile_model(path, "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(x: np.ndarray) -> np.ndarray:
        return request.infer([x])[output]

    return run


def openvino_precision(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "f16"}.get(dtype, "f32")


def check_outputs(name: str, got: np.ndarray, expected: torch.Tensor, rtol: float) -> float:
    """Raise ``OutputMismatch`` unless ``got`` matches ``expected`` within ``rtol`` of the
    output's largest magnitude; returns the largest difference, relative to it."""
    expected_np = expected.detach().float().cpu().numpy()
    if got.shape != expected_np.shape:
        raise OutputMismatch(f"{name}: output shape {got.shape}, the naive PyTorch model's {expected_np.shape}")
    scale = max(float(np.abs(expected_np).max()), 1e-30)
    error = float(np.abs(got.astype(np.float32) - expected_np).max()) / scale
    if not error <= rtol:  # NaN fails too
        raise OutputMismatch(f"{name}: output differs from the naive PyTorch model's by {error:.3g} of its "
                             f"largest magnitude (tolerance {rtol:g})")
    return error


class ExportCache:
    """One ONNX file per model (``key``) per run, exported on first use into ``directory``."""

    def __init__(self, directory: str) -> None:
        self.directory, self.paths = directory, {}

    def path(self, key: str, build: Callable[[], torch.nn.Module], example: torch.Tensor) -> str:
        if key not in self.paths:
            os.makedirs(self.directory, exist_ok=True)
            safe = "".join(c if c.isalnum() else "_" for c in key)
            self.paths[key] = export_onnx(build(), example, os.path.join(self.directory, f"{safe}.onnx"))
        return self.paths[key]
