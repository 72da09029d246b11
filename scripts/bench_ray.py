#!/usr/bin/env python3
"""Throughput of the Ray path against one process, on one machine.

    python scripts/bench_ray.py MODEL.gguf [--requests 8 --docs 16 --words 120]

Runs the same requests (each its own query over `--docs` documents of `--words` words)
three ways and prints tokens per second:
  process      one Reranker with every core as llama.cpp threads (rerank --batch)
  ray 1x1      reranker.ray.rerank_dataset, 1 replica of 1 thread, on a local Ray
  ray 2x1      2 replicas of 1 thread
On one 2-core machine this measures Ray's overhead, not its scaling: the replicas share
the cores the one process had. The Ray times include starting the replicas (each reads
the GGUF) but not starting Ray itself, which is reported apart. Needs reranker[ray].
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import documents_of, machine  # noqa: E402

from reranker import Reranker  # noqa: E402


def requests_of(count: int, docs: int, words: int) -> list[dict]:
    documents = documents_of(docs * count, words)
    return [{"query": f"Which passage is about harbor city number {i} in winter?",
             "documents": documents[i * docs:(i + 1) * docs]} for i in range(count)]


def one_process(model: Path, requests: list[dict], threads: int) -> dict:
    start = time.perf_counter()
    with Reranker(model, n_threads=threads) as ranker:
        loaded = time.perf_counter()
        tokens = sum(ranker.score(r["query"], r["documents"]).total_tokens for r in requests)
    end = time.perf_counter()
    return {"seconds": end - start, "load_seconds": loaded - start, "tokens": tokens}


def on_ray(model: Path, requests: list[dict], replicas: int, threads: int) -> dict:
    import ray.data

    from reranker.ray import rerank_dataset

    dataset = ray.data.from_items(requests)
    start = time.perf_counter()
    rows = rerank_dataset(dataset, model, replicas=replicas, threads_per_replica=threads,
                          batch_size=1, stats=True).take_all()
    end = time.perf_counter()
    busy: dict[str, float] = {}
    for row in rows:
        busy[row["replica"]] = busy.get(row["replica"], 0.0) + row["seconds"]
    return {"seconds": end - start, "tokens": sum(row["total_tokens"] for row in rows),
            "replica_busy_seconds": sorted(busy.values())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--words", type=int, default=120)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    requests = requests_of(args.requests, args.docs, args.words)

    results = {"process": one_process(args.model, requests, cores)}
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - start
    try:
        for replicas in (1, 2):
            results[f"ray {replicas}x1"] = on_ray(args.model, requests, replicas, 1)
    finally:
        ray.shutdown()

    print(f"{args.requests} requests x {args.docs} documents x {args.words} words; "
          f"{cores} cores; Ray start-up {ray_start:.1f} s (not counted)")
    base = results["process"]["tokens"] / results["process"]["seconds"]
    for name, r in results.items():
        rate = r["tokens"] / r["seconds"]
        print(f"{name:<10} {r['tokens']:>7} tokens {r['seconds']:>7.1f} s {rate:>7.0f} tokens/s "
              f"({rate / base:.2f}x process)")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "ray_start_seconds": ray_start,
                                         "args": vars(args) | {"model": str(args.model),
                                                               "json": str(args.json)},
                                         "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
