"""`doctor`: what this machine and its llama.cpp build can run, proven in child processes."""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click

from reranker.cpu_canary import (FAMILIES, CanaryRun, Runner, compare_with_reference,
                                 first_failure, run_canary, run_families, write_canary_models)
from reranker.cpu_path import (CpuPath, CpuPathError, extra_path_name, machine_key,
                               resolve_cpu_path, save_verdict, verdicts_location)
from reranker.cpu_support import CpuInfo, LlamaBuild, read_cpu_info, read_llama_build
from reranker.engine_choice import (ROUTED, TIMED_REQUESTS, TORCH_EXTRA_HINT, TORCH_MARGIN,
                                    auto_engine, save_engine_verdict, torch_problem)
from reranker.reranker import resolve_model_file
from reranker.cli.errors import friendly_errors
from reranker.cli.models_dir import resolve_model

# --model times each engine on engine_choice.TIMED_REQUESTS, documents made of these
# words; the short request (about a second each) goes round the engines _SHORT_ROUNDS times.
_QUERY = "how are candidate passages ordered by relevance"
_SHORT_ROUNDS = 2
_WORDS = ("retrieval ranking passage query model relevance search answer context document "
          "evidence language vector index candidate score order list token").split()


@dataclass
class Diagnosis:
    cpu: CpuInfo
    build: LlamaBuild
    checks: dict[str, dict[str, CanaryRun]]  # path -> family -> run
    chosen: CpuPath
    working: list[str]  # paths on which every family decoded
    record_error: str | None = None  # why the outcome could not be recorded

    def to_dict(self) -> dict:
        return {
            "cpu": {"model": self.cpu.model, "logical_cpus": self.cpu.logical_cpus,
                    "usable_cpus": self.cpu.usable_cpus, "flags": self.cpu.notable_flags},
            "llama_cpp": {"llama_cpp_python": self.build.llama_cpp_python,
                          "compiler": self.build.compiler,
                          "library": str(self.build.library),
                          "cpu_features": self.build.cpu_features,
                          "extra_buffer_types": list(self.build.extra_buffer_types),
                          "system_info": self.build.system_info},
            "checks": {path: {family: {"ok": run.ok, "detail": run.detail,
                                       "seconds": round(run.seconds, 3)}
                              for family, run in runs.items()}
                       for path, runs in self.checks.items()},
            "path": {"name": self.chosen.name, "reason": self.chosen.reason},
            "working_paths": self.working,
            "record_error": self.record_error,
        }


def diagnose(folder: Path, *, cpu: CpuInfo | None = None, build: LlamaBuild | None = None,
             runner: Runner | None = None, record: bool = True) -> Diagnosis:
    """Decode every weight family on the plain path and on this build's extra-buffer path,
    each in a child process; record the extra path's verdict; then choose as `auto` would.

    `cpu`, `build` and `runner` are parameters so tests can put an "AMX present" build
    and a crashing child in front of the same logic.
    """
    cpu = cpu or read_cpu_info()
    build = build or read_llama_build()
    runner = runner or run_canary
    record_error = None
    models = write_canary_models(folder)
    checks = {"plain": run_families(models, "plain", runner)}
    extra = extra_path_name(build.extra_buffer_types)
    if extra is not None:
        checks[extra] = compare_with_reference(run_families(models, extra, runner),
                                               checks["plain"])
        failure = first_failure(checks[extra])
        if record:
            try:
                save_verdict(machine_key(cpu, build), extra, failure is None,
                             failure or "every weight family decoded and matched plain")
            except OSError as error:  # the report is still worth printing
                record_error = f"could not record the outcome in {verdicts_location()}: {error}"
    working = [path for path, runs in checks.items() if first_failure(runs) is None]
    try:
        chosen = resolve_cpu_path()
    except CpuPathError as error:  # a bad override: the report is what shows the way out
        chosen = CpuPath("none", str(error))
    return Diagnosis(cpu, build, checks, chosen, working, record_error)


def _documents(count: int, words: int) -> list[str]:
    return [" ".join(_WORDS[(i * 7 + j) % len(_WORDS)] for j in range(words)) + "."
            for i in range(count)]


def _load_engines(model: Path, threads: int | None) -> tuple[dict, dict[str, float], str | None]:
    """A Reranker on each engine installed here, their load seconds, and why torch is
    missing (None if it loaded)."""
    from reranker import Reranker

    rankers, loads = {}, {}
    problem = torch_problem()
    engines = ["llama.cpp"] + (["torch"] if problem is None else [])
    for engine in engines:
        started = time.perf_counter()
        try:
            rankers[engine] = Reranker(model, n_threads=threads, engine=engine)
        except Exception as error:  # noqa: BLE001 - reported; the CPU report still prints
            if engine == "llama.cpp":
                raise
            # e.g. a weight type gguf-py cannot dequantize, or torch failing at run time
            return rankers, loads, f"the torch engine cannot run this file: {error}"
        loads[engine] = round(time.perf_counter() - started, 3)
    missing = None if "torch" in rankers else f"{problem}: {TORCH_EXTRA_HINT}"
    return rankers, loads, missing


