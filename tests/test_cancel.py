"""Stopping a running `Reranker.score` through llama.cpp's abort callback."""
from __future__ import annotations

import signal
import threading

import pytest

from processes import run_python
from reranker import Reranker, RerankerCancelled

QUERY = "which document talks about cancellation?"
# A first document of about 1500 tokens: its prompt prefix spans several 512-token
# micro-batches. A following call with as many documents and the same first one shares
# that prefix, and would reuse its KV cache.
LONG = "the first document is long and repeats itself " * 180
DOCS = [LONG] + [f"document number {i} about something else" for i in range(10)]
OTHER_DOCS = [LONG] + [f"another document, number {i}" for i in range(10)]


class CountingStop:
    """should_stop that answers true from its `at`-th call on (never, if at is None)."""

    def __init__(self, at: int | None = None):
        self.at, self.calls = at, 0
        self.lock = threading.Lock()

    def __call__(self) -> bool:
        with self.lock:
            self.calls += 1
            return self.at is not None and self.calls >= self.at


@pytest.fixture(scope="module")
def model(converted):
    return converted("q8_0")


def test_a_decode_stops_inside_llama_decode(model):
    with Reranker(model, n_threads=2) as ranker:
        # One short block: one micro-batch. The first two calls come before each document
        # is tokenized, the third before the block, the rest from llama.cpp's abort
        # callback, during the decode.
        stop = CountingStop(at=5)
        with pytest.raises(RerankerCancelled, match="while decoding"):
            ranker.score("q", ["a", "b"], should_stop=stop)
        assert stop.calls == 5  # nothing was computed after it answered true
        assert ranker.score("q", ["a", "b"]).scores.shape == (2,)


def test_after_a_cancelled_call_scores_equal_a_fresh_rerankers(model):
    with Reranker(model, n_threads=2) as fresh:
        counting = CountingStop()
        fresh.score(QUERY, DOCS, should_stop=counting)  # how many calls a whole decode makes
        expected = fresh.score("an unrelated query", OTHER_DOCS[:2]).scores
        expected_other = fresh.score(QUERY, OTHER_DOCS).scores
    with Reranker(model, n_threads=2) as ranker:
        for fraction in (0.3, 0.7):  # in an early and in a late micro-batch
            # Another query first, so that the stopped call decodes its prompt from the
            # system message on, the first document included.
            assert (ranker.score("an unrelated query", OTHER_DOCS[:2]).scores == expected).all()
            stop = CountingStop(at=int(counting.calls * fraction))
            with pytest.raises(RerankerCancelled):
                ranker.score(QUERY, DOCS, should_stop=stop)
            # Shares the long first document with the stopped call: reusing its aborted
            # KV cache would change these scores.
            assert (ranker.score(QUERY, OTHER_DOCS).scores == expected_other).all()


@pytest.mark.parametrize("method", ["score", "plan"])
def test_tokenizing_many_documents_stops_between_them(model, method):
    with Reranker(model, n_threads=2) as ranker:
        stop = CountingStop(at=2)
        with pytest.raises(RerankerCancelled, match="after 1 of 5 documents"):
            getattr(ranker, method)(QUERY, DOCS[:5], should_stop=stop)
        assert stop.calls == 2
        assert ranker.score(QUERY, DOCS[:5]).scores.shape == (5,)


def test_an_error_in_should_stop_reaches_the_caller(model):
    def broken() -> bool:
        raise ZeroDivisionError("from should_stop")

    with Reranker(model, n_threads=2) as ranker:
        with pytest.raises(ZeroDivisionError):
            ranker.score("q", ["a", "b"], should_stop=broken)
        assert ranker.score("q", ["a", "b"]).scores.shape == (2,)


def test_ctrl_c_during_a_decode_raises_keyboard_interrupt(model):
    """A real SIGINT from another thread while llama.cpp decodes: Python runs its handler at
    the main thread's next bytecode, which used to be inside one of llama.cpp's callbacks,
    where ctypes swallowed the KeyboardInterrupt (the decode then failed with status 2)."""
    import os
    import signal

    decoding = threading.Event()
    calls = CountingStop()

    def note_decoding() -> bool:
        calls()
        if calls.calls > len(DOCS) + 5:  # past planning and the block's check: in llama.cpp
            decoding.set()
        return False

    def interrupt() -> None:
        decoding.wait(30)
        os.kill(os.getpid(), signal.SIGINT)

    with Reranker(model, n_threads=2) as ranker:
        expected = ranker.score(QUERY, DOCS).scores
        ranker.score("an unrelated query", OTHER_DOCS[:2])
        sender = threading.Thread(target=interrupt)
        sender.start()
        with pytest.raises(KeyboardInterrupt):
            for _ in range(50):  # the signal lands in one of these decodes
                ranker.score(QUERY, DOCS, should_stop=note_decoding)
                ranker.score("an unrelated query", OTHER_DOCS[:2])
        sender.join()
        assert (ranker.score(QUERY, DOCS).scores == expected).all()


INTERRUPTED_CLOSE = """
import os, signal, sys, threading, time
from reranker import Reranker
ranker = Reranker(sys.argv[1], n_threads=1)
ranker.score("q", ["a b c"])
threading.Thread(target=lambda: (time.sleep(float(sys.argv[2])),
                                 os.kill(os.getpid(), signal.SIGINT)), daemon=True).start()
ranker.close()
time.sleep(0.2)  # the interrupt, if it comes after close, lands here
"""


@pytest.mark.slow  # child processes
def test_ctrl_c_during_close_never_frees_twice(converted):
    """The model was freed and the interrupt raised before the pointer was cleared, and
    `__del__` at exit freed it again: a segfault or "double free" abort (6 of 6 runs)."""
    for delay in (0.0, 0.001, 0.005, 0.02):
        child = run_python(INTERRUPTED_CLOSE, converted("f16"), delay)
        # Python ends an uncaught KeyboardInterrupt by SIGINT; a double free is SIGSEGV or
        # SIGABRT ("free(): double free detected").
        assert child.returncode in (0, -signal.SIGINT), (delay, child.returncode,
                                                         child.stderr[-1500:])
