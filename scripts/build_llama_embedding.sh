#!/usr/bin/env bash
# Build llama.cpp's `llama-embedding` and `llama-tokenize` from the llama.cpp sources
# vendored in the pinned llama-cpp-python sdist, for the benchmark's baseline of
# Jina's published GGUF route (a subprocess per request). Output: build/llama.cpp/bin/.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(.venv/bin/python -c "import llama_cpp; print(llama_cpp.__version__)")
WORK=build/llama.cpp
mkdir -p "$WORK"
if [ ! -d "$WORK/src" ]; then
    .venv/bin/python -m pip download --no-deps --no-binary :all: -d "$WORK/sdist" \
        "llama-cpp-python==$VERSION" >/dev/null
    mkdir -p "$WORK/src"
    tar -xzf "$WORK"/sdist/llama_cpp_python-*.tar.gz -C "$WORK/src" --strip-components=1
fi
cmake -S "$WORK/src/vendor/llama.cpp" -B "$WORK/cmake" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF \
    >/dev/null
cmake --build "$WORK/cmake" --target llama-embedding llama-tokenize llama-bench -j "$(nproc)" >/dev/null
mkdir -p "$WORK/bin"
cp "$WORK/cmake/bin/llama-embedding" "$WORK/cmake/bin/llama-tokenize" "$WORK/cmake/bin/llama-bench" "$WORK/bin/"
echo "built $WORK/bin/llama-embedding (llama.cpp from llama-cpp-python $VERSION)"
