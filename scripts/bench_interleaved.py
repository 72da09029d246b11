#!/usr/bin/env python3
"""The runtime's decode path against raw llama.cpp, alternating in one process.

    python scripts/bench_interleaved.py MODEL.gguf [--docs 64 --words 120 --rounds 2]

scripts/bench.py runs each engine in a fresh process, which is right for memory and cold
start but lets the VM's drift between processes (up to 25% at long prompts here) decide
close comparisons. This holds every variant in one process on one copy of the weights
(two copies of the same file in one process ran 10-18% apart here, by where their
memory landed) and alternates them on the same prompt tokens, the cache cleared before
each call and the order rotated every round:
  markers  LlamaEngine.hidden_states at the marker positions (what Reranker.score decodes)
  last     the same engine with one output, to isolate the cost of the marker outputs
  raw      llama.cpp with one output (bench.py's baseline), its own context
  u1024... `--ubatch 1024,256`: the marker capture at other micro-batch sizes (the
           runtime uses 512), for the lever table
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench import QUERY, LlamaBaseline, _blocks_of, documents_of  # scripts/ is sys.path[0]

from reranker import Reranker


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--docs", type=int, default=64)
    parser.add_argument("--words", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--ubatch", default="", metavar="N,N...",
                        help="also time the marker capture at these micro-batch sizes")
    parser.add_argument("--no-raw", dest="raw", action="store_false",
                        help="leave out the raw and one-output variants")
    args = parser.parse_args()

    docs = documents_of(args.docs, args.words)
    ranker = Reranker(args.model, n_threads=args.threads)
    engine = ranker.engine
    queries = [f"{QUERY} (request {i})" for i in range(args.rounds + 1)]
    blocks = [_blocks_of(ranker, query, docs) for query in queries]
    raw = (LlamaBaseline(str(args.model), args.threads, all_outputs=False,
                         flash_attention=engine.flash_attention, loaded_model=engine.llama_model)
           if args.raw else None)
    ubatch = {"markers": engine.n_ubatch, "last": engine.n_ubatch}
    ubatch.update({f"u{int(n)}": int(n) for n in filter(None, args.ubatch.split(","))})

    def run(name: str, request: int) -> float:
        if name in ubatch and engine.n_ubatch != ubatch[name]:
            # A new context at this micro-batch size, on the same weights, made untimed.
            engine.configure_context(n_ubatch=ubatch[name],
                                     n_tokens=max(len(ids) for ids, _ in blocks[request]))
        started = time.perf_counter()
        for ids, positions in blocks[request]:
            engine.reset_cache()  # no prefix reuse: the same work raw does
            if name == "last":
                engine.hidden_states(ids, [len(ids) - 1])
            elif name == "raw":
                raw.run(ids, positions)
            else:
                engine.hidden_states(ids, positions)
        return time.perf_counter() - started

    names = ["markers"] + (["last", "raw"] if args.raw else []) + list(ubatch)[2:]
    print(f"{sum(len(ids) for ids, _ in blocks[0])} tokens, {args.threads} threads", flush=True)
    for name in names:  # warm-up: contexts sized, weights paged in
        run(name, 0)
    for request in range(1, args.rounds + 1):
        order = names[request % len(names):] + names[:request % len(names)]
        timings = {name: run(name, request) for name in order}
        print(f"round {request}: " + ", ".join(f"{n} {timings[n]:.2f} s" for n in order),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
