#!/usr/bin/env bash
# Creates (or reuses) a virtual environment and installs shufflenet_ops with its C++
# extension. Used by the README's quick start and by CI.
#   VENV: where the environment goes (default: .venv in the repository root)
# A repeat run skips what nothing changed since: the package installs when this script,
# setup.py and pyproject.toml are as at the last successful run, the extension build when
# csrc/ and setup.py are too and the environment imports the built extension from this
# checkout. FORCE=1 redoes everything.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip() { "$venv/bin/python" -m pip "$@"; }

# The stamps: sha256 of the files each step depends on (paths and contents).
digest() { (cd "$root" && find "$@" -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64); }
deps_stamp="$(digest scripts/install.sh setup.py pyproject.toml)"
build_stamp="$(digest csrc setup.py)"
deps_file="$venv/.shufflenet_ops-deps.sha256"
build_file="$venv/.shufflenet_ops-build.sha256"
same() { [ "${FORCE:-0}" != 1 ] && [ -f "$2" ] && [ "$(cat "$2")" = "$1" ]; }
check='import sys, shufflenet_ops, torch; ok = shufflenet_ops._extension.available() and shufflenet_ops.__file__.startswith(sys.argv[1] + "/"); print("shufflenet_ops", shufflenet_ops.__version__, "torch", torch.__version__, "extension built:", shufflenet_ops._extension.available()); sys.exit(0 if ok else 1)'

if same "$deps_stamp" "$deps_file" && same "$build_stamp" "$build_file" \
        && "$venv/bin/python" -c "$check" "$root" 2>/dev/null; then
    echo "install.sh: $venv is up to date (nothing changed since the last install; FORCE=1 reinstalls)"
    exit 0
fi
if same "$deps_stamp" "$deps_file"; then
    # Only the C++ sources changed (or the extension is missing): rebuild, no package installs.
    pip install -q --no-build-isolation --no-deps -e "$root"
else
    # torch first, pinned: 2.13.0 is the CPU build on the machines' local disk; an unpinned
    # `torch` would download a multi-GB CUDA build.
    pip install -q torch==2.13.0
    pip install -q setuptools wheel ninja triton pytest hypothesis expecttest numpy einops tqdm matplotlib scikit-learn onnx onnxscript onnxruntime
    # OpenVINO: the second deployment runtime shufflenet-bench compares with (setup.py's bench extra).
    pip install -q openvino
    # --no-build-isolation: compile against the torch just installed (extensions must match it).
    pip install -q --no-build-isolation -e "$root[test,bench]"
fi
"$venv/bin/python" -c "$check" "$root"
echo "$deps_stamp" > "$deps_file"
echo "$build_stamp" > "$build_file"
