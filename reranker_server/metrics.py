"""Prometheus metrics, in a registry of the app's own (not the process-wide default)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("reranker_requests", "Rerank requests by HTTP status",
                                ["status"], registry=self.registry)
        self.latency = Histogram("reranker_request_seconds", "Time to answer a rerank request",
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
                                 registry=self.registry)
        self.tokens = Counter("reranker_tokens", "Prompt tokens decoded", registry=self.registry)
        self.documents = Counter("reranker_documents", "Documents scored", registry=self.registry)
        self.queue_depth = Gauge("reranker_queue_depth", "Requests waiting for a worker",
                                 registry=self.registry)
        self.running = Gauge("reranker_running", "Requests being scored", registry=self.registry)
