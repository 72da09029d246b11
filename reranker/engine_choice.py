"""Which engine runs the backbone: llama.cpp, or PyTorch where doctor measured it faster.

- ``llama.cpp``: `reranker.engine.LlamaEngine`, the default.
- ``torch``: `reranker.torch_engine.TorchEngine` on the same GGUF (`pip install
  'reranker[torch]'`); bf16 weights on CPUs with bf16 units, float32 elsewhere
  (`reranker.torch_engine.choose_dtype`).
- ``auto`` (default): the engine `reranker-cli doctor --model FILE` timed as faster on
  this machine for this model file (torch by at least 10%, `faster_engine`). Its verdict
  is kept with doctor's CPU-path verdicts (`reranker.cpu_path`), under this machine's key
  and the file's path, with the file's fingerprint: a file changed since (re-converted,
  replaced) has no verdict. Without one, auto is llama.cpp, so it is never slower than
  before a measurement.

`RERANKER_ENGINE` or the `engine` option overrides the choice.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path

from reranker.cpu_path import load_entry, machine_key, save_entry
from reranker.cpu_support import read_cpu_info, read_llama_build
from reranker.errors import RerankerError

ENGINES = ("auto", "llama.cpp", "torch")
ENV_VAR = "RERANKER_ENGINE"
TORCH_EXTRA_HINT = "install it with: pip install 'reranker[torch]'"
_HEADER_BYTES = 1 << 20  # the part of the file hashed into its fingerprint
TORCH_MARGIN = 1.1  # torch is taken only when at least 10% faster (`faster_engine`)


class EngineError(RerankerError, ValueError):
    """An engine was asked for that does not exist or cannot run here."""


@dataclass(frozen=True)
class Engine:
    name: str  # llama.cpp | torch
    reason: str


@dataclass(frozen=True)
class EngineVerdict:
    """What doctor measured for one model file on one machine."""
    engine: str  # the faster one
    fingerprint: str  # of the model file measured
    seconds: dict[str, float]  # engine -> seconds of the timed request
    checked_at: str


def choose_engine(requested: str, verdict: EngineVerdict | None, fingerprint: str, *,
                  torch_available: bool, source: str = "option") -> Engine:
    """The engine for `requested`, given doctor's verdict for this machine and model file.

    Pure: `fingerprint` is the model file's now, `torch_available` whether PyTorch can be
    imported; tests put any verdict in front of it.
    """
    if requested not in ENGINES:
        raise EngineError(f"engine {requested!r} (from {source}) is not one of "
                          f"{', '.join(ENGINES)}")
    if requested == "torch":
        if not torch_available:
            raise EngineError(f"engine 'torch' (from {source}) needs PyTorch, which is not "
                              f"installed; {TORCH_EXTRA_HINT}")
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
    if verdict.engine == "torch" and not torch_available:
        return Engine("llama.cpp", f"doctor measured torch faster ({timing}) but PyTorch is "
                                   f"not installed now; {TORCH_EXTRA_HINT}")
    if verdict.engine not in ENGINES[1:]:
        return Engine("llama.cpp", f"doctor's record names an unknown engine "
                                   f"{verdict.engine!r}; run doctor --model again")
    return Engine(verdict.engine, f"measured faster here by doctor ({timing}, "
                                  f"{verdict.checked_at})")


def _timing_text(verdict: EngineVerdict) -> str:
    return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in verdict.seconds.items())


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
    return choose_engine(requested, verdict, fingerprint or "", source=source,
                         torch_available=torch_available())


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


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
        return EngineVerdict(str(entry["engine"]), str(entry["fingerprint"]),
                             {str(k): float(v) for k, v in entry["seconds"].items()},
                             str(entry["checked_at"]))
    except (TypeError, KeyError, ValueError, AttributeError):
        return None  # never measured, or a record this version cannot read


def faster_engine(seconds: dict[str, float]) -> str:
    """The engine `auto` should take given one timed request per engine.

    torch must beat llama.cpp by TORCH_MARGIN: one request is a noisy measurement, and the
    torch engine holds more memory (1.3x llama.cpp's peak on a q8_0 file, measured on an
    AVX2 EPYC), which a tie does not pay for.
    """
    fastest = min(seconds, key=seconds.__getitem__)
    if fastest == "torch" and "llama.cpp" in seconds \
            and seconds["llama.cpp"] < seconds["torch"] * TORCH_MARGIN:
        return "llama.cpp"
    return fastest


def save_engine_verdict(model_path: Path, seconds: dict[str, float]) -> EngineVerdict:
    """Record `faster_engine` of the engines timed in `seconds` for this machine and file."""
    verdict = EngineVerdict(faster_engine(seconds), model_fingerprint(model_path),
                            dict(seconds), time.strftime("%Y-%m-%d %H:%M:%S"))
    save_entry(_verdict_key(model_path), {"engine": verdict.engine,
                                          "fingerprint": verdict.fingerprint,
                                          "seconds": verdict.seconds,
                                          "checked_at": verdict.checked_at})
    return verdict
