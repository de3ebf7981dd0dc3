#!/usr/bin/env bash
# One prepared check of the Triton GPU kernels on a fresh GPU machine with no internet
# (Python 3.12, torch + CUDA, triton, pytest, ncu preinstalled). Every measurement is a
# subcommand of the project's one benchmark CLI, python -m shufflenet_ops.bench.
#
#   bash benchmarks/device_check.sh OUTDIR          # from the repository root
#
# Steps (each time-boxed; the whole run stays within DEVICE_CHECK_BUDGET_S):
#   1. environment: nvidia-smi, python/torch/triton/CUDA versions, ncu, git commit
#   2. build + install against the torch that is there: pip install --no-build-isolation -e .
#   3. CUDA tests: tests/test_cuda.py (the interpreter suite's cases on CUDA, every ShuffleNet V1
#      1x1 layer, fp16/bf16, batch 128, >2^31 elements, compile, opcheck, determinism)
#   3b. host time per call of each launcher: shufflenet_ops.bench host-overhead --device cuda
#   4. the GPU benchmark: shufflenet_ops.bench kernels (both shuffle placements on Stage 2's
#      layers, bf16 channels_last and fp32 NCHW: fused vs eager NCHW/channels_last vs
#      torch.compile max-autotune vs the dense conv; wall time and CUDA-graph replay)
#   5. the README's main job on CUDA: python -m shufflenet_ops.bench --device cuda --quick
#   6. Nsight Compute: shufflenet_ops.bench ncu, DRAM bytes and kernel time of fused vs unfused
#      forward on three layers, beside the bytes model (shufflenet_ops/bench/bytes_model.py)
#   7. torch.profiler of one fused forward+backward step: shufflenet_ops.bench profile-step
# OUTDIR receives at most 8 files (what the device tool brings back): device_check.log,
# summary.json, cuda_tests.xml, kernels.{csv,json} (step 4's results.csv/json),
# ncu_bytes.{csv,json}, extras.tar.gz (build log, step 4's results.md, the host-overhead JSON,
# the CLI's results folder, ncu's raw output, the profile).
#
# Knobs: PYTHON (default python3), DEVICE_CHECK_BUDGET_S (default 420), KERNELS_ARGS (extra
# flags for the kernels step, e.g. "--compile-mode default"), BENCH_CLI_ARGS (extra flags for
# the CLI step, e.g. "--no-compile"), DEVICE_CHECK_XDIST (pytest-xdist workers, default 4),
# SHUFFLENET_OPS_TRITON_AUTOTUNE (default 0 here: fixed tiles, no autotuning compiles; 1 to
# autotune), DEVICE_CHECK_SKIP="build tests host kernels bench_cli ncu profile" (any subset),
# DEVICE_CHECK_ALLOW_CPU=1 (smoke-run the steps a CPU can do: environment, build, test
# collection, the CLI's argument parsing).
set -uo pipefail

OUT=${1:?usage: bash benchmarks/device_check.sh OUTDIR}
PY=${PYTHON:-python3}
# Fixed tiles unless asked otherwise: autotuning compiles every tile config of every shape
# before its first call, which does not fit the benchmark steps' budget.
export SHUFFLENET_OPS_TRITON_AUTOTUNE=${SHUFFLENET_OPS_TRITON_AUTOTUNE:-0}
BUDGET=${DEVICE_CHECK_BUDGET_S:-420}
SKIP=" ${DEVICE_CHECK_SKIP:-} "
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
mkdir -p "$WORK/ncu" "$WORK/bench_cli" "$WORK/kernels"
BENCH=("$PY" -m shufflenet_ops.bench)
exec > >(tee "$OUT/device_check.log") 2>&1
START=$(date +%s)
declare -A STATUS DURATION

