"""Ctrl-C during a long call into llama.cpp.

Python runs a signal's handler in the main thread, at the next bytecode that thread runs.
While llama.cpp works, that bytecode is in one of the Python callbacks it calls (its log
lines, the graph's eval and abort callbacks), and ctypes swallows whatever a callback
raises ("Exception ignored on calling ctypes callback function"). So a Ctrl-C was lost:
a decode failed with an error status instead, a quantization ran to its end and was kept.

A long call made from the main thread therefore runs in a helper thread, where no
handler runs, while the main thread waits for it and receives the interrupt. Other
threads (the server's workers) never receive signals, so their calls run directly.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_interruptibly(call: Callable[[], T], *, stop: Callable[[], None] | None = None,
                      wait: bool = True) -> T:
    """`call()`, but a KeyboardInterrupt (or a SIGTERM handler's exception) that arrives
    meanwhile in the main thread is raised here.

    On an interrupt, `stop()` asks the call to end early (e.g. sets a flag its abort
    callback reads); then, if `wait`, the call is waited for, since what it uses may be
    freed as the exception unwinds (further interrupts while waiting are ignored). With
    `wait=False` the call is left to finish in its daemon thread, for a call that cannot
    be stopped and uses nothing the caller frees.
    """
    if threading.current_thread() is not threading.main_thread():
        return call()
    # Whoever takes `claim` first decides whether `call` runs: an interrupt can come
    # while the helper is being started, before or after it exists.
    claim = threading.Lock()
    state = {"started": False, "abandoned": False}
    done = threading.Event()
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            with claim:
                if state["abandoned"]:
                    return
                state["started"] = True
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = error
        finally:
            done.set()

    try:
        threading.Thread(target=target, name="reranker-llama-call", daemon=True).start()
        done.wait()
    except BaseException:
        with claim:
            state["abandoned"] = True
            started = state["started"]
        if started:
            if stop is not None:
                stop()
            while wait and not done.is_set():
                try:
                    done.wait()
                except KeyboardInterrupt:
                    continue
        raise
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
