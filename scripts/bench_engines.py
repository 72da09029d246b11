#!/usr/bin/env python3
"""Speed and peak memory of each engine (llama.cpp, torch) on this machine, side by side,
and of Hugging Face transformers on the checkpoint the GGUF was converted from.

    python scripts/bench_engines.py MODEL.gguf [--transformers CHECKPOINT_DIR]
                                    [--docs 16 --words 120 --rounds 1]

Every cell is a fresh process: it loads the model (timed apart), scores one untimed
warm-up request and then `--repeats` timed ones, and reports its peak resident memory.
Rounds alternate the cells, the order rotated every round. With `--transformers`, three
baselines run the same documents through the published prompt on transformers' Qwen3Model
(`reranker/testing/reference.py`): float32, bf16 loaded straight from the checkpoint, and
bf16 converted after a float32 load (`model.to(torch.bfloat16)`, as the AMX issue measured).
The summary gives every cell's speed against transformers bf16 measured in the same run,
and what `auto` takes here. `reranker-cli doctor --model` decides `auto` from three requests
per engine; where it recorded both engines (llama.cpp+torch, each for the lengths it is
faster at), an `auto` cell times that too. This script is for the record in
docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import QUERY, documents_of  # noqa: E402
from bench_cpu_paths import run_cell, run_child  # noqa: E402  (engines' cells: its children)

from reranker.cpu_support import read_cpu_info  # noqa: E402
from reranker.engine_choice import ENGINES, ROUTED, resolve_engine  # noqa: E402

# transformers baselines: cell name -> (dtype, loaded as float32 first)
TRANSFORMERS = {"transformers float32": ("float32", False),
                "transformers bf16": ("bfloat16", False),
                "transformers bf16 via float32": ("bfloat16", True)}
BASELINE = "transformers bf16"


def transformers_child(checkpoint: str, cell: str, docs: int, words: int, repeats: int,
                       threads: int) -> None:
    """One transformers cell, printed as JSON like bench_cpu_paths' cells."""
    import torch
    from transformers import Qwen3Model

    from reranker.testing.reference import ReferenceReranker

    dtype_name, via_float32 = TRANSFORMERS[cell]
    torch.set_num_threads(threads)
    documents = documents_of(docs, words)
    started = time.perf_counter()
    backbone = Qwen3Model.from_pretrained(checkpoint, dtype=torch.float32 if via_float32
                                          else getattr(torch, dtype_name)).eval()
    backbone = backbone.to(getattr(torch, dtype_name))
    reference = ReferenceReranker(Path(checkpoint), backbone=backbone)
    loaded = time.perf_counter() - started
    with torch.inference_mode():
        reference.scores(QUERY, documents)  # warm-up
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            reference.scores(QUERY, documents)
            times.append(time.perf_counter() - began)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB
    tokens = len(reference.prompt_ids(QUERY, documents))
    print(json.dumps({"load": loaded, "times": times, "tokens": tokens, "peak_mb": peak_mb}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, nargs="?")
    parser.add_argument("--transformers", type=Path, metavar="CHECKPOINT_DIR",
                        help="also time transformers on the checkpoint MODEL was converted from")
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--words", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="timed requests per process")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--child", nargs=2, metavar=("CHECKPOINT", "CELL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        transformers_child(args.child[0], args.child[1], args.docs, args.words, args.repeats,
                           args.threads)
        return 0
    if args.model is None:
        parser.error("a MODEL.gguf is required")
    names = [name for name in ENGINES if name != "auto"]
    names += ["auto"] if resolve_engine("auto", args.model).name == ROUTED else []
    names += list(TRANSFORMERS) if args.transformers else []
    cells: dict[str, list[dict]] = {name: [] for name in names}
    for round_number in range(args.rounds):
        order = names[round_number % len(names):] + names[:round_number % len(names)]
        for name in order:
            result = (run_child(__file__, str(args.transformers), name, args)
                      if name in TRANSFORMERS else run_cell(args.model, f"engine={name}", args))
            cells[name].append(result)
            print(f"round {round_number + 1} {name}: {result}", file=sys.stderr)
    summary = summarize(cells)
    print(f"cpu: {read_cpu_info().model}, {args.threads} threads; {args.model.name}, "
          f"{args.docs} x {args.words} words")
    baseline = summary.get(BASELINE)
    if baseline and "error" in baseline:
        baseline = None
    columns = ["engine", "seconds (median)", "load s", "peak MB"]
    columns += [f"speed vs {BASELINE}", f"memory vs {BASELINE}"] if baseline else []
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for name, row in summary.items():
        if "error" in row:
            print(f"| {name} | {row['error']} |" + " |" * (len(columns) - 2))
            continue
        cells = [name, f"{row['seconds']:.2f}", f"{row['load']:.2f}", f"{row['peak_mb']:.0f}"]
        if baseline:
            cells += [f"{baseline['seconds'] / row['seconds']:.2f}x",
                      f"{row['peak_mb'] / baseline['peak_mb']:.2f}"]
        print("| " + " | ".join(cells) + " |")
    auto = resolve_engine("auto", args.model)
    print(f"auto here: {auto.name} ({auto.reason})")
    if args.json:
        args.json.write_text(json.dumps({"cpu": read_cpu_info().model, "args": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()}, "auto": auto.name, "summary": summary,
            "cells": cells}, indent=2))
    return 0


def summarize(cells: dict[str, list[dict]]) -> dict[str, dict]:
    """Per cell: the median timed request, median load and the highest peak (or an error)."""
    summary = {}
    for name, runs in cells.items():
        good = [run for run in runs if "error" not in run]
        if not good:
            summary[name] = {"error": runs[0]["error"]}
            continue
        summary[name] = {"seconds": statistics.median(t for run in good for t in run["times"]),
                         "load": statistics.median(run["load"] for run in good),
                         "peak_mb": max(run["peak_mb"] for run in good),
                         "tokens": good[0]["tokens"]}
    return summary


if __name__ == "__main__":
    sys.exit(main())
