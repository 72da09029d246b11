"""The server's settings, checked once at start-up."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reranker.reranker import BLOCK_TOKENS


@dataclass(frozen=True)
class ServerSettings:
    model_path: Path
    model_name: str  # the id /v1/models lists and responses carry
    model_aliases: tuple[str, ...] = ("jina-reranker-v3",)  # also accepted in requests
    projector_path: Path | None = None
    workers: int = 1  # llama.cpp contexts; one decode already uses every thread it gets
    threads: int | None = None  # CPU threads in all, shared among the workers
    block_tokens: int = BLOCK_TOKENS  # token budget of one block (the published default)
    cpu_path: str | None = None  # llama.cpp's weight layout; None: $RERANKER_CPU_PATH or auto
    queue_size: int = 16  # requests that may wait for a worker; beyond: 429
    queue_timeout: float = 60.0  # seconds a request may wait before a 503
    max_documents: int = 1000
    max_body_bytes: int = 8 * 1024 * 1024
    max_tokens: int = 262_144  # query + documents (after truncation) per request
    api_key: str | None = field(default=None, repr=False)
    log_documents: bool = False

    def __post_init__(self):
        for name in ("workers", "queue_size", "max_documents", "max_body_bytes", "max_tokens",
                     "block_tokens"):
            value = getattr(self, name)
            if value < (0 if name == "queue_size" else 1):
                raise ValueError(f"{name} must be positive, got {value}")
        if self.queue_timeout <= 0:
            raise ValueError(f"queue_timeout must be positive, got {self.queue_timeout}")

    @property
    def accepted_model_names(self) -> set[str]:
        return {self.model_name, self.model_path.name, *self.model_aliases}
