"""Typed errors raised by the runtime; the CLI turns them into one-line messages."""
from __future__ import annotations


class RerankerError(Exception):
    """Base class for every error this library raises on purpose."""


class ModelFileError(RerankerError):
    """A model or projector file is missing, unreadable or not a reranker."""


class InputTooLongError(RerankerError, ValueError):
    """A query or instruction leaves no room for any document."""


class RerankerClosedError(RerankerError):
    """A call on a Reranker (or LlamaEngine) after `close()`: its llama.cpp objects are freed."""


class RerankerCancelled(RerankerError):
    """A call stopped because its `should_stop` callable answered true (e.g. the client left)."""


class TooManyTokensError(InputTooLongError):
    """A request's query and documents hold more tokens than a caller's limit
    (`Reranker.plan(max_input_tokens=...)`, a server's `--max-tokens`)."""

    def __init__(self, message: str, limit: int):
        super().__init__(message)
        self.limit = limit
