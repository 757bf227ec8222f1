#!/usr/bin/env bash
# Builds and runs the demo: on the GPU when one is present, otherwise on the CPU backend.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
gecko_install_deps
gecko_configure -DGECKO_BUILD_TESTS=OFF -DGECKO_BUILD_BENCHMARKS=OFF
cmake --build "$GECKO_BUILD_DIR" -j "$GECKO_JOBS" --target gecko_demo
"$GECKO_BUILD_DIR/examples/gecko_demo" "$@"
