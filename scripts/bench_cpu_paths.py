#!/usr/bin/env python3
"""Speed of each CPU path (llama.cpp weight layout) on this machine, side by side.

    python scripts/bench_cpu_paths.py MODEL.gguf [MODEL.gguf ...] [--docs 16 --words 120]

For every model, every path this build offers (plain, and amx or repack) is timed in
fresh processes: each loads the model (timed apart), scores one untimed warm-up request
and then `--repeats` timed ones. Rounds alternate the paths, the order rotated every
round, so the VM's drift falls on both; the table gives each path's median and its
ratio to plain measured in the same run. A path that crashes is reported as such.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import QUERY, documents_of  # noqa: E402

from reranker.cpu_path import extra_path_name  # noqa: E402
from reranker.cpu_support import read_cpu_info, read_llama_build  # noqa: E402


def child(model: str, setting: str, docs: int, words: int, repeats: int, threads: int) -> None:
    """One cell; `setting` is one Reranker option as NAME=VALUE (cpu_path=plain, engine=torch)."""
    from reranker import Reranker

    name, _, value = setting.partition("=")
    documents = documents_of(docs, words)
    started = time.perf_counter()
    with Reranker(model, n_threads=threads, **{name: value}) as ranker:
        loaded = time.perf_counter() - started
        ranker.score(QUERY, documents)  # warm-up
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            scored = ranker.score(QUERY, documents)
            times.append(time.perf_counter() - began)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB
    print(json.dumps({"load": loaded, "times": times, "tokens": scored.total_tokens,
                      "peak_mb": peak_mb}))


def run_cell(model: Path, setting: str, args) -> dict:
    """`child` in a fresh process; `setting` as for `child`."""
    return run_child(__file__, str(model), setting, args)


def run_child(script: str, target: str, cell: str, args) -> dict:
    """`script --child TARGET CELL` with the workload of `args`, in a fresh process: its
    last line of output as JSON, or {"error": why} if it failed or crashed."""
    command = [sys.executable, script, "--child", target, cell, "--docs", str(args.docs),
               "--words", str(args.words), "--repeats", str(args.repeats),
               "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (f"crashed (signal {-done.returncode})" if done.returncode < 0
                  else (done.stderr.strip().splitlines() or ["failed"])[-1])
        return {"error": reason}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--words", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="timed requests per process")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.docs, args.words, args.repeats, args.threads)
        return 0
    if not args.models:
        parser.error("name at least one GGUF file")

    build, cpu = read_llama_build(), read_cpu_info()
    paths = ["plain"] + [p for p in [extra_path_name(build.extra_buffer_types)] if p]
    print(f"cpu: {cpu.model}, {args.threads} threads; llama-cpp-python "
          f"{build.llama_cpp_python} ({build.compiler or 'compiler unknown'}); "
          f"buffers: {', '.join(build.extra_buffer_types) or 'none'}")
    print(f"workload: {args.docs} documents x {args.words} words, {args.rounds} rounds x "
          f"{args.repeats} timed requests per path")
    results = {}
    for model in args.models:
        cells: dict[str, list[dict]] = {path: [] for path in paths}
        for round_number in range(args.rounds):
            order = paths[round_number % len(paths):] + paths[:round_number % len(paths)]
            for path in order:
                cells[path].append(run_cell(model, f"cpu_path={path}", args))
        results[model.name] = cells
        plain_median = None
        for path in paths:
            errors = [c["error"] for c in cells[path] if "error" in c]
            if errors:
                print(f"{model.name:28} {path:7} {errors[0]}")
                continue
            times = [t for c in cells[path] for t in c["times"]]
            loads = [c["load"] for c in cells[path]]
            median = statistics.median(times)
            if path == "plain":
                plain_median = median
            ratio = f"speed {plain_median / median:.2f}x plain's" if plain_median else ""
            print(f"{model.name:28} {path:7} median {median:6.2f} s (min {min(times):.2f}, "
                  f"max {max(times):.2f}) load {statistics.median(loads):.2f} s "
                  f"{cells[path][0]['tokens']} tokens  {ratio}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu.model, "threads": args.threads,
                                         "build": build.llama_cpp_python,
                                         "compiler": build.compiler,
                                         "buffers": build.extra_buffer_types,
                                         "docs": args.docs, "words": args.words,
                                         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
