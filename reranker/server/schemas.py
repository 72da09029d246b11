"""Bodies only the server has: the rerank requests and answers are the API contract's
(reranker.api_contract), which the CLI and the Python API share."""
from __future__ import annotations

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    owned_by: str = "local"


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    type: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx answer."""
    error: ErrorDetail
