"""Options that tune the runtime, shared by the commands that score documents."""
from __future__ import annotations

import click

from reranker.cpu_path import CPU_PATHS, ENV_VAR
from reranker.engine_choice import ENGINES, ENV_VAR as ENGINE_ENV_VAR
from reranker.extras import install_hint
from reranker.reranker import BLOCK_TOKENS

block_tokens_option = click.option(
    "--block-tokens", type=click.IntRange(min=1024), default=BLOCK_TOKENS, show_default=True,
    help="Token budget of one block of documents. The published default fits up to 125 "
         "documents in one block. A smaller budget splits long lists into more blocks: less "
         "memory (the f16 KV cache costs 112 KB per token of a block on the 0.6B model) and "
         "less attention work, but documents in different blocks no longer see each other, "
         "which changes scores (docs/benchmarks.md).")

cpu_path_option = click.option(
    "--cpu-path", type=click.Choice(CPU_PATHS), default=None,
    help="llama.cpp's weight layout: amx (Intel AMX kernels), repack (its repacked layout "
         "for AVX/NEON), plain (weights as in the file) or auto: AMX only once "
         "`reranker-cli doctor` has verified it on this build, else repack where there is "
         f"no AMX. Default: ${ENV_VAR} or auto.")

engine_option = click.option(
    "--engine", type=click.Choice(ENGINES), default=None,
    help="What runs the model: llama.cpp, torch (PyTorch on the same GGUF; "
         f"{install_hint('torch')}) or auto: what `reranker-cli doctor --model FILE` measured as "
         "faster for this file on this machine (torch, llama.cpp, or both with prompts routed "
         f"by length), else llama.cpp. Default: ${ENGINE_ENV_VAR} or auto.")
