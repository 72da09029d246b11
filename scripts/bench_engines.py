#!/usr/bin/env python3
"""Speed and peak memory of each engine (llama.cpp, torch) on this machine, side by side.

    python scripts/bench_engines.py MODEL.gguf [--docs 16 --words 120 --rounds 1]

Every cell is a fresh process: it loads the model (timed apart), scores one untimed
warm-up request and then `--repeats` timed ones, and reports its peak resident memory.
Rounds alternate the engines, the order rotated every round. This is what
`reranker-cli doctor --model` decides from (one request each); this script is for
the record in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cpu_paths import run_cell  # noqa: E402  (the cells run in its child processes)

from reranker.cpu_support import read_cpu_info  # noqa: E402
from reranker.engine_choice import ENGINES  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, nargs="?")
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--words", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="timed requests per process")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    if args.model is None:
        parser.error("a MODEL.gguf is required")
    engines = [name for name in ENGINES if name != "auto"]
    cells: dict[str, list[dict]] = {name: [] for name in engines}
    for round_number in range(args.rounds):
        order = engines[round_number % len(engines):] + engines[:round_number % len(engines)]
        for engine in order:
            cells[engine].append(run_cell(args.model, f"engine={engine}", args))
            print(f"round {round_number + 1} {engine}: {cells[engine][-1]}", file=sys.stderr)
    print(f"cpu: {read_cpu_info().model}, {args.threads} threads; {args.model.name}, "
          f"{args.docs} x {args.words} words")
    print("| engine | seconds (median) | load s | peak MB |")
    print("| --- | --- | --- | --- |")
    for engine, runs in cells.items():
        good = [run for run in runs if "error" not in run]
        if not good:
            print(f"| {engine} | {runs[0]['error']} | | |")
            continue
        times = [t for run in good for t in run["times"]]
        print(f"| {engine} | {statistics.median(times):.2f} | "
              f"{statistics.median(run['load'] for run in good):.2f} | "
              f"{max(run['peak_mb'] for run in good):.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": read_cpu_info().model, "args": vars(args) | {
            "model": str(args.model), "json": str(args.json)}, "cells": cells}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
