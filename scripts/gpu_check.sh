#!/usr/bin/env bash
# Runs on the GPU machine, in one call: every GPU test with GECKO_REQUIRE_GPU=1, the same tests
# under compute-sanitizer (memcheck, racecheck), the demo, and the benchmarks. Writes logs and
# the benchmark JSON into the folder given as $1 (at most a few files: the device tool returns 8).
#   usage: bash .gpu/gpu_check.sh OUT_DIR [benchmark filter regex, or "none"]
# Environment: GECKO_NCU_FILTER (a benchmark filter) adds an Nsight Compute pass over one warm
# iteration of those benchmarks into ncu.csv; GECKO_SKIP_TESTS / GECKO_SKIP_SANITIZER / GECKO_SKIP_PEER / GECKO_SKIP_STREAM = 1 skip
# those steps; GECKO_SANITIZER_ARGS (one doctest filter argument, e.g. '--test-case=*tail*,*stream*')
# and GECKO_SANITIZER_TIMEOUT bound the
# sanitizer runs (a call on the lent machine has 10 minutes).
set -uo pipefail
OUT="${1:?usage: gpu_check.sh OUT_DIR [benchmark filter]}"
FILTER="${2:-.}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export LD_LIBRARY_PATH="$HERE${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export GECKO_REQUIRE_GPU=1 GECKO_GOLDEN_DIR="$HERE/golden"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
# Binaries travel xz-compressed (scripts/gpu_bundle.sh).
for f in "$HERE"/*.xz; do
  [ -e "$f" ] || continue
  if command -v xz >/dev/null; then xz -d -f -k "$f"; else python3 -c "import lzma,sys; open(sys.argv[1][:-3],'wb').write(lzma.open(sys.argv[1]).read())" "$f"; fi
  chmod +x "${f%.xz}"
done
status=0
step() { echo "== $*" | tee -a "$LOG"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee -a "$LOG"

if [ "${GECKO_SKIP_TESTS:-0}" != 1 ]; then
  step "gpu tests"
  "$HERE/gecko_gpu_tests" 2>&1 | tee "$OUT/gpu_tests.log" | tail -5 | tee -a "$LOG"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { status=1; echo "GPU TESTS FAILED" | tee -a "$LOG"; }
fi

if [ "${GECKO_SKIP_TESTS:-0}" != 1 ] && [ "${GECKO_SKIP_SANITIZER:-0}" != 1 ]; then
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool"
    timeout "${GECKO_SANITIZER_TIMEOUT:-600}" compute-sanitizer --tool "$tool" --error-exitcode 9 \
      "$HERE/gecko_gpu_tests" ${GECKO_SANITIZER_ARGS:+"$GECKO_SANITIZER_ARGS"} >"$OUT/sanitizer_$tool.log" 2>&1
    rc=$?
    tail -3 "$OUT/sanitizer_$tool.log" | tee -a "$LOG"
    [ $rc -eq 0 ] || { status=1; echo "SANITIZER $tool FAILED (rc $rc)" | tee -a "$LOG"; }
  done
fi

step "demo"
"$HERE/gecko_demo" 2>&1 | tee -a "$LOG"

if [ "${GECKO_SKIP_STREAM:-0}" != 1 ]; then
  step "stream 4,194,304 tokens through the 7B block"
  timeout 400 "$HERE/gecko_stream_long_context" "${GECKO_STREAM_TOKENS:-4194304}" 262144 --json "$OUT/stream.json" 2>&1 |
    tr '\r' '\n' | grep -v 'streaming:' | tee -a "$LOG"
fi

if [ "${GECKO_SKIP_PEER:-0}" != 1 ] && python3 -c "import torch" 2>/dev/null; then
  step "peer: Llama2-7B block (PyTorch SDPA)"
  python3 "$HERE/llama2_block.py" "$OUT/llama2_block.json" 4096 16384 32768 2>&1 | tee -a "$LOG"
  step "peer: sliding chunk attention by PyTorch SDPA, dv in 256-wide slices"
  timeout 300 python3 "$HERE/sca_sdpa_slices.py" "$OUT/sca_sdpa_slices.json" 4096 16384 65536 2>&1 | tee -a "$LOG"
fi

if [ -n "${GECKO_NCU_FILTER:-}" ] && command -v ncu >/dev/null; then
  step "ncu: kernel durations of one warm iteration of $GECKO_NCU_FILTER (bench/ncu_breakdown.py reads it)"
  GECKO_PROFILE_ONE=1 timeout 300 ncu --profile-from-start off --clock-control none --cache-control none \
    --metrics gpu__time_duration.sum --csv "$HERE/gecko_bench" --benchmark_filter="$GECKO_NCU_FILTER" \
    >"$OUT/ncu.csv" 2>/dev/null || echo "ncu failed" | tee -a "$LOG"
fi

[ "$FILTER" = none ] && exit $status
step "benchmarks"
CARD="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
"$HERE/gecko_bench" --benchmark_filter="$FILTER" --benchmark_context=commit="$(cat "$HERE/COMMIT" 2>/dev/null)" \
  --benchmark_context=card="$CARD" --benchmark_out="$OUT/bench.json" --benchmark_out_format=json \
  --benchmark_counters_tabular=true 2>&1 | tee "$OUT/bench.txt" | tail -60
exit $status
