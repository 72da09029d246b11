#!/usr/bin/env bash
# Rebuild .venv's llama-cpp-python with clang 19, for this CPU (GGML_NATIVE), then let
# `reranker-cli doctor` check it.
#
# Why: GCC 12 (Debian 12's compiler) miscompiles ggml's AMX kernels, and a build made
# with it crashes on q8_0 and k-quant files on Intel Xeons with AMX; a clang 19 build of
# the same llama.cpp ran them correctly (README, Supported CPUs). scripts/install.sh runs
# this on CPUs with AMX; elsewhere it is optional.
#
# The wheel is built once per llama-cpp-python version and CPU into a directory of its
# own (pip's wheel cache is keyed by version only, so it would hand back the GCC build),
# so a later install on the same machine takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
if [ ! -x "$PY" ]; then
    echo "error: no .venv here; run scripts/install.sh first" >&2
    exit 1
fi
version=$("$PY" -c 'from importlib.metadata import version; print(version("llama_cpp_python"))')
# The build installed now, named by the sha256 of its CPU library (the wheel's libraries are
# stripped of the compiler's name, so the file itself cannot say who built it).
installed_build() {
    "$PY" -c 'from reranker.cpu_support import read_llama_build
print(read_llama_build().fingerprint)'
}

# A GGML_NATIVE build fits the CPU it was built on: key the wheel by CPU model and flags.
cpu_key=$( { grep -m1 '^model name' /proc/cpuinfo; grep -m1 '^flags' /proc/cpuinfo; } \
           | sha256sum | cut -c1-12)
cache=${RERANKER_WHEEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/reranker/wheels}
wheels="$cache/llama-cpp-python-$version-clang19-$cpu_key"
if [ -f "$wheels/installed-build" ] && [ "$(installed_build)" = "$(cat "$wheels/installed-build")" ]
then
    echo "llama-cpp-python $version is already the clang 19 build of $wheels"
    exit 0
fi

if ! command -v clang++-19 >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing clang 19 and its OpenMP runtime (Debian packages clang-19, libomp-19-dev)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-19 libomp-19-dev >/dev/null
    else
        echo "error: clang++-19 is not installed; install clang 19 and its OpenMP runtime" \
             "(Debian/Ubuntu: apt-get install clang-19 libomp-19-dev) and run this again" >&2
        exit 1
    fi
fi

if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $version with clang 19 (5-10 minutes on two cores)"
    mkdir -p "$cache"
    partial=$(mktemp -d "$cache/.partial-XXXXXX")
    trap 'rm -rf "$partial"' EXIT
    CC=clang-19 CXX=clang++-19 CMAKE_ARGS="-DGGML_NATIVE=ON" \
        "$PY" -m pip wheel --quiet --no-deps --no-cache-dir --no-binary llama-cpp-python \
        --wheel-dir "$partial" "llama-cpp-python==$version"
    rm -rf "$wheels"
    mv "$partial" "$wheels"  # complete, or not there at all
    trap - EXIT
fi
"$PY" -m pip install --quiet --no-deps --force-reinstall "$wheels"/llama_cpp_python-*.whl
installed_build > "$wheels/installed-build"
echo "llama-cpp-python $version is now the clang 19 build of $wheels"
# Each weight family is decoded on every CPU path in child processes; `auto` takes the
# AMX path only once this has passed on this build and CPU.
.venv/bin/reranker-cli doctor