elapsed() { echo $(( $(date +%s) - START )); }
left() { local l=$(( BUDGET - $(elapsed) )); echo $(( l > 0 ? l : 0 )); }
# step NAME MAX_SECONDS CMD...: run CMD with a timeout of min(MAX, time left), record status.
step() {
  local name=$1 max=$2; shift 2
  local t; t=$(left); (( t > max )) && t=$max
  if [[ "$SKIP" == *" $name "* ]]; then STATUS[$name]=skipped; echo "== $name: skipped (DEVICE_CHECK_SKIP)"; return 0; fi
  if (( t < 10 )); then STATUS[$name]=no_time; echo "== $name: skipped, out of time budget"; return 0; fi
  echo "== $name (timeout ${t}s, elapsed $(elapsed)s): $*"
  local s; s=$(date +%s)
  timeout --signal=INT --kill-after=15 "$t" "$@"
  local rc=$?
  DURATION[$name]=$(( $(date +%s) - s ))
  case $rc in 0) STATUS[$name]=ok ;; 124|130|137) STATUS[$name]="timeout(${t}s)" ;; *) STATUS[$name]="failed(rc=$rc)" ;; esac
  echo "== $name: ${STATUS[$name]} in ${DURATION[$name]}s"
  return 0
}

echo "== shufflenet_ops device check, $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET}s"
echo "== git: $(git rev-parse HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) changed paths"
echo "== host: $(hostname) $(uname -r), $(nproc) cores"
HAVE_GPU=1
if command -v nvidia-smi >/dev/null; then
  nvidia-smi || HAVE_GPU=0
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv || true
else
  echo "nvidia-smi: not found"; HAVE_GPU=0
fi
"$PY" - <<'EOF' || HAVE_GPU=0
import platform, sys, torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
try:
    import triton; print("triton", triton.__version__)
except ImportError as e:
    print("triton missing:", e)
for mod in ("pytest", "xdist", "hypothesis"):
    try:
        __import__(mod); print(mod, "ok")
    except ImportError:
        print(mod, "MISSING")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, "sms", p.multi_processor_count, "memory GiB", round(p.total_memory / 2**30, 1))
sys.exit(0 if torch.cuda.is_available() else 3)
EOF
command -v ncu >/dev/null && ncu --version | tail -1 || echo "ncu: not found"
command -v nvcc >/dev/null && nvcc --version | tail -2 || echo "nvcc: not found"
if (( HAVE_GPU == 0 )) && [[ "${DEVICE_CHECK_ALLOW_CPU:-0}" != 1 ]]; then
  echo "== no usable CUDA device: stopping (DEVICE_CHECK_ALLOW_CPU=1 smoke-runs the CPU-possible steps)"
  echo '{"gpu": false, "status": "no CUDA device"}' > "$OUT/summary.json"
  exit 1
fi

# ---------------------------------------------------------------------------- 2. build
# --no-build-isolation: compile against the installed torch; --no-deps --no-index: no internet.
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
step build 200 "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e . \
  > "$WORK/build.log" 2>&1
tail -5 "$WORK/build.log"
"$PY" -c "import torch, shufflenet_ops as so; from shufflenet_ops import _extension; \
print('extension loaded:', _extension.available(), _extension.LOAD_ERROR or ''); \
print('triton registered on CUDA:', all(torch._C._dispatch_has_kernel_for_dispatch_key(s.qualname, 'CUDA') for s in so.ops.SPECS) if _extension.available() else False)"

# ------------------------------------------------------------------------------ 3. tests
XDIST=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n "${DEVICE_CHECK_XDIST:-4}")
if (( HAVE_GPU )); then
  # Fixed tiles inside the tests (see the fixture); autotuning has its own test.
  step tests 170 "$PY" -m pytest tests/test_cuda.py -q -rs "${XDIST[@]}" -p no:cacheprovider \
    --junitxml="$OUT/cuda_tests.xml" --durations=10
else
  step tests 60 "$PY" -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider --junitxml="$OUT/cuda_tests.xml"
fi

