#!/usr/bin/env python3
"""Side-by-side benchmark of the runtime against its baselines, one process per measurement.

    python scripts/bench.py CHECKPOINT_DIR --model q4_k_m=models/full-q4_k_m.gguf \
        [--model q8_0=...] [--workload 16x120 ...] [--runs 3] [--json docs/bench.json] \
        [--llama-embedding build/llama.cpp/bin/llama-embedding]

CHECKPOINT_DIR is the Hugging Face checkpoint the GGUFs were converted from (for the
transformers baseline); make a real-size one with scripts/make_checkpoint.py --size full.
Engines, each on the same prompt tokens and the same number of threads:
  reranker      this project: outputs only at the markers, hidden states at result_norm
  embeddings    llama.cpp in-process in embeddings mode, every token an output
  raw           llama.cpp decoding the same tokens with one output (the ceiling of this build)
  transformers  Hugging Face transformers float32 (reranker/testing/reference.py)
  subprocess    Jina's published route: llama-embedding per request, JSON of every token
Each measurement runs in a fresh process: the median of --runs timed requests after a
warm-up, the process's peak resident memory, and (for reranker) the cold start of
`reranker-cli rerank` from process start to printed result.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reranker.reranker import BLOCK_TOKENS  # the published default


WORKLOADS = {"interactive": (10, 50), "16x120": (16, 120), "64x120": (64, 120),
             "64x300": (64, 300), "200x120": (200, 120)}
WORDS = ("river city capital market history science music winter harbor mountain language "
         "engine garden library theory ocean forest village bridge festival").split()
QUERY = "Which passage is about a harbor city in winter?"
ENGINES = ("reranker", "embeddings", "raw", "transformers", "subprocess")


def documents(workload: str) -> list[str]:
    return documents_of(*WORKLOADS[workload])


def documents_of(count: int, words: int) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) + "." for _ in range(count)]


def machine() -> dict:
    info = {"cpu": platform.processor() or "unknown", "cores": os.cpu_count(), "flags": []}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["flags"] = sorted(flags & {"avx", "avx2", "fma", "f16c", "avx512f",
                                                "avx512_vnni", "avx512_bf16", "amx_tile"})
    except OSError:
        pass
    return info


# -- worker side: one engine, one model, one workload --------------------------------
def _blocks_of(ranker, query, docs):
    """Prompt token ids and marker positions of each block: the plan `Reranker.score` decodes."""
    return [(list(block.token_ids), block.marker_positions)
            for block in ranker.plan(query, docs).blocks]


class LlamaBaseline:
    """llama.cpp in-process without this project's marker-only capture."""

    def __init__(self, model: str, threads: int, all_outputs: bool, flash_attention: bool,
                 loaded_model=None):
        """`loaded_model`: a llama_model already loaded (shared, not freed here) instead of `model`."""
        import llama_cpp

        from reranker.llama_logging import route_llama_logs

        route_llama_logs()
        self.llama, self.all_outputs, self.threads = llama_cpp, all_outputs, threads
        self.flash_attention = flash_attention  # as the reranker runs it: same build, same kernels
        if loaded_model is not None:
            self.model = loaded_model
        else:
            params = llama_cpp.llama_model_default_params()
            params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
            self.model = llama_cpp.llama_model_load_from_file(model.encode(), params)
        self.ctx, self.ctx_size = None, 0
        self.n_embd = llama_cpp.llama_model_n_embd(self.model)

    def _context(self, n: int):
        if self.ctx is not None and n <= self.ctx_size:
            return
        if self.ctx is not None:
            self.llama.llama_free(self.ctx)
        p = self.llama.llama_context_default_params()
        p.n_ctx = self.ctx_size = -(-n // 256) * 256
        p.n_batch, p.n_ubatch = 2048, 512
        p.n_threads = p.n_threads_batch = self.threads
        p.flash_attn_type = (self.llama.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attention
                             else self.llama.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        if self.all_outputs:
            p.embeddings = True
            p.pooling_type = self.llama.LLAMA_POOLING_TYPE_NONE
        self.ctx = self.llama.llama_init_from_model(self.model, p)
        self.batch = self.llama.llama_batch_init(2048, 0, 1)

    def run(self, ids, positions):
        import numpy as np

        llama = self.llama
        self._context(len(ids))
        llama.llama_memory_clear(llama.llama_get_memory(self.ctx), True)
        states = []
        for start in range(0, len(ids), 2048):
            chunk = ids[start:start + 2048]
            for j, token in enumerate(chunk):
                self.batch.token[j], self.batch.pos[j] = token, start + j
                self.batch.n_seq_id[j], self.batch.seq_id[j][0] = 1, 0
                last = start + j == len(ids) - 1
                self.batch.logits[j] = 1 if (self.all_outputs or last) else 0
            self.batch.n_tokens = len(chunk)
            if llama.llama_decode(self.ctx, self.batch) != 0:
                raise RuntimeError("llama_decode failed")
            if self.all_outputs:  # a decode call's outputs are readable until the next one
                states += [np.ctypeslib.as_array(
                    llama.llama_get_embeddings_ith(self.ctx, p - start), shape=(self.n_embd,)).copy()
                    for p in positions if start <= p < start + len(chunk)]
        return np.array(states) if self.all_outputs else None


def worker(args) -> dict:
    docs = documents(args.workload)
    threads = args.threads
    # A different query on every request, as in real use: engines then share no more
    # than the system message between requests (the runtime reuses that much).
    queries = [f"{QUERY} (request {i})" for i in range(args.runs + 1)]
    from reranker import Reranker

    if args.engine == "transformers":
        import torch

        from reranker.testing.reference import ReferenceReranker

        torch.set_num_threads(threads)
        ref = ReferenceReranker(Path(args.checkpoint))
        call = lambda i: ref.scores(queries[i], docs)  # noqa: E731
        tokens = sum(len(ref.prompt_ids(queries[0], docs[i:i + 125]))
                     for i in range(0, len(docs), 125))
    else:
        ranker = Reranker(args.model, n_threads=threads, block_tokens=args.block_tokens)
        blocks = [_blocks_of(ranker, queries[i], docs) for i in range(len(queries))]
        tokens = sum(len(ids) for ids, _ in blocks[0])
        if args.engine == "reranker":
            call = lambda i: ranker.score(queries[i], docs)  # noqa: E731
        elif args.engine in ("embeddings", "raw"):
            flash_attention, projector = ranker.engine.flash_attention, ranker.projector
            ranker.close()  # its model copy would count in this baseline's memory
            baseline = LlamaBaseline(args.model, threads, all_outputs=args.engine == "embeddings",
                                     flash_attention=flash_attention)

            def call(i):
                for ids, positions in blocks[i]:
                    states = baseline.run(ids, positions)
                    if states is not None:
                        projector(states)
        elif args.engine == "subprocess":
            call = lambda i: [published_route(args.llama_embedding, args.model, ids, positions,  # noqa: E731
                                              ranker, threads) for ids, positions in blocks[i]]
        else:
            raise SystemExit(f"unknown engine {args.engine}")
    if args.warmup:
        call(0)
    times = []
    for i in range(1, args.runs + 1):
        started = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    return {"seconds": round(seconds, 3), "tokens": tokens,
            "tokens_per_second": round(tokens / seconds, 1), "runs": [round(t, 3) for t in times]}


def published_route(binary: str, model: str, ids, positions, ranker, threads: int):
    """Jina's rerank.py: prompt text to a file, llama-tokenize to find the markers, then
    llama-embedding printing every token's hidden state as JSON, projector in numpy."""
    import numpy as np

    tokenize = str(Path(binary).with_name("llama-tokenize"))
    markers = {ids[p] for p in positions}
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        # Control tokens spelled out: llama-embedding parses them back.
        f.write(ranker.engine.detokenize(ids, unparse_special=True))
        prompt_file = f.name
    try:
        listed = subprocess.run([tokenize, "-m", model, "-f", prompt_file, "--log-disable"],
                                capture_output=True, text=True, check=True).stdout
        token_ids = [int(line.split("->")[0]) for line in listed.splitlines() if "->" in line]
        found = [i for i, t in enumerate(token_ids) if t in markers]
        if len(found) != len(positions):
            raise RuntimeError(f"llama-tokenize found {len(found)} markers, expected {len(positions)}")
        done = subprocess.run(
            [binary, "-m", model, "-f", prompt_file, "--pooling", "none",
             "--embd-separator", "<#JINA_SEP#>", "--embd-normalize", "-1",
             "--embd-output-format", "json", "--ubatch-size", "512",
             "--ctx-size", str(max(8192, -(-len(ids) // 1024) * 1024)),
             "--batch-size", str(max(2048, len(ids))), "-t", str(threads), "-fa", "off"],
            capture_output=True, text=True, check=True)
        data = json.loads(done.stdout)["data"]
        states = np.array([data[p]["embedding"] for p in found], dtype=np.float32)
        return ranker.projector(states)
    finally:
        os.unlink(prompt_file)


# -- parent side ---------------------------------------------------------------------
def measure(engine: str, model: str | None, workload: str, args) -> dict:
    command = [sys.executable, __file__, str(args.checkpoint), "--worker", "--engine", engine,
               "--workload", workload, "--runs", str(args.runs), "--threads", str(args.threads),
               "--block-tokens", str(args.block_tokens)]
    if not args.warmup:
        command.append("--no-warmup")
    if model:
        command += ["--model-path", model]
    if args.llama_embedding:
        command += ["--llama-embedding", args.llama_embedding]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        return {"error": err.strip().splitlines()[-1] if err.strip() else "failed"}
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024)
    return result


def cold_start(model: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "reranker.cli.main", "rerank", "-m", model, "-q", QUERY,
                    "-d", "a harbor city in winter", "--json"], check=True, capture_output=True)
    return round(time.perf_counter() - started, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", type=Path)
    parser.add_argument("--model", action="append", default=[], metavar="TYPE=PATH")
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS))
    parser.add_argument("--engine", action="append", choices=ENGINES)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--llama-embedding")
    parser.add_argument("--block-tokens", type=int, default=BLOCK_TOKENS,
                        help="token budget of one block (default: the published 131072); "
                             "llama.cpp engines decode the same blocks")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="time the first request too (context creation included); "
                             "for long workloads measured once")
    parser.add_argument("--json", type=Path, help="write all results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.model = args.model_path
        args.engine = args.engine[0]
        args.workload = args.workload[0]
        print(json.dumps(worker(args)))
        return 0

    models = dict(item.split("=", 1) for item in args.model)
    engines = args.engine or ["reranker", "embeddings", "raw", "transformers"]
    if "subprocess" in engines and not args.llama_embedding:
        raise SystemExit("the subprocess engine needs --llama-embedding (scripts/build_llama_embedding.sh)")
    report = {"machine": machine(), "threads": args.threads, "runs": args.runs,
              "warmup": args.warmup, "block_tokens": args.block_tokens, "results": []}
    print(f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
          f"{' '.join(report['machine']['flags'])}; {args.threads} threads, median of {args.runs}")
    for workload in args.workload or ["interactive", "16x120"]:
        reference_done = False
        for type_name, path in models.items():
            row = {"workload": workload, "type": type_name}
            for engine in engines:
                if engine == "transformers":
                    if reference_done:
                        continue
                    reference_done = True
                    row_t = {"workload": workload, "type": "f32 (transformers)",
                             "transformers": measure("transformers", None, workload, args)}
                    report["results"].append(row_t)
                    _print_row(row_t, ["transformers"])
                    continue
                row[engine] = measure(engine, path, workload, args)
            if "reranker" in engines:
                row["cold_start_seconds"] = cold_start(path)
            report["results"].append(row)
            _print_row(row, [e for e in engines if e != "transformers"], report["results"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def _print_row(row: dict, engines: list[str], results: list | None = None) -> None:
    parts = [f"{row['workload']:12} {row['type']:20}"]
    for engine in engines:
        r = row.get(engine, {})
        if "error" in r:
            parts.append(f"{engine}: error ({r['error'][:60]})")
        elif r:
            parts.append(f"{engine}: {r['seconds']:.2f} s {r['tokens_per_second']:.0f} tok/s "
                         f"{r['peak_rss_mb']} MB")
    ours = row.get("reranker", {}).get("seconds")
    if ours:
        ratios = []
        for engine in ("embeddings", "raw", "subprocess"):
            if "seconds" in row.get(engine, {}):
                ratios.append(f"{row[engine]['seconds'] / ours:.2f}x vs {engine}")
        reference = next((r for r in results or [] if r["workload"] == row["workload"]
                          and "transformers" in r and "seconds" in r["transformers"]), None)
        if reference:
            ratios.append(f"{reference['transformers']['seconds'] / ours:.2f}x vs transformers")
        parts.append("speed-up " + ", ".join(ratios))
        parts.append(f"cold start {row.get('cold_start_seconds')} s")
    print(" | ".join(parts), flush=True)


if __name__ == "__main__":
    sys.exit(main())
