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

# ggml_log_level: NONE, INFO, WARN, ERROR, DEBUG, CONT (continues the previous line).
_LEVELS = {0: logging.CRITICAL, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR,
           4: logging.DEBUG}
_lock = threading.Lock()
_installed_callback = None  # kept referenced: llama.cpp calls it for the process's lifetime
_state = {"level": logging.DEBUG, "partial": ""}


def _forward(level: int, text: bytes, _user_data) -> None:
    if level != 5:
        _state["level"] = _LEVELS.get(level, logging.DEBUG)
    if not logger.isEnabledFor(_state["level"]):
        return
    line = _state["partial"] + text.decode("utf-8", errors="replace")
    if not line.endswith("\n"):  # llama.cpp sometimes emits a line in pieces
        _state["partial"] = line
        return
    _state["partial"] = ""
    logger.log(_state["level"], "%s", line.rstrip("\n"))


def route_llama_logs() -> None:
    """Install the forwarding callback (idempotent, thread-safe)."""
    global _installed_callback
    with _lock:
        if _installed_callback is not None:
            return
        import llama_cpp

        _installed_callback = llama_cpp.llama_log_callback(_forward)
        llama_cpp.llama_log_set(_installed_callback, ctypes.c_void_p(0))
