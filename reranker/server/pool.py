"""A bounded queue in front of a fixed set of llama.cpp contexts.

Admission is decided on the event loop: at most `workers` requests run and at
most `queue_size` more wait; anything beyond is refused at once (the caller turns
that into a 429 with Retry-After) instead of growing an unbounded backlog. Waiting
happens on the event loop too, so a request that has waited `queue_timeout` seconds
is refused then (not when a worker frees up) and never runs, and a request whose
client went away leaves the queue.

Running work is given a `should_stop` callable for `Reranker.score`: it answers true
once the client has gone or the server is shutting down past its grace period, and
llama.cpp then stops the decode through its abort callback.

Each context scores one small request when it is opened, before the pool takes any
work: a llama.cpp build that crashes on this CPU then stops the server at start-up,
instead of after `/health` has said ok and requests have queued behind the crash.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from reranker import Reranker, RerankerCancelled, RerankerError

T = TypeVar("T")
# How often a waiting or running request asks whether its client is still there.
POLL_SECONDS = 0.1


class QueueFull(Exception):
    pass


class QueueTimeout(Exception):
    pass


class Stopped(Exception):
    """A request given up before its answer; `running` tells whether its work had started."""

    def __init__(self, running: bool):
        super().__init__(self.__doc__)
        self.running = running


class ClientGone(Stopped):
    """The client disconnected."""


class ShuttingDown(Stopped):
    """The server stopped the request: its shutdown grace period ran out."""


def prove_scoring(reranker: Reranker) -> None:
    """Score one small request, as a real one would be scored, or raise."""
    scored = reranker.score("readiness check", ["a first document", "a second document"])
    if scored.scores.shape != (2,) or not np.isfinite(scored.scores).all():
        raise RerankerError(f"the start-up scoring call returned {scored.scores!r}; "
                            "run `reranker-cli doctor` to check this machine")


class RerankerPool:
    def __init__(self, open_reranker: Callable[[], Reranker], *, workers: int, queue_size: int,
                 queue_timeout: float,
                 check: Callable[[Reranker], None] | None = prove_scoring):
        self._all: list[Reranker] = []
        self._closing = threading.Event()  # stops all running work
        try:
            for _ in range(workers):
                reranker = open_reranker()
                self._all.append(reranker)
                if check is not None:
                    check(reranker)
        except BaseException:
            self.close()
            raise
        # Created on first use, in the event loop that serves (the pool may be opened
        # before that loop exists, e.g. by `serve` before it binds the port).
        self._idle: asyncio.Queue[Reranker] | None = None
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rerank")
        self.workers, self.queue_size, self.queue_timeout = workers, queue_size, queue_timeout
        self.cpu_path = self._all[0].cpu_path.name  # the weight layout the workers loaded
        self.engine = self._all[0].engine.name  # llama.cpp, torch or llama.cpp+torch
        self.admitted = 0  # running + waiting; only touched on the event loop thread
        self.running = 0

    @property
    def waiting(self) -> int:
        return self.admitted - self.running

    async def run(self, work: Callable[[Reranker, Callable[[], bool]], T], *,
                  client_gone: Callable[[], Awaitable[bool]] | None = None) -> T:
        """`work(reranker, should_stop)` on a free worker, in a worker thread.

        Raises QueueFull, QueueTimeout, ClientGone (polled with `client_gone` while
        waiting and running) or ShuttingDown (this task was cancelled, as uvicorn does
        when the shutdown grace period ends, or the pool was closed) instead of the result.
        """
        if self.admitted >= self.workers + self.queue_size:
            raise QueueFull
        self.admitted += 1
        try:
            reranker = await self._acquire(client_gone)
            self.running += 1
            try:
                return await self._work(work, reranker, client_gone)
            finally:
                self.running -= 1
                self._idle.put_nowait(reranker)
        finally:
            self.admitted -= 1

    async def _acquire(self, client_gone) -> Reranker:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for reranker in self._all:
                self._idle.put_nowait(reranker)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.queue_timeout
        get = asyncio.ensure_future(self._idle.get())  # first come, first served
        try:
            while not get.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise QueueTimeout
                await asyncio.wait({get}, timeout=min(POLL_SECONDS, remaining))
                if not get.done() and client_gone is not None and await client_gone():
                    raise ClientGone(running=False)
            return get.result()
        except BaseException as error:
            if get.done() and not get.cancelled():
                self._idle.put_nowait(get.result())  # handed over just as we gave up
            else:
                get.cancel()  # leaves the queue: nothing will be handed to it
            if isinstance(error, asyncio.CancelledError):
                raise ShuttingDown(running=False) from None
            raise

    async def _work(self, work, reranker: Reranker, client_gone) -> T:
        stop = threading.Event()
        closing = self._closing
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, work, reranker, lambda: stop.is_set() or closing.is_set())
        gone = False
        # The worker thread holds `reranker` until `future` is done: whatever happens here,
        # wait for that before the reranker goes back to the idle queue.
        while not future.done():
            try:
                await asyncio.wait({future}, timeout=POLL_SECONDS)
                if not (future.done() or gone) and client_gone is not None \
                        and await client_gone():
                    gone = True
                    stop.set()
            except asyncio.CancelledError:
                # uvicorn cancels requests when the shutdown grace period is over: stop the
                # work, and answer (503, or the result if it was done) when the worker has.
                stop.set()
        try:
            result = future.result()
        except RerankerCancelled:
            if gone:
                raise ClientGone(running=True) from None
            raise ShuttingDown(running=True) from None
        if gone:  # finished before it could stop; there is no one to answer
            raise ClientGone(running=True)
        return result

    def close(self) -> None:
        """Stop running work, wait for it to end, then free every context."""
        self._closing.set()
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        for reranker in self._all:
            reranker.close()
        self._all = []
