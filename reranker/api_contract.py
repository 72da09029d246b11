"""The rerank API contract, defined once: what a request may hold, how each edge case is
answered, and the shapes of the answers.

The CLI (`rerank --json`, `--batch`), the HTTP server (whose OpenAPI schema is generated
from these models) and the Python API (`answer_request`) all validate with these models
and build their answers here, so that one request gets one answer whichever way it comes.

Decided once (Cohere's and Jina's APIs are the reference; README, "The rerank API"):
- `query` must be a non-empty string: there is nothing to rank against otherwise.
- `documents` must be a non-empty list (Cohere: "list of documents must not be empty";
  TEI: "texts cannot be empty"); an empty string is a valid document.
- `top_n` is an integer of at least 1 (Cohere's minimum) or absent; larger than the list
  returns every document. A bool, float or string is refused, not converted.
- Unknown fields are ignored, so that clients of either API work unchanged.
- Text must be valid Unicode: JSON can carry a lone surrogate ("\\ud800"), which has no
  UTF-8 form for the tokenizer.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator,
                      Field, StrictBool, StrictInt, StrictStr, Tag, ValidationError)
from pydantic_core import PydanticCustomError

from reranker.errors import RerankerError
from reranker.reranker import Scores, rank_scores, unpaired_surrogate

if TYPE_CHECKING:
    from reranker.reranker import Reranker

TOP_N_MINIMUM = 1


class RequestError(RerankerError, ValueError):
    """A request the contract refuses. `kind` and `field` are those of the error body
    {"error": {"type", "message", "field"?}} every front end answers with."""

    def __init__(self, message: str, kind: str = "invalid_request", field: str | None = None):
        super().__init__(message)
        self.message, self.kind, self.field = message, kind, field

    def body(self) -> dict:
        error = {"type": self.kind, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


def _unicode_text(value):
    """Refuse a string with an unpaired surrogate: it has no UTF-8 form, so llama.cpp's
    tokenizer, the logs and the JSON answer could not take it."""
    position = unpaired_surrogate(value) if isinstance(value, str) else None
    if position is not None:
        raise PydanticCustomError(
            "invalid_unicode", "has an unpaired surrogate {char} at character {position}; "
            "send valid Unicode text (a \\u escape of a surrogate must be followed by "
            "its pair)", {"char": repr(value[position])[1:-1], "position": position})
    return value


# Checked before the type, so that the query's length check does not refuse it first
# with a vaguer message.
Text = Annotated[StrictStr, BeforeValidator(_unicode_text)]


class DocumentObject(BaseModel):
    text: Text


class RerankRequest(BaseModel):
    """The Jina / Cohere rerank request (`/v1/rerank`, `/v2/rerank`, CLI batch lines)."""
    model_config = ConfigDict(extra="ignore")

    model: Text | None = None
    query: Text = Field(min_length=1)
    documents: list[Text | DocumentObject] = Field(min_length=1)
    top_n: StrictInt | None = Field(default=None, ge=TOP_N_MINIMUM)
    return_documents: StrictBool = True
    instruction: Text | None = None
    # Cohere's: each document is cut at this many tokens. Documents are always cut at the
    # model's own limit (2048 tokens as published), so a larger cap changes nothing.
    max_tokens_per_doc: StrictInt | None = Field(default=None, ge=1)

    def document_texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


def _right_only(direction: str) -> str:
    if direction.lower() != "right":
        raise PydanticCustomError(
            "unsupported_truncation", "this model keeps the start of a document that is too "
            "long (it cuts at the right, as published); send 'Right' or leave it out")
    return direction


class TeiRerankRequest(BaseModel):
    """Hugging Face text-embeddings-inference's rerank request (`POST /rerank` with
    "texts"). `raw_scores` changes nothing: the score is already this model's raw score,
    a cosine in [-1, 1], with no sigmoid to apply or undo. `truncate` changes nothing
    either: documents are always cut at the model's limit, as on the other routes."""
    model_config = ConfigDict(extra="ignore")

    query: Text = Field(min_length=1)
    texts: list[Text] = Field(min_length=1)
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool | None = False
    truncation_direction: Annotated[Literal["Right", "right", "Left", "left"],
                                    AfterValidator(_right_only)] = "Right"

    def document_texts(self) -> list[str]:
        return list(self.texts)

    def as_rerank_request(self) -> RerankRequest:
        return RerankRequest(query=self.query, documents=self.texts,
                             return_documents=self.return_text)


def _request_shape(body: Any) -> str:
    # TEI's body names its documents "texts"; anything else is read as the rerank API's.
    if isinstance(body, Mapping) and "texts" in body and "documents" not in body:
        return "tei"
    return "rerank_api"


# `POST /rerank`: either shape, told apart by the body (see _request_shape).
AnyRerankRequest = Annotated[
    Annotated[RerankRequest, Tag("rerank_api")] | Annotated[TeiRerankRequest, Tag("tei")],
    Discriminator(_request_shape)]
