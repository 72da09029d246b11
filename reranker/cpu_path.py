"""Which of llama.cpp's CPU weight layouts a model is loaded with, and why.

llama.cpp can keep quantized weights in "extra" buffer types: ggml's AMX tiles on
Intel CPUs with AMX, and a repacked layout for its AVX/NEON kernels (CPU_REPACK). On
an AMX Xeon, llama-cpp-python's native build made with GCC 12 compiles AMX kernels
that crash on the first decode of more than one token (llama.cpp issue 20824; ollama
17006/17205/17249). A load without extra buffer types ("plain") works everywhere.

The paths:
- ``amx``: extra buffer types with the AMX one registered (this build, this CPU).
- ``repack``: extra buffer types where no AMX one is registered (CPU_REPACK only).
  Where AMX is registered it cannot be left out of the extra types, so ``repack`` is
  refused there rather than silently meaning ``amx``.
- ``plain``: no extra buffer types: weights stay as in the file.
- ``auto`` (default): ``amx`` only once `reranker-cli doctor` has decoded every weight
  family on it in a child process on this exact build and CPU (its verdict is kept in
  the cache directory); ``plain`` otherwise on an AMX build. Without AMX: ``repack``,
  llama.cpp's own default, unless doctor saw it fail here.

`RERANKER_CPU_PATH` or the `cpu_path` option overrides the choice.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from reranker.cpu_support import CpuInfo, LlamaBuild, read_cpu_info, read_llama_build
from reranker.errors import RerankerError
from reranker.file_lock import held_exclusively

CPU_PATHS = ("auto", "amx", "repack", "plain")
ENV_VAR = "RERANKER_CPU_PATH"
CACHE_ENV_VAR = "RERANKER_CACHE_DIR"
_VERDICTS_FILE = "cpu-paths.json"


class CpuPathError(RerankerError, ValueError):
    """A CPU path was asked for that this build or CPU cannot give."""


@dataclass(frozen=True)
class CpuPath:
    name: str  # amx | repack | plain
    reason: str

    @property
    def use_extra_buffer_types(self) -> bool:
        return self.name != "plain"


@dataclass(frozen=True)
class Verdict:
    """What a child-process check found for one extra-buffer path on one build and CPU."""
    path: str
    ok: bool
    detail: str  # e.g. "q8_0: crashed (signal 11)"
    checked_at: str


def choose_cpu_path(requested: str, build_buffers: tuple[str, ...],
                    verdict: Verdict | None, *, source: str = "option") -> CpuPath:
    """The path for `requested` given the buffer types this build registered on this CPU.

    `verdict` is doctor's finding for the extra-buffer path of this build and CPU (None
    if never checked). Pure: tests force any build answer ("AMX present") through it.
    """
    if requested not in CPU_PATHS:
        raise CpuPathError(f"CPU path {requested!r} (from {source}) is not one of "
                           f"{', '.join(CPU_PATHS)}")
    has_amx = "AMX" in build_buffers
    if requested == "amx":
        if not has_amx:
            raise CpuPathError(f"CPU path 'amx' (from {source}) is not available: this "
                               "llama.cpp build has no AMX buffer type on this CPU "
                               "(buffer types: " + (", ".join(build_buffers) or "none") +
                               "); use auto, repack or plain")
        return CpuPath("amx", f"asked for ({source})")
    if requested == "repack":
        if has_amx:
            raise CpuPathError(f"CPU path 'repack' (from {source}) cannot leave out this "
                               "build's AMX buffer type; use amx or plain")
        return CpuPath("repack", f"asked for ({source})")
    if requested == "plain":
        return CpuPath("plain", f"asked for ({source})")
    if has_amx:
        if verdict is not None and verdict.path == "amx" and verdict.ok:
            return CpuPath("amx", f"AMX kernels verified on this build by doctor "
                                  f"({verdict.checked_at})")
        if verdict is not None and verdict.path == "amx":
            return CpuPath("plain", f"AMX kernels failed doctor's check on this build "
                                    f"({verdict.detail})")
        return CpuPath("plain", "this build has AMX kernels, which crash in some builds "
                                "(GCC 12) and are not verified here yet; "
                                "run `reranker-cli doctor` to check them")
    if verdict is not None and verdict.path == "repack" and not verdict.ok:
        return CpuPath("plain", f"the repacked layout failed doctor's check on this build "
                                f"({verdict.detail})")
    if "CPU_REPACK" in build_buffers:
        return CpuPath("repack", "no AMX on this build and CPU; llama.cpp's repacked "
                                 "layout for its CPU kernels")
    return CpuPath("plain", "this build registers no extra buffer types")


def extra_path_name(build_buffers: tuple[str, ...]) -> str | None:
    """The path that uses this build's extra buffer types (None if it has none)."""
    if "AMX" in build_buffers:
        return "amx"
    return "repack" if build_buffers else None


