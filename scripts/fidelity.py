#!/usr/bin/env python3
"""Score agreement and speed of converted models against the transformers reference.

    python scripts/fidelity.py CHECKPOINT_DIR MODEL.gguf [MODEL.gguf ...] [--docs 16 --words 120]

Runs the published scoring on Hugging Face transformers (float32, reranker/testing/reference.py)
and on each GGUF with the same prompt and threads, and prints per model: file size,
seconds per request, max |score difference| and whether the ranking is identical.
Needs the test extra (torch, transformers).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import QUERY, documents_of  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--words", type=int, default=120)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()

    import torch

    from reranker.testing.reference import ReferenceReranker
    from reranker import Reranker

    torch.set_num_threads(args.threads)
    query = QUERY
    docs = documents_of(args.docs, args.words)
    reference = ReferenceReranker(args.checkpoint)
    started = time.monotonic()
    expected = reference.scores(query, docs)
    reference_seconds = time.monotonic() - started
    print(f"transformers float32: {reference_seconds:.1f} s, {args.docs} docs x {args.words} words")
    for model in args.models:
        with Reranker(model, n_threads=args.threads) as ranker:
            ranker.score(query, docs[:1])  # warm-up
            started = time.monotonic()
            scored = ranker.score(query, docs)
            seconds = time.monotonic() - started
        same = bool((np.argsort(-scored.scores) == np.argsort(-expected)).all())
        print(f"{model.name:32} {model.stat().st_size / 1e6:8.1f} MB  {seconds:6.1f} s  "
              f"{scored.total_tokens} tokens  max|diff| {np.abs(scored.scores - expected).max():.1e}  "
              f"same ranking: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
