"""Prometheus metrics, in a registry of the app's own (not the process-wide default)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Every response, those the middleware and the framework answer included (401, 404,
        # 413...). `path` is one of the app's own paths, or "other".
        self.requests = Counter("reranker_requests", "HTTP responses by path and status",
                                ["path", "status"], registry=self.registry)
        self.latency = Histogram("reranker_request_seconds", "Time to answer, by path",
                                 ["path"],
                                 buckets=(0.005, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                                          120),
                                 registry=self.registry)
        self.tokens = Counter("reranker_tokens", "Prompt tokens of the requests scored",
                              registry=self.registry)
        self.decoded_tokens = Counter("reranker_decoded_tokens",
                                      "Prompt tokens llama.cpp decoded", registry=self.registry)
        self.reused_tokens = Counter("reranker_reused_tokens", "Prompt tokens not decoded: "
                                     "their KV cache was kept from the block or request before",
                                     registry=self.registry)
        self.documents = Counter("reranker_documents", "Documents scored", registry=self.registry)
        self.cancelled = Counter("reranker_cancelled_requests", "Rerank requests dropped or "
                                 "stopped before their answer, by reason (client_gone, "
                                 "shutdown) and stage (waiting, running)",
                                 ["reason", "stage"], registry=self.registry)
        self.queue_depth = Gauge("reranker_queue_depth", "Requests waiting for a worker",
                                 registry=self.registry)
        self.running = Gauge("reranker_running", "Requests being scored", registry=self.registry)
