"""Which engine runs the backbone: llama.cpp, PyTorch, or each for the prompts it is faster on.

- ``llama.cpp``: `reranker.engine.LlamaEngine`, the default.
- ``torch``: `reranker.torch_engine.TorchEngine` on the same GGUF (the `torch`
  extra); bf16 weights on CPUs with bf16 units, float32 elsewhere
  (`reranker.torch_engine.choose_dtype`).
- ``llama.cpp+torch``: `reranker.routed_engine.RoutedEngine`, both loaded, llama.cpp for
  prompts shorter than a token count and torch from there. Only auto takes it.
- ``auto`` (default): what `reranker-cli doctor --model FILE` measured on this machine for
  this model file, timing TIMED_REQUESTS on each engine (`auto_engine`). Its verdict
  is kept with doctor's CPU-path verdicts (`reranker.cpu_path`), under this machine's key
  and the file's path, with the file's fingerprint: a file changed since (re-converted,
  replaced) has no verdict. Without one, auto is llama.cpp, so it is never slower than
  before a measurement.

`RERANKER_ENGINE` or the `engine` option overrides the choice.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from reranker.cpu_path import load_entry, machine_key, save_entry
from reranker.cpu_support import read_cpu_info, read_llama_build
from reranker.errors import RerankerError
from reranker.extras import install_hint

ENGINES = ("auto", "llama.cpp", "torch")  # what a user may ask for
ROUTED = "llama.cpp+torch"  # auto's third answer (`auto_engine`)
ENV_VAR = "RERANKER_ENGINE"
TORCH_EXTRA_HINT = f"install it with: {install_hint('torch')}"
_HEADER_BYTES = 1 << 20  # the part of the file hashed into its fingerprint
# The requests doctor times on each engine, shortest first: (documents, words each).
# The engines' order turns with length: on an AVX2 EPYC (q8_0, real size, 2 threads)
# doctor timed torch at 2.90 s against llama.cpp's 1.51 s at 327 tokens, 6.16 s against
# 5.75 s at 792, and 24.11 s against 30.17 s at 2,303: its float32 products cost more
# than llama.cpp's int8 ones, while llama.cpp's attention costs more per token as the
# prompt grows.
TIMED_REQUESTS = {"short": (4, 30), "medium": (10, 50), "typical": (16, 120)}
# torch takes a prompt only where it was at least 10% faster: one timing is noisy, and
# routing holds both engines (torch alone holds about 1.3x llama.cpp's peak on q8_0).
TORCH_MARGIN = 1.1


class EngineError(RerankerError, ValueError):
    """An engine was asked for that does not exist or cannot run here."""


@dataclass(frozen=True)
class Engine:
    name: str  # llama.cpp | torch | llama.cpp+torch
    reason: str
    torch_from_tokens: int | None = None  # llama.cpp+torch: prompts this long go to torch


@dataclass(frozen=True)
class EngineVerdict:
    """What doctor measured for one model file on one machine."""
    engine: str  # the one auto takes (`auto_engine`)
    fingerprint: str  # of the model file measured
    seconds: dict[str, dict[str, float]]  # request name -> engine -> seconds
    tokens: dict[str, int]  # request name -> its prompt tokens
    checked_at: str
    torch_from_tokens: int | None = None  # for llama.cpp+torch


def choose_engine(requested: str, verdict: EngineVerdict | None, fingerprint: str, *,
                  torch_available: bool, source: str = "option",
                  torch_problem: str = "PyTorch is not installed") -> Engine:
    """The engine for `requested`, given doctor's verdict for this machine and model file.

    Pure: `fingerprint` is the model file's now, `torch_available` whether PyTorch can be
    imported (and `torch_problem` why not); tests put any verdict in front of it.
    """
    torch_problem = torch_problem or "PyTorch is not installed"
    if requested not in ENGINES:
        raise EngineError(f"engine {requested!r} (from {source}) is not one of "
                          f"{', '.join(ENGINES)}")
    if requested == "torch":
        if not torch_available:
            raise EngineError(f"engine 'torch' (from {source}) needs PyTorch: "
                              f"{torch_problem}; {TORCH_EXTRA_HINT}")
        return Engine("torch", f"asked for ({source})")
    if requested == "llama.cpp":
        return Engine("llama.cpp", f"asked for ({source})")
    if verdict is None:
        return Engine("llama.cpp", "no measurement for this model on this machine; "
                                   "`reranker-cli doctor --model FILE` times both engines")
    if verdict.fingerprint != fingerprint:
        return Engine("llama.cpp", f"the model file changed since doctor measured it "
                                   f"({verdict.checked_at}); run doctor --model again")
    timing = _timing_text(verdict)
    if verdict.engine not in (*ENGINES[1:], ROUTED):
        return Engine("llama.cpp", f"doctor's record names an unknown engine "
                                   f"{verdict.engine!r}; run doctor --model again")
    if verdict.engine != "llama.cpp" and not torch_available:
        return Engine("llama.cpp", f"doctor measured torch faster ({timing}) but now "
                                   f"{torch_problem}; {TORCH_EXTRA_HINT}")
    if verdict.engine == ROUTED:
        return Engine(ROUTED, f"measured here by doctor: llama.cpp below "
                              f"{verdict.torch_from_tokens} prompt tokens, torch from there "
                              f"({timing}, {verdict.checked_at})", verdict.torch_from_tokens)
    return Engine(verdict.engine, f"measured faster here by doctor ({timing}, "
                                  f"{verdict.checked_at})")


def _timing_text(verdict: EngineVerdict) -> str:
    """"327 tokens: llama.cpp 1.74 s, torch 2.51 s; 811 tokens: ..."."""
    return "; ".join(f"{verdict.tokens[request]} tokens: "
                     + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in by_engine.items())
                     for request, by_engine in verdict.seconds.items())


def resolve_engine(requested: str | None, model_path: Path) -> Engine:
    """The engine for this process and model: `requested`, else $RERANKER_ENGINE, else auto."""
    source = "option"
    if requested is None:
        requested, source = os.environ.get(ENV_VAR) or "auto", ENV_VAR
        if requested == "auto":
            source = "default"
    if not isinstance(requested, str):
        raise TypeError(f"engine is {type(requested).__name__}; expected str or None")
    requested = requested.strip().lower()
    verdict = fingerprint = None
    if requested == "auto":
        try:
            verdict = load_engine_verdict(model_path)
            fingerprint = model_fingerprint(model_path)
        except OSError as error:  # an unreadable build or file: no measurement applies
            return Engine("llama.cpp", f"doctor's measurement could not be read ({error})")
    # Importing torch takes a second: only where the answer matters.
    wants_torch = requested == "torch" or (verdict is not None and verdict.engine != "llama.cpp")
    problem = torch_problem() if wants_torch else None
    return choose_engine(requested, verdict, fingerprint or "", source=source,
                         torch_available=problem is None, torch_problem=problem or "")


def torch_problem() -> str | None:
    """Why PyTorch cannot be used in this process, or None if it imports."""
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed"
    try:
        importlib.import_module("torch")
    except Exception as error:  # noqa: BLE001 - a missing library, a wheel for another numpy
        return f"PyTorch is installed but cannot be imported ({type(error).__name__}: {error})"
    return None


# -- doctor's verdicts, one per machine and model file ------------------------------------
def model_fingerprint(model_path: Path) -> str:
    """Size, modification time and a hash of the first megabyte of the file."""
    stat = model_path.stat()
    with open(model_path, "rb") as file:
        header = hashlib.sha256(file.read(_HEADER_BYTES)).hexdigest()[:16]
    return f"{stat.st_size}-{stat.st_mtime_ns}-{header}"


def _verdict_key(model_path: Path) -> str:
    return f"engine|{machine_key(read_cpu_info(), read_llama_build())}|{model_path.resolve()}"


def load_engine_verdict(model_path: Path) -> EngineVerdict | None:
    entry = load_entry(_verdict_key(model_path))
    try:
        seconds = {str(request): {str(name): _seconds(value) for name, value in by_engine.items()}
                   for request, by_engine in entry["seconds"].items()}
        tokens = {str(request): _count(count) for request, count in entry["tokens"].items()}
        threshold = None
        if entry["engine"] == ROUTED:  # a routed record needs its threshold
            threshold = _count(entry["torch_from_tokens"])
        if not set(seconds) <= set(tokens):
            return None
        return EngineVerdict(str(entry["engine"]), str(entry["fingerprint"]), seconds, tokens,
                             str(entry["checked_at"]), threshold)
    except (TypeError, KeyError, ValueError, AttributeError):
        # never measured, or a record this version cannot read (one written before the
        # requests' token counts were kept, or edited by hand): doctor --model measures again
        return None


def _count(value) -> int:
    """A positive whole number as doctor writes it; anything else makes the record unusable
    (a hand-edited 1e999 crashed every command with an OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"not a count: {value!r}")
    return value


