"""The FastAPI application: routes, limits, authentication, errors and metrics."""
from __future__ import annotations

import contextlib
import hmac
import logging
import math
import time
import uuid
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from reranker import Reranker, RerankerError
from reranker.reranker import rank_scores
from reranker_server.errors import ApiError
from reranker_server.metrics import ServerMetrics
from reranker_server.pool import QueueFull, QueueTimeout, RerankerPool
from reranker_server.schemas import (ModelCard, ModelList, RerankRequest, RerankResponse,
                                     RerankResultItem, ResultDocument, Usage)
from reranker_server.settings import ServerSettings

logger = logging.getLogger("reranker.server")
OPEN_PATHS = {"/health", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}


def default_opener(settings: ServerSettings) -> Callable[[], Reranker]:
    threads = None
    if settings.threads:
        threads = max(1, settings.threads // settings.workers)
    return lambda: Reranker(settings.model_path, settings.projector_path, n_threads=threads,
                            block_tokens=settings.block_tokens, cpu_path=settings.cpu_path)


def open_pool(settings: ServerSettings,
              open_reranker: Callable[[], Reranker] | None = None) -> RerankerPool:
    """The workers, each proven by one scoring call (the pool does it) before any request."""
    return RerankerPool(open_reranker or default_opener(settings), workers=settings.workers,
                        queue_size=settings.queue_size, queue_timeout=settings.queue_timeout)


def create_app(settings: ServerSettings,
               open_reranker: Callable[[], Reranker] | None = None, *,
               pool: RerankerPool | None = None) -> FastAPI:
    """The application; `pool` (already opened, e.g. by `serve` before it binds the port)
    is served and closed at shutdown, else one is opened at start-up from `open_reranker`."""
    metrics = ServerMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # Ready only when every worker has scored a request: /health is not served before.
        workers = pool or open_pool(settings, open_reranker)
        metrics.queue_depth.set_function(lambda: workers.waiting)
        metrics.running.set_function(lambda: workers.running)
        app.state.pool = workers
        logger.info("serving %s as %s with %d worker(s) on CPU path %s", settings.model_path,
                    settings.model_name, settings.workers, workers.cpu_path)
        try:
            yield
        finally:
            workers.close()

    app = FastAPI(title="reranker", version="0.1.0", lifespan=lifespan,
                  description="The Jina / Cohere rerank API for jina-reranker-v3 on CPU.")
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in content_type:
            unsupported = ApiError(415, "unsupported_media_type", f"the body was sent as "
                                   f"{content_type or 'no content type'}; send JSON with "
                                   "'Content-Type: application/json'", field="content-type")
            return JSONResponse(unsupported.body(), status_code=415)
        return _validation_response(error)

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if settings.api_key and request.url.path not in OPEN_PATHS:
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(),
                                                                     settings.api_key):
                error = ApiError(401, "unauthorized", "missing or wrong API key: send "
                                 "'Authorization: Bearer <key>'", field="authorization",
                                 headers={"WWW-Authenticate": "Bearer"})
                return JSONResponse(error.body(), status_code=401, headers=error.headers)
        return await call_next(request)

    @app.get("/health")
    async def health(request: Request) -> dict:
        pool: RerankerPool = request.app.state.pool
        return {"status": "ok", "model": settings.model_name, "workers": pool.workers,
                "running": pool.running, "waiting": pool.waiting, "cpu_path": pool.cpu_path}

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=settings.model_name)])

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def rerank(body: RerankRequest, request: Request) -> RerankResponse:
        started = time.monotonic()
        request_id = uuid.uuid4().hex[:12]
        status = 500
        try:
            response = await _rerank(body, request.app.state.pool, settings, metrics)
            status = 200
            return response
        except ApiError as error:
            status = error.status
            raise
        finally:
            seconds = time.monotonic() - started
            metrics.requests.labels(status=str(status)).inc()
            metrics.latency.observe(seconds)
            logger.info("request %s: %d documents, status %d, %.3f s", request_id,
                        len(body.documents), status, seconds)
            if settings.log_documents:
                logger.info("request %s: query %r, documents %r", request_id, body.query,
                            body.texts())

    for path in ("/v1/rerank", "/rerank"):
        app.post(path, response_model=RerankResponse, response_model_exclude_none=True)(rerank)
    return app


