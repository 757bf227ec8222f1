# Shared by scripts/*.sh: install what a fresh Debian/Ubuntu machine lacks, configure, build.
set -euo pipefail

GECKO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GECKO_BUILD_DIR="${GECKO_BUILD_DIR:-$GECKO_ROOT/build}"
GECKO_JOBS="${GECKO_JOBS:-$(nproc)}"

gecko_install_deps() {
  local pkgs=(cmake ninja-build g++ doctest-dev nlohmann-json3-dev libbenchmark-dev)
  local missing=()
  for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! command -v nvcc >/dev/null 2>&1; then
    if [ -x /usr/local/cuda/bin/nvcc ]; then
      export PATH="/usr/local/cuda/bin:$PATH"
    else
      echo "error: nvcc (CUDA toolkit >= 12) is required to build gecko's CUDA sources" >&2
      exit 1
    fi
  fi
}

gecko_configure() {
  cmake -S "$GECKO_ROOT" -B "$GECKO_BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
}