def resolve_cpu_path(requested: str | None = None) -> CpuPath:
    """The path for this process: `requested`, else $RERANKER_CPU_PATH, else auto."""
    source = "option"
    if requested is None:
        requested, source = os.environ.get(ENV_VAR) or "auto", ENV_VAR
        if requested == "auto":
            source = "default"
    requested = requested.strip().lower()
    try:
        build = read_llama_build()
    except OSError as error:  # a llama.cpp packaged in a way not foreseen here
        if requested in ("auto", "plain"):
            return CpuPath("plain", f"the llama.cpp build could not be read ({error})")
        raise CpuPathError(f"CPU path {requested!r} (from {source}) needs to know the "
                           f"llama.cpp build, which could not be read ({error})") from None
    verdict = None
    if requested == "auto" and build.extra_buffer_types:
        verdict = load_verdict(machine_key(read_cpu_info(), build))
    return choose_cpu_path(requested, build.extra_buffer_types, verdict, source=source)


# -- doctor's verdicts, kept per build and CPU ------------------------------------------
def cache_dir() -> Path:
    """OSError when there is none to be had (no $HOME, and a user id without a passwd
    entry, as containers run): callers treat it as an unreadable cache, never checked."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR])
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = Path.home() / ".cache"
        except RuntimeError as error:  # what pathlib raises when it finds no home
            raise OSError(f"no cache folder: {error} (set ${CACHE_ENV_VAR})") from None
    return Path(base) / "reranker"


def verdicts_file() -> Path:
    return cache_dir() / _VERDICTS_FILE


def verdicts_location() -> str:
    """Where verdicts are kept, for messages: the file, or why there is none."""
    try:
        return str(verdicts_file())
    except OSError as error:
        return f"({error})"


def machine_key(cpu: CpuInfo, build: LlamaBuild) -> str:
    """One key per (exact CPU kernels library, CPU model and flags)."""
    cpu_text = cpu.model + "|" + " ".join(sorted(cpu.flags))
    return build.fingerprint + "-" + hashlib.sha256(cpu_text.encode()).hexdigest()[:16]


def _read_verdicts(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # no checks yet, or an unreadable file: behave as never checked
    return data if isinstance(data, dict) else {}


def load_entry(key: str) -> object:
    """What was recorded under `key` (None if nothing, or no cache can be read); any JSON
    value."""
    try:
        return _read_verdicts(verdicts_file()).get(key)
    except OSError:
        return None


def save_entry(key: str, entry: dict) -> None:
    """Record `entry` under `key` beside the other verdicts (a temporary file, renamed).

    Two doctors at once (a provisioning script timing two models) each read, change and
    write the whole file: a lock beside it makes them take turns, or one's entry was lost.
    The file gets the mode any new file gets (0666 less the umask), so a service account
    reads what an administrator's doctor recorded in a shared cache.
    """
    target = verdicts_file()
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    # Writers take turns while the verdicts are read, changed and written.
    with held_exclusively(folder / f".{_VERDICTS_FILE}.lock", create=True):
        verdicts = _read_verdicts(target)
        verdicts[key] = entry
        temporary = folder / f".{_VERDICTS_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(verdicts, file, indent=2)
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


def load_verdict(key: str) -> Verdict | None:
    entry = load_entry(key)
    try:
        if not isinstance(entry["ok"], bool):  # a hand-edited "false" is not a pass
            return None
        return Verdict(str(entry["path"]), entry["ok"], str(entry["detail"]),
                       str(entry["checked_at"]))
    except (TypeError, KeyError):
        return None


def save_verdict(key: str, path: str, ok: bool, detail: str) -> Verdict:
    """Record a check's outcome (written to a temporary file, then renamed)."""
    verdict = Verdict(path, ok, detail, time.strftime("%Y-%m-%d %H:%M:%S"))
    save_entry(key, {"path": verdict.path, "ok": verdict.ok, "detail": verdict.detail,
                     "checked_at": verdict.checked_at})
    return verdict
