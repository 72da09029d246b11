#!/usr/bin/env python3
"""Benchmark the converter: seconds and peak memory per output type, one process each.

    python scripts/bench_convert.py CHECKPOINT_DIR [--types q8_0 q4_k_m] [--json out.json]

Make a real-size checkpoint first (random weights cost what real ones cost):
    python scripts/make_checkpoint.py /tmp/jr3-full --size full
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_one(checkpoint: Path, type_name: str, out_dir: Path) -> dict:
    out = out_dir / f"bench-{type_name}.gguf"
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "reranker.cli.main", "convert",
                             str(checkpoint), "-o", str(out), "-t", type_name, "--force"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"conversion to {type_name} failed:\n{stderr}")
    result = {"type": type_name, "seconds": round(seconds, 1),
              "peak_rss_mb": round(usage.ru_maxrss / 1024),  # Linux reports KiB
              "size_mb": round(out.stat().st_size / 1e6, 1), "summary": stdout.strip()}
    out.unlink()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--types", nargs="+", default=["q8_0", "q4_k_m"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()}
    print(f"machine: {machine['cpu']}, {machine['cores']} cores")
    results = []
    with tempfile.TemporaryDirectory(dir=args.checkpoint.parent) as tmp:
        for type_name in args.types:
            result = run_one(args.checkpoint, type_name, Path(tmp))
            results.append(result)
            print(f"{type_name:8} {result['seconds']:7.1f} s  peak {result['peak_rss_mb']:6d} MB  "
                  f"output {result['size_mb']:8.1f} MB")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
