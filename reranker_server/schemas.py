"""Request and response bodies of the rerank API (Jina / Cohere shape)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class DocumentObject(BaseModel):
    text: StrictStr


class RerankRequest(BaseModel):
    # Unknown fields (e.g. Cohere's max_tokens_per_doc) are ignored, not refused,
    # so clients written for either API work unchanged.
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    query: StrictStr = Field(min_length=1)
    documents: list[StrictStr | DocumentObject] = Field(min_length=1)
    top_n: StrictInt | None = Field(default=None, ge=1)
    return_documents: StrictBool = True
    instruction: StrictStr | None = None

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class ResultDocument(BaseModel):
    text: str


class RerankResultItem(BaseModel):
    index: int
    relevance_score: float
    document: ResultDocument | None = None


class Usage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    model: str
    usage: Usage
    results: list[RerankResultItem]


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    owned_by: str = "local"


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]
