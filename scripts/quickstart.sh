#!/usr/bin/env bash
# The README's main job: set up (idempotent) and run the fused-vs-unfused benchmark on this
# machine's own device (CUDA if present, else CPU). Extra arguments go to shufflenet-bench.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/install.sh"
exec "${VENV:-$root/.venv}/bin/shufflenet-bench" "$@"