def _time_requests(rankers: dict, loads: dict[str, float], model: Path) -> dict[str, dict]:
    """Each of TIMED_REQUESTS on every engine, by engine and request name.

    Two engines take turns in A B B A order (twice over for the short request), each
    engine's time the mean of its runs, so a drift of the machine's speed during the
    measurement (25% within an hour on a shared VM) falls on both alike. Every engine
    first scores each shorter request once untimed: first-call costs (llama.cpp's
    context for a longer prompt, PyTorch's kernel set-up) are not a request's.
    """
    order = [*rankers, *reversed(rankers)] if len(rankers) > 1 else list(rankers)
    longest = list(TIMED_REQUESTS)[-1]  # they are declared shortest first
    timings: dict[str, dict] = {engine: {} for engine in rankers}
    for request, (count, words) in TIMED_REQUESTS.items():
        documents = _documents(count, words)
        if request != longest:
            for ranker in rankers.values():
                ranker.score(_QUERY, documents)
        runs: dict[str, list[float]] = {engine: [] for engine in rankers}
        for engine in order * (_SHORT_ROUNDS if request == "short" else 1):
            began = time.perf_counter()
            scored = rankers[engine].score(_QUERY, documents)
            runs[engine].append(time.perf_counter() - began)
        for engine, seconds in runs.items():
            timings[engine][request] = {
                "model": str(model), "engine": engine, "request": request,
                "load_seconds": loads[engine], "runs": len(seconds),
                "request_seconds": round(statistics.fmean(seconds), 3),
                "tokens": scored.total_tokens, "documents": count,
                "path": rankers[engine].cpu_path.name}
    return timings


def _time_engines(model: Path, threads: int | None) -> tuple[dict[str, dict], str, dict]:
    """Time the requests on each engine installed here and record what auto takes.

    Returns the timings by engine and request, a line saying what was recorded (or why
    not), and the same as fields for --json: the engine auto takes, its threshold, and
    whether it was recorded.
    """
    click.echo(f"timing {', '.join(TIMED_REQUESTS)} requests on each engine (a few "
               "minutes)...", err=True)
    rankers, loads, torch_missing = _load_engines(model, threads)
    try:
        for ranker in rankers.values():
            ranker.score(_QUERY, _documents(1, 8))
        timings = _time_requests(rankers, loads, model)
    finally:
        for ranker in rankers.values():
            ranker.close()

    def outcome(line: str, engine: str = "llama.cpp", recorded: bool = True,
                torch_from_tokens: int | None = None) -> tuple[dict[str, dict], str, dict]:
        return timings, line, {"engine": engine, "torch_from_tokens": torch_from_tokens,
                               "recorded": recorded}

    if torch_missing and torch_problem() is not None:
        return outcome(f"llama.cpp ({torch_missing})", recorded=False)
    seconds = {request: {engine: by_request[request]["request_seconds"]
                         for engine, by_request in timings.items()}
               for request in TIMED_REQUESTS}
    tokens = {request: timing["tokens"] for request, timing in timings["llama.cpp"].items()}
    try:
        verdict = save_engine_verdict(model, seconds, tokens)  # llama.cpp if torch failed
    except OSError as error:
        engine, threshold = auto_engine(seconds, tokens)
        return outcome(f"not recorded in {verdicts_location()}: {error}", engine, False,
                       threshold)
    if torch_missing:
        line = f"{verdict.engine} ({torch_missing})"
    elif verdict.engine == "torch":
        line = "torch is faster here on every request; auto takes it for this file"
    elif verdict.engine == ROUTED:
        line = (f"{ROUTED}: auto loads both engines for this file (the memory of both) and "
                f"gives prompts of {verdict.torch_from_tokens} tokens or more to torch, "
                "shorter ones to llama.cpp")
    else:
        line = (f"llama.cpp: torch is not at least {TORCH_MARGIN}x faster on the longest "
                "request; auto keeps llama.cpp for this file")
    return outcome(line, verdict.engine, True, verdict.torch_from_tokens)


