#!/usr/bin/env bash
# Installs what is missing, builds everything (all CUDA sources compile even without a GPU) and
# runs the test suite. GPU tests run when a CUDA device is present and skip otherwise
# (GECKO_REQUIRE_GPU=1 turns a skip into a failure).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
gecko_install_deps
gecko_configure
echo "== building ($GECKO_JOBS jobs)"
cmake --build "$GECKO_BUILD_DIR" -j "$GECKO_JOBS"
echo "== testing"
cd "$GECKO_BUILD_DIR"
ctest --output-on-failure -j "$GECKO_JOBS" "$@"
