#!/usr/bin/env bash
# Creates (or reuses) a virtual environment and installs shufflenet_ops with its C++
# extension. Used by the README's quick start and by CI.
#   VENV: where the environment goes (default: .venv in the repository root)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip() { "$venv/bin/python" -m pip "$@"; }
# torch first, pinned: 2.13.0 is the CPU build on the machines' local disk; an unpinned
# `torch` would download a multi-GB CUDA build.
pip install -q torch==2.13.0
pip install -q setuptools wheel ninja triton pytest hypothesis expecttest numpy einops tqdm matplotlib scikit-learn onnx onnxscript onnxruntime
# --no-build-isolation: compile against the torch just installed (extensions must match it).
pip install -q --no-build-isolation -e "$root[test,bench]"
"$venv/bin/python" -c "import shufflenet_ops, torch; print('shufflenet_ops', shufflenet_ops.__version__, 'torch', torch.__version__, 'extension built:', shufflenet_ops._extension.available())"