def _report(diagnosis: Diagnosis) -> list[str]:
    cpu, build = diagnosis.cpu, diagnosis.build
    flags = ", ".join(f"{name} {'yes' if present else 'no'}"
                      for name, present in cpu.notable_flags.items())
    lines = [
        f"{'cpu:':12}{cpu.model} ({cpu.usable_cpus} of {cpu.logical_cpus} CPUs usable)",
        f"{'flags:':12}{flags}",
        f"{'llama.cpp:':12}llama-cpp-python {build.llama_cpp_python}, compiler: "
        f"{build.compiler or 'not recorded in the library'}",
        f"{'built with:':12}" + (", ".join(f"{k}={v}" for k, v in build.cpu_features.items())
                                 or "unknown"),
        f"{'buffers:':12}" + (", ".join(build.extra_buffer_types) or "none (no extra types)"),
        "",
        "decode checks (a tiny model per weight family, each in a child process):",
    ]
    families = list(FAMILIES)
    lines.append(f"  {'path':8}" + "".join(f"{family:>12}" for family in families))
    for path, runs in diagnosis.checks.items():
        cells = []
        for family in families:
            run = runs[family]
            cells.append(f"{'ok' if run.ok else 'FAILED':>12}")
        lines.append(f"  {path:8}" + "".join(cells))
    for path, runs in diagnosis.checks.items():
        for family, run in runs.items():
            if not run.ok:
                lines.append(f"  {path} {family}: {run.detail} -> using {diagnosis.chosen.name}")
    lines += ["", f"{'path:':12}{diagnosis.chosen.name} ({diagnosis.chosen.reason})"]
    if not diagnosis.working:
        lines.append("no path decodes every weight family on this machine: report the lines "
                     "above with the llama-cpp-python build (see README, Supported CPUs)")
    elif diagnosis.chosen.name == "none":
        lines.append(f"warning: the override cannot be used on this build; unset it or use "
                     f"one of: {', '.join(diagnosis.working)}")
    elif diagnosis.chosen.name not in diagnosis.working:
        lines.append(f"warning: the chosen path {diagnosis.chosen.name} failed a check above; "
                     f"unset the override or use one of: {', '.join(diagnosis.working)}")
    return lines


@click.command()
@click.option("--model", "-m", "model", help="Also time three requests (4 documents of 30 "
              "words, 10 of 50, 16 of 120) on this GGUF file, directory or model name, on "
              "each engine (llama.cpp, and torch if installed), and record for --engine auto "
              "the engine that is faster at each length.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for --model.")
@click.option("--json", "as_json", is_flag=True, help="Print the diagnosis as JSON.")
def doctor(model: str | None, threads: int | None, as_json: bool) -> None:
    """Check this machine: CPU, llama.cpp build, and which weight layout is safe and used.

    Prints the CPU and its flags (AVX2, AVX-512, VNNI, BF16, AMX), the llama-cpp-python
    build (compiler, features, extra buffer types), then decodes a tiny model of each
    weight family (float, q8_0, k-quant, iq4) on each available path in a child process,
    so a crashing kernel becomes a line of this report. The outcome for the AMX or repack
    path is recorded (per build and CPU, in the cache directory) and `auto` follows it.
    Exits non-zero only if no path decodes every family.

    \b
    Examples:
      reranker-cli doctor
      reranker-cli doctor --model models/jina-reranker-v3-q8_0.gguf --json
    """
    model_path = None
    with friendly_errors():
        if model is not None:  # a wrong name is reported before the checks run
            model_path = resolve_model_file(resolve_model(model))
        with tempfile.TemporaryDirectory(prefix="reranker-doctor-") as folder:
            diagnosis = diagnose(Path(folder))
    timings, engine_line, engine_verdict = {}, None, None
    if model_path is not None:
        if diagnosis.chosen.name not in diagnosis.working:
            raise click.ClickException(f"not timing {model_path}: the chosen path "
                                       f"{diagnosis.chosen.name} failed a decode check")
        with friendly_errors():
            timings, engine_line, engine_verdict = _time_engines(model_path, threads)
    if as_json:
        out = diagnosis.to_dict()
        out["verdicts_file"] = verdicts_location()
        if timings:
            out["request"] = timings["llama.cpp"]["typical"]
            out["engines"] = timings
            out["engine"] = engine_line
            out["engine_verdict"] = engine_verdict
        click.echo(json.dumps(out, indent=2))
    else:
        for line in _report(diagnosis):
            click.echo(line)
        if diagnosis.record_error:
            click.echo(f"warning: {diagnosis.record_error}", err=True)
        elif diagnosis.build.extra_buffer_types:
            click.echo(f"{'recorded:':12}{verdicts_location()}")
        for by_request in timings.values():
            for timing in by_request.values():
                runs = f", mean of {timing['runs']}" if timing["runs"] > 1 else ""
                click.echo(f"{'request:':12}{timing['request']}: {timing['documents']} "
                           f"documents, {timing['tokens']} tokens in "
                           f"{timing['request_seconds']:.2f} s on {timing['engine']}{runs}, "
                           f"CPU path {timing['path']} (load {timing['load_seconds']:.2f} s)")
        if engine_line:
            click.echo(f"{'engine:':12}{engine_line}")
    if not diagnosis.working:
        raise SystemExit(1)
