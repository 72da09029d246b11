"""Requantize a GGUF with llama.cpp's own quantizer (k-quants, i-quants, legacy types).

The quantizer runs in a child process. In-process it could be neither stopped (it has no
abort callback: on Ctrl-C it went on for minutes in a thread, burning both cores of a
notebook's kernel) nor survived (an abort in ggml ends the whole process). A child is
killed on an interrupt, and its death is a ConversionError. Its llama.cpp log lines come
back to this process's `reranker.llama_cpp` logger.

The child is `python -m convert.quantize`, not a multiprocessing worker: spawn would
re-run the caller's `__main__`, which breaks scripts without a `__main__` guard.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from convert.errors import ConversionError
from convert.file_types import FileType


def run_llama_quantizer(source: Path, destination: Path, target: FileType,
                        n_threads: int | None = None) -> None:
    """Quantize `source` (F32/F16/BF16 GGUF) into `destination`.

    llama.cpp copies every metadata key to the output, so the projector and the
    provenance keys travel with the weights.
    """
    from reranker.llama_logging import logger  # with its NullHandler: silent unless asked

    if not sys.executable:
        raise ConversionError("cannot start llama.cpp's quantizer: this Python does not know "
                              "its own interpreter (sys.executable is empty)")
    # `python -m` puts the working directory first on the path, where a user's own
    # convert.py would be imported instead: the child runs in this package's folder, and
    # is given absolute paths.
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "convert.quantize", os.path.abspath(source),
               os.path.abspath(destination), str(int(target.ftype)), str(n_threads or 0),
               str(logger.getEffectiveLevel()), str(os.getpid())]
    # A session of its own: the terminal's Ctrl-C reaches this process only, which then
    # kills the child (reaching the child too, it printed a traceback while starting up).
    job = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           cwd=root, env=_child_environment(root), start_new_session=True)
    outcome: dict = {}
    try:
        for line in job.stdout:
            message = _parse(line)
            if message is None:  # something in the child printed to stdout itself
                logger.debug("%s", line.decode(errors="replace").rstrip())
            elif "log" in message:
                level, text = message["log"]
                logger.log(level, "%s", text)
            else:
                outcome = message
        job.wait()
    except BaseException:
        _kill(job)
        raise
    finally:
        job.stdout.close()  # if a second interrupt skipped the kill, the child sees this
    if not outcome:
        how = (f"signal {-job.returncode}" if job.returncode < 0
               else f"exit code {job.returncode}")
        raise ConversionError(f"llama.cpp's quantizer stopped with {how} while making "
                              f"{target.name} (run with -v to see its log)")
    if outcome["status"] != 0:
        reason = outcome["error"] or f"status {outcome['status']}"
        raise ConversionError(f"llama.cpp's quantizer failed to make {target.name}: {reason}"
                              f"{_free_space_note(destination)} (run with -v to see its log)")


def _kill(job: subprocess.Popen) -> None:
    """Kill and reap the child, through further interrupts (a double Ctrl-C): the caller
    removes the temporary file next, which a live child would write again."""
    while job.poll() is None:
        try:
            job.kill()
            job.wait()
        except KeyboardInterrupt:
            continue


def _free_space_note(destination: Path) -> str:
    """llama.cpp reports a full disk as "basic_ios::clear: iostream error": say how much
    room there is, so the cause can be seen."""
    try:
        free = shutil.disk_usage(Path(destination).parent).free
    except OSError:
        return ""
    return f" ({free / 1e6:,.0f} MB free in {Path(destination).parent})"


def _parse(line: bytes) -> dict | None:
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _child_environment(root: Path) -> dict[str, str]:
    """This process's environment, with the folder this package was imported from first
    on the child's path (a checkout run without installing, or a test's copy)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


class _ToParent(logging.Handler):
    """Each llama.cpp log line as a JSON line on stdout, which the parent reads."""

    def emit(self, record: logging.LogRecord) -> None:
        _send({"log": [record.levelno, record.getMessage()]})


def _send(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _end_without_parent(parent: int, destination: str) -> None:
    """Once nobody will read the answer, remove the file nobody will rename and exit: the
    parent died (killed outright, it had no chance to kill us; its pid comes from the
    parent itself, since it may be gone before this runs) or closed the pipe (a second
    interrupt that skipped the kill). `destination` is the parent's temporary file."""
    pipe = select.poll()
    pipe.register(sys.stdout.fileno(), select.POLLERR | select.POLLHUP)
    while not pipe.poll(1000) and os.getppid() == parent:
        pass
    with contextlib.suppress(OSError):
        os.unlink(destination)
    os._exit(1)


def _child(source: str, destination: str, ftype: int, n_threads: int, log_level: int,
           parent: int) -> None:
    # The parent decides on interrupts (it kills this process); one raised here in the log
    # callback would only be swallowed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_end_without_parent, args=(parent, destination),
                     daemon=True).start()
    import llama_cpp

    from reranker.llama_logging import logger, route_llama_logs, take_last_error

    logger.setLevel(log_level)
    logger.addHandler(_ToParent())
    logger.propagate = False
    route_llama_logs()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = n_threads  # 0: llama.cpp uses the hardware's thread count
    # os.fsencode: a file name that is not UTF-8 reaches the C library as its own bytes.
    status = llama_cpp.llama_model_quantize(os.fsencode(source), os.fsencode(destination),
                                            params)
    _send({"status": int(status), "error": take_last_error()})


if __name__ == "__main__":
    _source, _destination, _ftype, _threads, _level, _parent = sys.argv[1:]
    _child(_source, _destination, int(_ftype), int(_threads), int(_level), int(_parent))
