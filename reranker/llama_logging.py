"""Route llama.cpp's own log lines into Python logging, where they are silent by default.

llama.cpp has a single, process-wide log callback (and llama-cpp-python installs
one that prints everything to stderr). This module replaces it, once, with one that
forwards each line to the `reranker.llama_cpp` logger. The library adds no handler
of its own beyond a NullHandler on `reranker`, so nothing is printed unless the
application configures logging (the CLI's `-v` does).
"""
from __future__ import annotations

import ctypes
import logging
import threading

logger = logging.getLogger("reranker.llama_cpp")
logging.getLogger("reranker").addHandler(logging.NullHandler())

# ggml_log_level in this llama.cpp: NONE, DEBUG, INFO, WARN, ERROR, CONT (continues
# the previous line). llama-cpp-python's own logger still assumes an older order.
_LEVELS = {0: logging.INFO, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING,
           4: logging.ERROR}
_lock = threading.Lock()
_installed_callback = None  # kept referenced: llama.cpp calls it for the process's lifetime
_state = {"level": logging.DEBUG, "partial": "", "last_error": ""}


def _forward(level: int, text: bytes, _user_data) -> None:
    if level != 5:
        new_level = _LEVELS.get(level, logging.DEBUG)
        if _state["partial"] and new_level != _state["level"]:
            # An unfinished line of another level (a quantizer's progress line, then its
            # error) ends here: glued on, it hid the error's start.
            _emit(_state["partial"])
            _state["partial"] = ""
        _state["level"] = new_level
    line = _state["partial"] + text.decode("utf-8", errors="replace")
    if not line.endswith("\n"):  # llama.cpp sometimes emits a line in pieces
        _state["partial"] = line
        return
    _state["partial"] = ""
    _emit(line)


def _emit(line: str) -> None:
    line = line.strip()
    if _state["level"] >= logging.ERROR and line:
        _state["last_error"] = line
    if line and logger.isEnabledFor(_state["level"]):
        logger.log(_state["level"], "%s", line)


def take_last_error() -> str:
    """The last error line llama.cpp logged since the previous call ('' if none)."""
    message, _state["last_error"] = _state["last_error"], ""
    return message


def route_llama_logs() -> None:
    """Install the forwarding callback (idempotent, thread-safe)."""
    global _installed_callback
    with _lock:
        if _installed_callback is not None:
            return
        import llama_cpp

        _installed_callback = llama_cpp.llama_log_callback(_forward)
        llama_cpp.llama_log_set(_installed_callback, ctypes.c_void_p(0))
