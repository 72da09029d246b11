"""Listwise reranking with jina-reranker-v3 on CPU, through llama.cpp."""
from __future__ import annotations

from reranker.errors import (InputTooLongError, ModelFileError, RerankerCancelled,
                             RerankerClosedError, RerankerError)
from reranker.reranker import Reranker, RerankResult, Scores

__all__ = ["InputTooLongError", "ModelFileError", "Reranker", "RerankResult",
           "RerankerCancelled", "RerankerClosedError", "RerankerError", "Scores"]
__version__ = "0.1.0"
