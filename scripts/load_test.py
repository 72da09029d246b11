#!/usr/bin/env python3
"""A bounded load test of a running `reranker-cli serve` on this machine.

    python scripts/load_test.py http://127.0.0.1:8080 --workload interactive \
        --requests 40 --concurrency 4 [--json results.json]

Sends a fixed number of requests (and stops after --max-seconds in any case) from
--concurrency clients, then prints throughput and p50/p95/p99 latency. Only
loopback addresses are accepted: this is a tool for measuring a local server.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx

from reranker.cli.serve_command import is_loopback

WORKLOADS = {  # name: (documents, words per document), as in the benchmark issue
    "interactive": (10, 50),
    "16x120": (16, 120),
    "64x120": (64, 120),
    "64x300": (64, 300),
    "200x120": (200, 120),
}
WORDS = ("river city capital market history science music winter harbor mountain language "
         "engine garden library theory ocean forest village bridge festival").split()




def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="interactive")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--api-key")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    if not is_loopback(urlparse(args.url).hostname or ""):
        raise SystemExit(f"{args.url} is not a loopback address; this tool only loads local servers")
    if not 0 < args.requests <= 10_000 or not 0 < args.concurrency <= 64:
        raise SystemExit("--requests must be 1..10000 and --concurrency 1..64")

    n_docs, n_words = WORKLOADS[args.workload]
    rng = random.Random(0)
    body = {"query": "Which passage is about a harbor city in winter?", "return_documents": False,
            "documents": [" ".join(rng.choice(WORDS) for _ in range(n_words))
                          for _ in range(n_docs)]}
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    deadline = time.monotonic() + args.max_seconds
    latencies, statuses, tokens = [], [], []
    lock = threading.Lock()
    remaining = iter(range(args.requests))

    def client() -> None:
        with httpx.Client(timeout=args.max_seconds, headers=headers) as http:
            while time.monotonic() < deadline:
                with lock:
                    if next(remaining, None) is None:
                        return
                started = time.monotonic()
                response = http.post(args.url.rstrip("/") + "/v1/rerank", json=body)
                elapsed = time.monotonic() - started
                with lock:
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        latencies.append(elapsed)
                        tokens.append(response.json()["usage"]["total_tokens"])

    started = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        for future in [pool.submit(client) for _ in range(args.concurrency)]:
            future.result()
    wall = time.monotonic() - started
    if not latencies:
        raise SystemExit(f"no request succeeded; statuses: {sorted(set(statuses))}")
    result = {
        "workload": args.workload, "documents": n_docs, "words": n_words,
        "requests": len(statuses), "ok": len(latencies), "concurrency": args.concurrency,
        "seconds": round(wall, 2), "requests_per_second": round(len(latencies) / wall, 3),
        "tokens_per_request": round(statistics.mean(tokens)),
        "p50": round(percentile(latencies, 0.50), 3), "p95": round(percentile(latencies, 0.95), 3),
        "p99": round(percentile(latencies, 0.99), 3),
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
    }
    print(json.dumps(result))
    if args.json_path:
        with open(args.json_path, "a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