async def _rerank(body: RerankRequest, pool: RerankerPool, settings: ServerSettings,
                  metrics: ServerMetrics) -> RerankResponse:
    if body.model is not None and body.model not in settings.accepted_model_names:
        raise ApiError(404, "model_not_found", f"model {body.model!r} is not served here; "
                       f"this server serves {settings.model_name!r}", field="model")
    documents = body.texts()
    if len(documents) > settings.max_documents:
        raise ApiError(413, "too_many_documents", f"{len(documents)} documents exceed this "
                       f"server's limit of {settings.max_documents}", field="documents")

    def work(reranker: Reranker):
        tokens = reranker.count_tokens(body.query) + sum(
            min(reranker.count_tokens(d), reranker.max_doc_tokens) for d in documents)
        if tokens > settings.max_tokens:
            raise ApiError(413, "too_many_tokens", f"the query and documents hold {tokens} "
                           f"tokens; this server's limit is {settings.max_tokens}",
                           field="documents")
        return reranker.score(body.query, documents, instruction=body.instruction)

    try:
        scored = await pool.run(work)
    except QueueFull:
        raise ApiError(429, "overloaded", f"all {pool.workers} worker(s) are busy and "
                       f"{pool.queue_size} request(s) are waiting; retry later",
                       headers={"Retry-After": str(_retry_after(pool))}) from None
    except QueueTimeout:
        raise ApiError(503, "queue_timeout", f"the request waited more than "
                       f"{settings.queue_timeout:g} s for a worker; retry later",
                       headers={"Retry-After": str(_retry_after(pool))}) from None
    except RerankerError as error:
        raise ApiError(422, "unprocessable", str(error)) from None
    metrics.tokens.inc(scored.total_tokens)
    metrics.documents.inc(len(documents))
    results = [
        RerankResultItem(index=r.index, relevance_score=r.relevance_score,
                         document=ResultDocument(text=r.document) if body.return_documents
                         else None)
        for r in rank_scores(scored, documents, top_n=body.top_n)
    ]
    return RerankResponse(model=settings.model_name, usage=Usage(total_tokens=scored.total_tokens),
                          results=results)


def _retry_after(pool: RerankerPool) -> int:
    # A rough hint: one second per queued request per worker, at least one.
    return max(1, math.ceil(pool.admitted / max(1, pool.workers)))


def _validation_response(error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0] if error.errors() else {}
    if first.get("type") == "json_invalid":
        return JSONResponse(ApiError(400, "invalid_json", "the request body is not valid "
                                     "JSON").body(), status_code=400)
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    # Union members add their type names to the location; keep the field path only.
    location = [p for p in location if p not in {"str", "DocumentObject"}]
    field = ".".join(location) or None
    if field is None:
        message = "the body must be a JSON object with 'query' and 'documents'"
    elif len(location) >= 2 and location[0] == "documents" and location[1].isdigit():
        field = f"documents.{location[1]}"
        message = f"{field}: each document must be a string or an object {{\"text\": string}}"
    else:
        message = f"{field}: {first.get('msg', 'invalid value')}"
    return JSONResponse(ApiError(422, "invalid_request", message, field=field).body(),
                        status_code=422)


class BodySizeLimit:
    """Refuses request bodies over `max_bytes` with a 413, whether declared or streamed.

    The body is read here, up to the limit, and replayed to the app: a body that
    turns out too large is refused before any of it is parsed.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, int(declared))
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await self._refuse(send, size)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send, size: int) -> None:
        error = ApiError(413, "body_too_large", f"the request body has {size} bytes or more; "
                         f"this server accepts at most {self.max_bytes}", field="body")
        response = JSONResponse(error.body(), status_code=413)
        await response({"type": "http"}, None, send)