def _seconds(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"not a duration: {value!r}")
    return float(value)


def auto_engine(seconds: dict[str, dict[str, float]],
                tokens: dict[str, int]) -> tuple[str, int | None]:
    """What auto should take, given doctor's seconds by request and engine, and each
    request's tokens: the engine, and for llama.cpp+torch the prompt length from which
    torch takes over.

    - torch: at least TORCH_MARGIN faster on the longest request and no slower on any.
    - llama.cpp+torch: torch at least TORCH_MARGIN faster on the longest request but
      slower on a shorter one; it takes prompts from the shortest request on which it,
      and every longer one, was at least TORCH_MARGIN faster. Below that, llama.cpp.
    - llama.cpp otherwise, also when torch could not run.
    So on every request timed, auto is never slower than llama.cpp.
    """
    requests = sorted(seconds, key=tokens.__getitem__)

    def speedup(request: str) -> float:  # llama.cpp's seconds over torch's; 0 if unmeasured
        by_engine = seconds[request]
        if "torch" not in by_engine or "llama.cpp" not in by_engine:
            return 0.0
        return by_engine["llama.cpp"] / max(by_engine["torch"], 1e-9)
    if not requests or speedup(requests[-1]) < TORCH_MARGIN:
        return "llama.cpp", None
    if all(speedup(request) >= 1.0 for request in requests):
        return "torch", None
    first = len(requests) - 1
    while first > 0 and speedup(requests[first - 1]) >= TORCH_MARGIN:
        first -= 1
    return ROUTED, tokens[requests[first]]


def save_engine_verdict(model_path: Path, seconds: dict[str, dict[str, float]],
                        tokens: dict[str, int]) -> EngineVerdict:
    """Record `auto_engine` of doctor's timings (request -> engine -> seconds, and each
    request's tokens) for this machine and model file."""
    untold = set(seconds) - set(tokens)
    if untold:
        raise ValueError(f"no token count for the timed request(s) {', '.join(sorted(untold))}")
    engine, threshold = auto_engine(seconds, tokens)
    verdict = EngineVerdict(engine, model_fingerprint(model_path),
                            {request: dict(by_engine) for request, by_engine in seconds.items()},
                            {request: tokens[request] for request in seconds},
                            time.strftime("%Y-%m-%d %H:%M:%S"), threshold)
    save_entry(_verdict_key(model_path), asdict(verdict))  # the record load_engine_verdict reads
    return verdict