# ------------------------------------------------------------------- 3b. host overhead
# Host time per call of each piece of a fused forward+backward: where a step's wall time
# exceeds its GPU time, this says which calls the host path goes to.
if (( HAVE_GPU )); then
  step host 60 "${BENCH[@]}" host-overhead --device cuda --out "$WORK/host_overhead_cuda.json"
fi

# -------------------------------------------------------------------------- 4. benchmark
if (( HAVE_GPU )); then
  # max-autotune compiles dominate: keep them only if there is time for them.
  COMPILE=(); (( $(left) < 200 )) && COMPILE=(--no-compile)
  # shellcheck disable=SC2086  # KERNELS_ARGS is a list of flags
  step kernels 190 "${BENCH[@]}" kernels --device cuda --quick "${COMPILE[@]}" ${KERNELS_ARGS:-} --no-progress \
    --out "$WORK/kernels"
  # The results are rewritten after every layer: a step cut off by its timeout keeps its rows.
  for ext in csv json; do
    [[ -f "$WORK/kernels/results.$ext" ]] && mv "$WORK/kernels/results.$ext" "$OUT/kernels.$ext"
  done
else
  step kernels 60 "${BENCH[@]}" kernels --help
fi

# ------------------------------------------------- 5. the README's main job on this GPU
# Before ncu: the ncu profiles take whatever budget is left.
if (( HAVE_GPU )); then
  # shellcheck disable=SC2086  # BENCH_CLI_ARGS is a list of flags
  step bench_cli 90 "${BENCH[@]}" --device cuda --quick ${BENCH_CLI_ARGS:-} --no-progress --out "$WORK/bench_cli"
else
  step bench_cli 60 "${BENCH[@]}" --help
fi

# -------------------------------------------------------------------------------- 6. ncu
# One profile per layer and provider (a process each under ncu); the summary is rewritten
# after every profile, so a step cut off by its timeout keeps the profiles done.
NCU_LAYERS=g3_240to60_28x28_1st,g8_384to96_28x28_1st,g8_96to384_28x28_2nd_in-shuffle
if (( HAVE_GPU )) && command -v ncu >/dev/null; then
  step ncu 100 "${BENCH[@]}" ncu --layers "$NCU_LAYERS" --providers fused,eager_channels_last --precision bf16-cl \
    --out "$OUT" --raw-dir "$WORK/ncu"
elif (( HAVE_GPU )); then
  STATUS[ncu]="no ncu"
else
  step ncu 60 "${BENCH[@]}" ncu --help
fi

# ------------------------------------------------------------------------ 7. profile-step
if (( HAVE_GPU )); then
  step profile 40 "${BENCH[@]}" profile-step --layers g3_240to60_28x28_1st --precisions bf16-cl --steps 10 \
    --out "$WORK"
fi

# ---------------------------------------------------------------------------- summary
tar -czf "$OUT/extras.tar.gz" -C "$WORK" . 2>/dev/null
{
  echo "{"
  echo "  \"gpu\": $([[ $HAVE_GPU == 1 ]] && echo true || echo false),"
  echo "  \"elapsed_s\": $(elapsed),"
  echo "  \"git_commit\": \"$(git rev-parse HEAD 2>/dev/null)\","
  echo "  \"steps\": {"
  first=1
  for k in build tests host kernels bench_cli ncu profile; do
    [[ -n "${STATUS[$k]:-}" ]] || continue
    (( first )) || echo ","
    printf '    "%s": {"status": "%s", "seconds": %s}' "$k" "${STATUS[$k]}" "${DURATION[$k]:-null}"
    first=0
  done
  echo ""
  echo "  }"
  echo "}"
} > "$OUT/summary.json"
cat "$OUT/summary.json"
echo "== done in $(elapsed)s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
rm -rf "$WORK"
FAILED=0
for k in build tests host kernels bench_cli ncu profile; do
  [[ "${STATUS[$k]:-ok}" == ok || "${STATUS[$k]}" == skipped ]] || FAILED=1
done
exit $FAILED
