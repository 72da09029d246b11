"""Errors the converter raises for bad input or a failed conversion."""
from __future__ import annotations

from reranker.errors import RerankerError


class ConversionError(RerankerError):
    """A conversion could not be done; the message names the file or tensor and why."""


class CheckpointError(ConversionError):
    """The input is not a usable jina-reranker-v3 checkpoint."""
