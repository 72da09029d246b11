"""Options that tune the runtime, shared by the commands that score documents."""
from __future__ import annotations

import click

from reranker.reranker import BLOCK_TOKENS

block_tokens_option = click.option(
    "--block-tokens", type=click.IntRange(min=1024), default=BLOCK_TOKENS, show_default=True,
    help="Token budget of one block of documents. The published default fits up to 125 "
         "documents in one block. A smaller budget splits long lists into more blocks: less "
         "memory (the KV cache costs about 110 KB per token of a block on the 0.6B model) and "
         "less attention work, but documents in different blocks no longer see each other, "
         "which changes scores (docs/benchmarks.md).")
