#!/usr/bin/env bash
# Builds the GPU test and benchmark binaries here (no GPU needed) and gathers what the lent GPU
# machine needs into .gpu/ (git-ignored): binaries, Google Benchmark's shared library, the
# golden files GPU tests read, and gpu_check.sh. Carry .gpu to the GPU machine and run
#   bash .gpu/gpu_check.sh "$OUT"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
gecko_install_deps
gecko_configure
cmake --build "$GECKO_BUILD_DIR" -j "$GECKO_JOBS" --target gecko_gpu_tests gecko_bench gecko_demo gecko_stream_long_context gecko_train_tiny
B="$GECKO_ROOT/.gpu"
rm -rf "$B" && mkdir -p "$B/golden"
cp "$GECKO_BUILD_DIR/tests/gecko_gpu_tests" "$GECKO_BUILD_DIR/bench/gecko_bench" "$GECKO_BUILD_DIR/examples/gecko_demo" "$B/"
for f in "$GECKO_BUILD_DIR"/examples/gecko_*; do [ -x "$f" ] && [ -f "$f" ] && cp "$f" "$B/"; done
cp "$(ldconfig -p | awk '/libbenchmark.so.1debian / {print $NF; exit}')" "$B/" 2>/dev/null ||
  cp /usr/lib/x86_64-linux-gnu/libbenchmark.so.1* "$B/"
golden="${GECKO_GOLDEN_DIR:-$GECKO_ROOT/../shared/golden}"
[ -d "$golden" ] && cp "$golden"/mega_*.safetensors "$golden"/nffn_*.safetensors "$B/golden/" 2>/dev/null || true
cp "$GECKO_ROOT/scripts/gpu_check.sh" "$GECKO_ROOT/bench/llama2_block.py" "$GECKO_ROOT/bench/sca_sdpa_slices.py" \
  "$GECKO_ROOT/bench/torch_peer.py" "$B/"
# The device tool moves at most 64 MiB: ship the binaries stripped and xz-compressed
# (gpu_check.sh unpacks them).
for f in "$B"/gecko_*; do strip "$f" && xz -T0 -1 -f "$f"; done
( cd "$GECKO_ROOT" && echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- include bench tests examples || echo -dirty)" ) > "$B/COMMIT"
du -sh "$B"
