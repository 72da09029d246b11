#!/usr/bin/env bash
# Install the project and its test dependencies into ./.venv (idempotent).
#
# llama-cpp-python is compiled from source on first install (5-9 minutes on two
# cores); pip caches the built wheel, so later installs take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned: where a local CPU wheel of this release is offered (as on
# this project's CI machines) pip takes it instead of downloading a CUDA build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet -e ".[test]"
# On CPUs with AMX the default (GCC 12) build's AMX kernels crash: rebuild with clang 19,
# checked by `reranker-cli doctor`. RERANKER_CLANG_BUILD=0 keeps the default build, which
# is still correct there: `auto` loads weights without the AMX layout until doctor passes.
if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null && [ "${RERANKER_CLANG_BUILD:-1}" != 0 ]; then
    bash scripts/build_llama_clang.sh \
        || echo "warning: the clang 19 build failed; keeping the default build" >&2
fi
echo "installed into .venv: $(.venv/bin/reranker-cli --version)"
