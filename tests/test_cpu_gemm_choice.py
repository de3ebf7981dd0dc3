"""The fp32 CPU kernels on both of their GEMMs.

On a CPU with AVX-512 the fp32 kernels run the register-blocked small_gemm kernels; elsewhere
(and with SHUFFLENET_OPS_CPU_GEMM=blas) they run BLAS. The choice is made once per process,
so the BLAS path is checked in a subprocess: the fp32, channels_last, strided-view, odd-size,
residual and determinism cases of tests/test_ops.py, forced onto BLAS.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from shufflenet_ops import _extension

pytestmark = pytest.mark.skipif(not _extension.available(), reason="the C++ extension is not built")

TESTS = pathlib.Path(__file__).parent
BLAS_CASES = ("float32 or channels_last or noncontiguous or odd_spatial or residual_epilogue "
              "or deterministic or thread_counts or reduced_precision")


def _run(code: str, **env: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_gemm_choice_follows_the_environment():
    choice = "import shufflenet_ops._extension as e; print(e.cpu_gemm())"
    assert _run(choice, SHUFFLENET_OPS_CPU_GEMM="blas") == "blas"
    default = _run(choice, SHUFFLENET_OPS_CPU_GEMM="")
    assert default in ("small_gemm", "blas")
    assert _extension.cpu_gemm() in ("small_gemm", "blas")


@pytest.mark.slow
def test_fp32_kernels_on_blas_match_the_reference():
    env = {**os.environ, "SHUFFLENET_OPS_CPU_GEMM": "blas"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(TESTS / "test_ops.py"), "-q", "-x", "-p", "no:cacheprovider",
         "-k", BLAS_CASES],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