# Names pydantic puts into an error's location that are not fields of the body.
_SHAPE_NAMES = {"str", "DocumentObject", "rerank_api", "tei"}


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

    def to_json(self) -> dict:
        """As the server sends it: no "document" key where documents were not asked for."""
        return self.model_dump(exclude_none=True)


class ApiVersion(BaseModel):
    version: str


class TokenCount(BaseModel):
    input_tokens: int


class CohereMeta(BaseModel):
    api_version: ApiVersion
    # Nothing is billed here; the tokens read are what Cohere's meta reports as such.
    billed_units: TokenCount
    tokens: TokenCount


class CohereV2Result(BaseModel):
    index: int
    relevance_score: float


class CohereV2Response(BaseModel):
    """Cohere's v2 rerank answer: documents are never echoed in v2."""
    id: str
    results: list[CohereV2Result]
    meta: CohereMeta


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None


# The edge cases this contract decides, worded with what to send instead.
_DECIDED = {
    ("query", "string_too_short"): "is empty; send the text to rank the documents against",
    ("documents", "too_short"): "is an empty list; send at least one document (an empty "
                                "string is a valid one)",
    ("texts", "too_short"): "is an empty list; send at least one text",
    ("top_n", "greater_than_equal"): f"must be at least {TOP_N_MINIMUM}; leave it out to get "
                                     "every document",
}


def parse_request(data: Any) -> RerankRequest:
    """A decoded JSON value as a RerankRequest, or RequestError naming the field."""
    try:
        return RerankRequest.model_validate(data)
    except ValidationError as error:
        raise invalid_request(error.errors()) from None


def invalid_request(errors: Sequence[Mapping]) -> RequestError:
    """The first of pydantic's validation errors (locations start at the body's fields)
    as one RequestError naming its field."""
    # Text that is not valid Unicode is named before the other errors a union adds for it.
    first = next((e for e in errors if e.get("type") == "invalid_unicode"),
                 errors[0] if errors else {})
    # Union members add their names to the location ("str", "DocumentObject", or
    # "function-before[...]" for a validated str); keep the field path only.
    location = [str(part) for part in first.get("loc", ())
                if isinstance(part, int)
                or (part.isidentifier() and part not in _SHAPE_NAMES)]
    field = ".".join(location) or None
    if field is None:
        message = ("the body must be a JSON object with 'query' and 'documents' "
                   "(or, as text-embeddings-inference sends it, 'query' and 'texts')")
    elif first.get("type") == "invalid_unicode":
        message = f"{field}: {first['msg']}"
    elif (field, first.get("type")) in _DECIDED:
        message = f"{field}: {_DECIDED[field, first['type']]}"
    elif len(location) >= 2 and location[0] == "documents" and location[1].isdigit():
        field = f"documents.{location[1]}"
        message = f"{field}: each document must be a string or an object {{\"text\": string}}"
    else:
        message = f"{field}: {first.get('msg', 'invalid value')}"
    return RequestError(message, field=field)


def model_id(model_path: Path) -> str:
    """The model name an answer carries unless a server is told another (`serve
    --model-name`): the file's name without `.gguf`, as `/v1/models` lists it."""
    return Path(model_path).stem


def rerank_response(request: RerankRequest, scored: Scores, model_name: str) -> RerankResponse:
    """The answer to `request` from its documents' scores (in input order)."""
    documents = request.document_texts()
    results = [
        RerankResultItem(index=r.index, relevance_score=r.relevance_score,
                         document=ResultDocument(text=r.document)
                         if request.return_documents else None)
        for r in rank_scores(scored, documents, top_n=request.top_n)]
    return RerankResponse(model=model_name, usage=Usage(total_tokens=scored.total_tokens),
                          results=results)


def cohere_v2_response(response: RerankResponse) -> CohereV2Response:
    tokens = TokenCount(input_tokens=response.usage.total_tokens)
    return CohereV2Response(
        id=str(uuid.uuid4()),
        results=[CohereV2Result(index=r.index, relevance_score=r.relevance_score)
                 for r in response.results],
        meta=CohereMeta(api_version=ApiVersion(version="2"), billed_units=tokens, tokens=tokens))


def tei_response(response: RerankResponse) -> list[TeiRank]:
    return [TeiRank(index=r.index, score=r.relevance_score,
                    text=r.document.text if r.document is not None else None)
            for r in response.results]


def answer_request(ranker: Reranker, request: RerankRequest | Mapping, *,
                   model_name: str | None = None,
                   should_stop: Callable[[], bool] | None = None) -> RerankResponse:
    """Answer one rerank API request with a loaded Reranker, as the server would.

    `request` is a RerankRequest or its JSON object (a dict); a request the contract
    refuses raises RequestError with the field, and a well-formed one the model cannot
    score (a query too long for the context) raises the Reranker's own error.
    """
    if not isinstance(request, RerankRequest):
        request = parse_request(request)
    scored = ranker.score(request.query, request.document_texts(),
                          instruction=request.instruction, should_stop=should_stop,
                          max_doc_tokens=request.max_tokens_per_doc)
    return rerank_response(request, scored, model_name or model_id(ranker.model_path))
