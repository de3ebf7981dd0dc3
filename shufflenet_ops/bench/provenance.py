"""Where and how a measurement was taken: the one provenance record every subcommand of
``shufflenet-bench`` writes into its JSON (the layer/unit/model run, ``kernels``, ``ncu``,
``host-overhead``, ``train``)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess

import torch

from .. import __version__, _extension


def _git(*args: str) -> str | None:
    """``git args`` in this package's checkout (None outside one, or without git)."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def provenance(device: torch.device, argv: list[str]) -> dict:
    """Date, machine (CPU, GPU), versions, the Triton kernels' settings, the git commit and
    whether the tree was dirty, the command (``argv``: its arguments after the program name)
    and the load average at the start (other processes share the machine: the load says how
    busy it was). Callers add what is theirs (``load_average_end``, the run's options)."""
    from .. import triton as so_triton

    status = _git("status", "--porcelain")
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_gemm": _extension.cpu_gemm() if device.type == "cpu" and _extension.available() else None,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda,
        "shufflenet_ops": __version__,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "command": ["shufflenet-bench", *argv],
        "load_average_start": load_average(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_sm_count=props.multi_processor_count, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    triton_tf32=so_triton.allow_tf32(),
                    triton_autotune=os.environ.get("SHUFFLENET_OPS_TRITON_AUTOTUNE", "1") != "0")
    return info
