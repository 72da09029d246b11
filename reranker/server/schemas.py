"""Request and response bodies of the rerank API (Jina / Cohere shape)."""
from __future__ import annotations

from typing import Annotated

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt,
                      StrictStr)
from pydantic_core import PydanticCustomError


def _unicode_text(value):
    """Refuse a string with an unpaired surrogate (JSON allows "\\ud800" alone): it has no
    UTF-8 form, so llama.cpp's tokenizer, the logs and the JSON answer could not take it."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise PydanticCustomError(
                "invalid_unicode", "has an unpaired surrogate {char} at character {position}; "
                "send valid Unicode text (a \\u escape of a surrogate must be followed by "
                "its pair)", {"char": repr(value[error.start])[1:-1], "position": error.start})
    return value


# Checked before the type, so that the query's length check does not refuse it first
# with a vaguer message.
Text = Annotated[StrictStr, BeforeValidator(_unicode_text)]


class DocumentObject(BaseModel):
    text: Text


class RerankRequest(BaseModel):
    # Unknown fields (e.g. Cohere's max_tokens_per_doc) are ignored, not refused,
    # so clients written for either API work unchanged.
    model_config = ConfigDict(extra="ignore")

    model: Text | None = None
    query: Text = Field(min_length=1)
    documents: list[Text | DocumentObject] = Field(min_length=1)
    top_n: StrictInt | None = Field(default=None, ge=1)
    return_documents: StrictBool = True
    instruction: Text | None = None

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


class ErrorDetail(BaseModel):
    type: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx answer."""
    error: ErrorDetail
