"""A bounded queue in front of a fixed set of llama.cpp contexts.

Admission is decided on the event loop: at most `workers` requests run and at
most `queue_size` more wait; anything beyond is refused at once (the caller turns
that into a 429 with Retry-After) instead of growing an unbounded backlog. A
request that waited longer than `queue_timeout` is dropped before it runs.
Running requests are not interrupted: a llama.cpp decode finishes its block.

Each context scores one small request when it is opened, before the pool takes any
work: a llama.cpp build that crashes on this CPU then stops the server at start-up,
instead of after `/health` has said ok and requests have queued behind the crash.
"""
from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from reranker import Reranker, RerankerError

T = TypeVar("T")


class QueueFull(Exception):
    pass


class QueueTimeout(Exception):
    pass


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
        self._rerankers: queue.Queue[Reranker] = queue.Queue()
        self._all: list[Reranker] = []
        try:
            for _ in range(workers):
                reranker = open_reranker()
                self._all.append(reranker)
                if check is not None:
                    check(reranker)
                self._rerankers.put(reranker)
        except BaseException:
            self.close()
            raise
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rerank")
        self.workers, self.queue_size, self.queue_timeout = workers, queue_size, queue_timeout
        self.cpu_path = self._all[0].cpu_path.name  # the weight layout the workers loaded
        self.admitted = 0  # running + waiting; only touched on the event loop thread
        self.running = 0

    @property
    def waiting(self) -> int:
        return self.admitted - self.running

    async def run(self, work: Callable[[Reranker], T]) -> T:
        if self.admitted >= self.workers + self.queue_size:
            raise QueueFull
        self.admitted += 1
        enqueued = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._run, work, enqueued, loop)
        finally:
            self.admitted -= 1

    def _run(self, work: Callable[[Reranker], T], enqueued: float, loop) -> T:
        if time.monotonic() - enqueued > self.queue_timeout:
            raise QueueTimeout
        reranker = self._rerankers.get()
        loop.call_soon_threadsafe(self._count_running, 1)
        try:
            return work(reranker)
        finally:
            self._rerankers.put(reranker)
            loop.call_soon_threadsafe(self._count_running, -1)

    def _count_running(self, delta: int) -> None:
        self.running += delta

    def close(self) -> None:
        """Wait for running work, then free every context."""
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        for reranker in self._all:
            reranker.close()
        self._all = []
