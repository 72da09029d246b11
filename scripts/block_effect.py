#!/usr/bin/env python3
"""How a smaller block budget changes scores, against the published single block.

    python scripts/block_effect.py MODEL.gguf [--docs 64 --words 300] [--budget 8192 ...]

Scores one generated request with the published budget (131072 tokens: one block for
up to 125 documents) and with each --budget, in one process, and prints per budget:
blocks, prompt tokens, and the agreement of its scores with the published
budget's (Kendall tau-b, shared top 1/5/10, largest |score difference|). Speed and
peak memory per budget: scripts/bench.py --block-tokens (a fresh process each).

On generated (random) weights this shows the mechanics, not the effect on ranking
quality; with the real weights measure that with `reranker-cli eval --block-tokens`.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import QUERY, documents_of  # noqa: E402

from reranker import Reranker  # noqa: E402
from reranker.evaluation.agreement import measure_agreement  # noqa: E402
from reranker.reranker import BLOCK_TOKENS  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--docs", type=int, default=64)
    parser.add_argument("--words", type=int, default=300)
    parser.add_argument("--budget", type=int, action="append", default=[],
                        help="block token budget to compare (repeat; default 8192 and 4096)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()

    docs = documents_of(args.docs, args.words)
    baseline = None
    for budget in [BLOCK_TOKENS] + (args.budget or [8192, 4096]):
        with Reranker(args.model, n_threads=args.threads, block_tokens=budget) as ranker:
            scored = ranker.score(QUERY, docs)
        line = f"budget {budget:>6}: {scored.blocks} block(s), {scored.total_tokens:>6} tokens"
        if baseline is None:
            baseline = scored.scores
        else:
            agreement = measure_agreement([baseline], [scored.scores])
            line += (f" | vs one block: tau {agreement.kendall_tau:.3f}, top-1 {agreement.top_1:.0%},"
                     f" top-5 {agreement.top_5:.0%}, top-10 {agreement.top_10:.0%},"
                     f" max|diff| {agreement.max_abs_diff:.3f}")
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
