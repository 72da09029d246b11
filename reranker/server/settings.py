"""The server's settings, checked once at start-up."""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from reranker.reranker import BLOCK_TOKENS


def api_key_problem(key: str) -> str | None:
    """Why `key` cannot be asked for in 'Authorization: Bearer <key>', or None if it can.

    A key is one token: whitespace would be cut off or split the header, and control,
    format (zero-width, byte-order mark) or surrogate characters cannot travel in an HTTP
    header or are invisible in the file that holds the key. Other non-ASCII characters
    can: the header's bytes are compared with the key's UTF-8 bytes. The key itself is
    never repeated in the answer.
    """
    if not key:
        return "it is empty"
    for position, char in enumerate(key, start=1):
        if char.isspace() or unicodedata.category(char) in {"Cc", "Cf", "Cs"}:
            name = unicodedata.name(char, "a control or surrogate character")
            return (f"character {position} of {len(key)} is {name} (U+{ord(char):04X}); a key "
                    "must be one token without whitespace or control characters, as it is "
                    "sent in an 'Authorization: Bearer <key>' header")
    return None


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
    engine: str | None = None  # auto, llama.cpp or torch; None: $RERANKER_ENGINE or auto
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
        if self.api_key is not None and (problem := api_key_problem(self.api_key)):
            raise ValueError(f"the API key cannot be used: {problem}")

    @property
    def accepted_model_names(self) -> set[str]:
        return {self.model_name, self.model_path.name, *self.model_aliases}
