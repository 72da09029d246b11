"""Listwise reranking with jina-reranker-v3 on CPU, through llama.cpp."""
from __future__ import annotations

from importlib import metadata as _metadata

from reranker.errors import (InputTooLongError, ModelFileError, RerankerCancelled,
                             RerankerClosedError, RerankerError, TooManyTokensError)
from reranker.reranker import Reranker, RerankResult, Scores
from reranker.scoring_plan import PlannedBlock, ScoringPlan
from reranker.api_contract import RequestError, RerankRequest, RerankResponse, answer_request

__all__ = ["InputTooLongError", "ModelFileError", "PlannedBlock", "Reranker", "RerankResult",
           "RerankerCancelled", "RerankerClosedError", "RerankerError", "Scores", "ScoringPlan",
           "RequestError", "RerankRequest", "RerankResponse", "TooManyTokensError",
           "answer_request"]
try:
    # One version string, pyproject.toml's: the CLI, the server and converted files all read it.
    __version__ = _metadata.version("reranker")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
