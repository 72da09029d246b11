"""Typed errors of the evaluation tools; each message names the file (and line) at fault."""
from __future__ import annotations

from pathlib import Path

from reranker.errors import RerankerError


class DatasetError(RerankerError, ValueError):
    """A dataset, qrels or run file is missing or malformed."""

    @classmethod
    def at(cls, path: str | Path, line: int, problem: str) -> DatasetError:
        return cls(f"{path}:{line}: {problem}")


class MissingDependencyError(RerankerError):
    """An optional package that one feature needs is not installed."""
