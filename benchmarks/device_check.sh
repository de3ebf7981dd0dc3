#!/usr/bin/env bash
# One prepared check of the Triton GPU kernels on a fresh GPU machine with no internet
# (Python 3.12, torch 2.11 + CUDA 13, triton 3.6, pytest, ncu preinstalled).
#
#   bash benchmarks/device_check.sh OUTDIR          # from the repository root
#
# Steps (each time-boxed; the whole run stays under ~7 minutes):
#   1. environment: nvidia-smi, python/torch/triton/CUDA versions, ncu, git commit
#   2. build + install against the torch that is there: pip install --no-build-isolation -e .
#   3. CUDA tests: tests/test_cuda.py (the interpreter suite's cases on CUDA, every ShuffleNet V1
#      1x1 layer, fp16/bf16, batch 128, >2^31 elements, compile, opcheck, determinism)
#   3b. host time per call of each launcher: benchmarks/host_overhead.py --device cuda
#   4. GPU micro-benchmark: benchmarks/gpu_bench.py (fused vs eager NCHW/channels_last vs
#      torch.compile max-autotune; forward rows also timed as CUDA-graph replays)
#   5. the project's CLI on CUDA: python -m shufflenet_ops.bench --device cuda --quick
#   6. Nsight Compute: DRAM bytes and kernel time of fused vs unfused forward on three layers,
#      beside the analytic bytes model
# OUTDIR receives at most 8 files (what the device tool brings back): device_check.log,
# summary.json, cuda_tests.xml, gpu_bench.{csv,json}, ncu_bytes.{csv,json}, extras.tar.gz.
#
# Knobs: PYTHON (default python3), DEVICE_CHECK_BUDGET_S (default 420), GPU_BENCH_ARGS (extra
# flags for gpu_bench.py, e.g. "--compile-mode default"), BENCH_CLI_ARGS (extra flags for the CLI step,
# e.g. "--no-compile"), DEVICE_CHECK_XDIST (pytest-xdist workers, default 4), SHUFFLENET_OPS_TRITON_AUTOTUNE (default
# 0 here: fixed tiles, no autotuning compiles; 1 to autotune),
# DEVICE_CHECK_SKIP="build tests bench ncu" (any subset), DEVICE_CHECK_ALLOW_CPU=1 (smoke-run
# the steps a CPU can do: environment, build, test collection, benchmark CLI parsing).
set -uo pipefail

OUT=${1:?usage: bash benchmarks/device_check.sh OUTDIR}
PY=${PYTHON:-python3}
# Fixed tiles unless asked otherwise: on the first H100 run, autotuning compiles (seconds per
# shape and config) used up the benchmark steps' whole budget.
export SHUFFLENET_OPS_TRITON_AUTOTUNE=${SHUFFLENET_OPS_TRITON_AUTOTUNE:-0}
BUDGET=${DEVICE_CHECK_BUDGET_S:-420}
SKIP=" ${DEVICE_CHECK_SKIP:-} "
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
mkdir -p "$WORK/ncu" "$WORK/bench_cli"
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
print('triton registered on CUDA:', all(torch._C._dispatch_has_kernel_for_dispatch_key('shufflenet_ops::'+o, 'CUDA') for o in so.triton.OPS) if _extension.available() else False)"

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
# Host time per call of each piece of a fused forward+backward (the H200's first run: fused
# forward+backward took 1.1-1.4 ms of wall time for 0.14-0.6 ms of GPU work).
if (( HAVE_GPU )); then
  step host 60 "$PY" benchmarks/host_overhead.py --device cuda --out "$WORK/host_overhead_cuda.json"
fi

# -------------------------------------------------------------------------- 4. benchmark
if (( HAVE_GPU )); then
  # max-autotune compiles dominate: keep them only if there is time for them.
  COMPILE=(); (( $(left) < 200 )) && COMPILE=(--no-compile)
  # shellcheck disable=SC2086  # GPU_BENCH_ARGS is a list of flags
  step bench 190 "$PY" benchmarks/gpu_bench.py --quick "${COMPILE[@]}" ${GPU_BENCH_ARGS:-} --out "$OUT"
else
  step bench 60 "$PY" benchmarks/gpu_bench.py --help
fi

# ------------------------------------------------- 5. the README's main job on this GPU
# Before ncu: on the first H200 run (350 s budget) ncu used the time the CLI needed.
if "$PY" -c "import shufflenet_ops.bench.__main__" 2>/dev/null; then
  # shellcheck disable=SC2086  # BENCH_CLI_ARGS is a list of flags
  step bench_cli 90 "$PY" -m shufflenet_ops.bench --device cuda --quick ${BENCH_CLI_ARGS:-} --out "$WORK/bench_cli"
else
  STATUS[bench_cli]="absent"; echo "== bench_cli: shufflenet_ops.bench not importable, skipped"
fi

# -------------------------------------------------------------------------------- 6. ncu
run_ncu() {
  local layer
  for layer in g3_gconv1_240to60 g8_gconv1_384to96 g8_gconv2_96to384; do
    for variant in fused unfused; do
      (( $(left) < 15 )) && { echo "ncu: out of time before $layer $variant"; return 1; }
      ncu --profile-from-start off --clock-control none --metrics dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum \
        --csv --page raw --print-units base \
        "$PY" benchmarks/gpu_bench.py profile-once "$layer" "$variant" --precision bf16 \
        > "$WORK/ncu/ncu_${layer}__bf16__${variant}.csv" 2> "$WORK/ncu/ncu_${layer}__bf16__${variant}.err" \
        || { echo "ncu failed on $layer $variant:"; tail -5 "$WORK/ncu/ncu_${layer}__bf16__${variant}.err"; return 1; }
    done
  done
}
if (( HAVE_GPU )) && command -v ncu >/dev/null; then
  export -f run_ncu left elapsed; export START BUDGET PY WORK
  step ncu 100 bash -c run_ncu
  shopt -s nullglob; CSVS=("$WORK"/ncu/ncu_*.csv); shopt -u nullglob
  (( ${#CSVS[@]} )) && "$PY" benchmarks/gpu_bench.py ncu-summary --out "$OUT" "${CSVS[@]}"
else
  STATUS[ncu]="no GPU or no ncu"
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
  for k in build tests host bench bench_cli ncu; do
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
for k in build tests host bench ncu; do [[ "${STATUS[$k]:-ok}" == ok || "${STATUS[$k]}" == skipped ]] || FAILED=1; done
exit $FAILED
