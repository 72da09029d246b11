"""The FastAPI application: routes, limits, authentication, errors and metrics."""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
import uuid
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from reranker import Reranker, RerankerError, __version__
from reranker.api_contract import (AnyRerankRequest, CohereV2Response, RequestError,
                                   RerankRequest, RerankResponse, TeiRank, TeiRerankRequest,
                                   cohere_v2_response, invalid_request,
                                   rerank_response, tei_response)
from reranker.errors import TooManyTokensError
from reranker.server.errors import ApiError
from reranker.server.metrics import ServerMetrics
from reranker.server.pool import ClientGone, QueueFull, QueueTimeout, RerankerPool, ShuttingDown
from reranker.server.schemas import ErrorResponse, ModelCard, ModelList
from reranker.server.settings import ServerSettings

logger = logging.getLogger("reranker.server")
DOCS_ASSETS = "/docs/assets"  # Swagger UI and ReDoc files, served from the installed package
OPEN_PATHS = {"/health", "/docs", "/openapi.json", "/redoc"}
OPEN_PREFIXES = ("/docs/",)  # the assets and Swagger UI's OAuth2 redirect page
# nginx's status for "the client closed the connection before the answer": never sent
# (no one is there), but counted and logged.
CLIENT_CLOSED_REQUEST = 499


def default_opener(settings: ServerSettings) -> Callable[[], Reranker]:
    threads = None
    if settings.threads:
        threads = max(1, settings.threads // settings.workers)
    return lambda: Reranker(settings.model_path, settings.projector_path, n_threads=threads,
                            block_tokens=settings.block_tokens, cpu_path=settings.cpu_path,
                            engine=settings.engine)


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
        logger.info("serving %s as %s with %d worker(s) on engine %s, CPU path %s",
                    settings.model_path, settings.model_name, settings.workers, workers.engine,
                    workers.cpu_path)
        try:
            yield
        finally:
            # uvicorn gets here once running requests are done or its grace period is over;
            # then running work is stopped. In a thread: the requests stopped meanwhile
            # answer on this loop.
            await asyncio.to_thread(workers.close)

    # FastAPI's own /docs and /redoc load their scripts from a CDN, blank on a machine
    # without internet access; these serve the copies the fastapi-offline package ships.
    app = FastAPIOffline(title="reranker", version=__version__, lifespan=lifespan,
                         description="The Jina / Cohere rerank API for jina-reranker-v3 on CPU.",
                         static_url=DOCS_ASSETS,
                         # Swagger UI would send the schema to an online validator.
                         swagger_ui_parameters={"validatorUrl": None})
    # Outermost last: every response, those of the other two included, is counted.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(BearerAuth, api_key=settings.api_key)
    app.add_middleware(ObservedRequests, metrics=metrics, routes=lambda: app.routes)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError):
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        unreadable = _unreadable_body(request)
        return (unreadable or _validation_error(error)).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return _http_error(request, error).response()

    @app.exception_handler(Exception)
    async def unexpected_error(_request: Request, error: Exception):
        # Starlette logs the traceback after this answer is sent.
        return ApiError(500, "internal_error", f"the server failed on this request "
                        f"({type(error).__name__}); the traceback is in its log").response()

    @app.get("/health")
    async def health(request: Request) -> dict:
        pool: RerankerPool = request.app.state.pool
        return {"status": "ok", "model": settings.model_name, "workers": pool.workers,
                "running": pool.running, "waiting": pool.waiting, "cpu_path": pool.cpu_path,
                "engine": pool.engine}

    # HEAD, which uptime checkers send, out of the schema: one route for both methods gave
    # both operations one id (FastAPI warned "Duplicate Operation ID").
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=settings.model_name)])

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def rerank(body: RerankRequest, request: Request) -> RerankResponse:
        started = time.monotonic()
        request_id = uuid.uuid4().hex[:12]
        status, note = 500, ""
        try:
            response = await _rerank(body, request, settings, metrics)
            status = 200
            return response
        except ApiError as error:
            status, note = error.status, f" ({error.kind})"
            raise
        finally:
            logger.info("request %s: %d documents, status %d%s, %.3f s", request_id,
                        len(body.documents), status, note, time.monotonic() - started)
            if settings.log_documents:
                logger.info("request %s: query %r, documents %r", request_id, body.query,
                            body.document_texts())

    async def cohere_v2(body: RerankRequest, request: Request) -> CohereV2Response:
        return cohere_v2_response(await rerank(body, request))

    async def either_shape(body: AnyRerankRequest,
                           request: Request) -> RerankResponse | list[TeiRank]:
        if isinstance(body, TeiRerankRequest):
            return tei_response(await rerank(body.as_rerank_request(), request))
        return await rerank(body, request)

    # The schema documents the error shape these answer in (in place of FastAPI's
    # {"detail": ...} for 422), so that generated clients read errors right.
    described = ((400, "Body not JSON or not UTF-8"), (401, "Missing or wrong API key"),
                 (404, "Unknown model"), (413, "Over a size limit"),
                 (415, "Body not sent as JSON"), (422, "Invalid request"), (429, "Queue full"),
                 (503, "Queue timeout or shutting down"))
    errors = {status: {"model": ErrorResponse, "description": text} for status, text in described}
    app.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True,
             responses=errors, summary="Rerank (Jina / Cohere v1 shape)")(rerank)
    app.post("/v2/rerank", response_model=CohereV2Response, responses=errors,
             summary="Rerank (Cohere v2 shape)")(cohere_v2)
    app.post("/rerank", response_model=RerankResponse | list[TeiRank],
             response_model_exclude_none=True, responses=errors,
             summary="Rerank: the /v1/rerank body, or text-embeddings-inference's "
                     "(with \"texts\"), answered in the shape it came in")(either_shape)
    return app


async def _rerank(body: RerankRequest, request: Request, settings: ServerSettings,
                  metrics: ServerMetrics) -> RerankResponse:
    unreadable = _unreadable_body(request)  # a Content-Encoding on a body that parsed
    if unreadable is not None:
        raise unreadable
    if body.model is not None and body.model not in settings.accepted_model_names:
        raise ApiError(404, "model_not_found", f"model {body.model!r} is not served here; "
                       f"this server serves {settings.model_name!r}", field="model")
    documents = body.document_texts()
    if len(documents) > settings.max_documents:
        raise ApiError(413, "too_many_documents", f"{len(documents)} documents exceed this "
                       f"server's limit of {settings.max_documents}", field="documents")

    def work(reranker: Reranker, should_stop: Callable[[], bool]):
        # The plan scoring decodes counts the tokens: each text is tokenized once.
        try:
            plan = reranker.plan(body.query, documents, instruction=body.instruction,
                                 max_doc_tokens=body.max_tokens_per_doc, should_stop=should_stop,
                                 max_input_tokens=settings.max_tokens)
        except TooManyTokensError as error:
            raise ApiError(413, "too_many_tokens", f"{error}; this server's limit (--max-tokens) "
                           f"is {error.limit}", field="documents") from None
        return reranker.score_plan(plan, should_stop=should_stop)

    pool: RerankerPool = request.app.state.pool
    try:
        scored = await pool.run(work, client_gone=request.is_disconnected)
    except QueueFull:
        raise ApiError(429, "overloaded", f"all {pool.workers} worker(s) are busy and "
                       f"{pool.queue_size} request(s) are waiting; retry later",
                       headers={"Retry-After": str(_retry_after(pool))}) from None
    except QueueTimeout:
        raise ApiError(503, "queue_timeout", f"the request waited {settings.queue_timeout:g} s "
                       "for a worker (the server's --queue-timeout); retry later",
                       headers={"Retry-After": str(_retry_after(pool))}) from None
    except ClientGone as gone:
        stage = "running" if gone.running else "waiting"
        metrics.cancelled.labels(reason="client_gone", stage=stage).inc()
        raise ApiError(CLIENT_CLOSED_REQUEST, "client_closed_request", "the client "
                       f"disconnected; the request was dropped while {stage}") from None
    except ShuttingDown as stopped:
        stage = "running" if stopped.running else "waiting"
        metrics.cancelled.labels(reason="shutdown", stage=stage).inc()
        raise ApiError(503, "shutting_down", "the server is shutting down and stopped this "
                       "request when its grace period (--shutdown-timeout) ran out; retry",
                       headers={"Connection": "close"}) from None
    except RequestError as error:
        raise ApiError(422, error.kind, error.message, field=error.field) from None
    except RerankerError as error:
        raise ApiError(422, "unprocessable", str(error)) from None
    metrics.tokens.inc(scored.total_tokens)
    metrics.decoded_tokens.inc(scored.decoded_tokens)
    metrics.reused_tokens.inc(scored.reused_tokens)
    metrics.documents.inc(len(documents))
    return rerank_response(body, scored, settings.model_name)


def _retry_after(pool: RerankerPool) -> int:
    # A rough hint: one second per queued request per worker, at least one.
    return max(1, math.ceil(pool.admitted / max(1, pool.workers)))


def _validation_error(error: RequestValidationError) -> ApiError:
    errors = error.errors()
    if errors and errors[0].get("type") == "json_invalid":
        return ApiError(400, "invalid_json", "the request body is not valid JSON", field="body")
    # FastAPI's locations start with "body"; the contract's start at the body's fields.
    refused = invalid_request([{**e, "loc": tuple(e.get("loc", ()))[1:]} for e in errors])
    return ApiError(422, refused.kind, refused.message, field=refused.field)


def _http_error(request: Request, error: StarletteHTTPException) -> ApiError:
    """Starlette's and FastAPI's own refusals, in this API's error shape."""
    path = request.url.path[:200]
    cause = error.__cause__
    if error.status_code == 404:
        return ApiError(404, "not_found", f"there is no {path!r} here; the API is POST "
                        "/v1/rerank (or /rerank), /v2/rerank, GET /health, /v1/models, "
                        "/metrics, /docs",
                        headers=error.headers)
    if error.status_code == 405:
        allowed = (error.headers or {}).get("Allow", "another method")
        return ApiError(405, "method_not_allowed", f"{request.method} is not allowed on "
                        f"{path!r}; use {allowed}", headers=error.headers)
    unreadable = _unreadable_body(request) if error.status_code == 400 else None
    if unreadable is not None:
        return unreadable
    # FastAPI answers 400 for a body it could not decode, from the decoding error.
    if isinstance(cause, UnicodeDecodeError):
        return ApiError(400, "invalid_json", f"the request body is not UTF-8: byte "
                        f"0x{cause.object[cause.start]:02x} at offset {cause.start}; send "
                        "JSON encoded as UTF-8", field="body")
    if isinstance(cause, RecursionError):
        return ApiError(400, "invalid_json", "the request body's JSON nests arrays or objects "
                        "too deeply to parse; a rerank request needs three levels",
                        field="body")
    if error.status_code == 400:
        return ApiError(400, "invalid_json", f"the request body could not be read as JSON "
                        f"({error.detail})", field="body")
    return ApiError(error.status_code, "http_error", str(error.detail), headers=error.headers)


def _unreadable_body(request: Request) -> ApiError | None:
    """415 for a POST body FastAPI does not read as JSON: a compressed one, or a content
    type other than application/json or a +json type (FastAPI's own rule; `text/json`
    bodies were left unparsed, and the answer blamed missing fields)."""
    if request.method != "POST":
        return None
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return ApiError(415, "unsupported_media_type", f"the body is compressed "
                        f"(Content-Encoding: {encoding[:40]}); send it uncompressed",
                        field="content-encoding")
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        return ApiError(415, "unsupported_media_type", f"the body was sent as "
                        f"{content_type[:80] or 'no content type'}; send JSON with "
                        "'Content-Type: application/json'", field="content-type")
    return None


class ObservedRequests:
    """Counts every response by path and status, and times it, whoever produced it."""

    def __init__(self, app, metrics: ServerMetrics, routes: Callable[[], list]):
        self.app, self.metrics, self.routes = app, metrics, routes
        self._paths: set[str] | None = None

    def _label(self, path: str) -> str:
        # Only the app's own paths become label values: one per unknown URL would let any
        # client grow the metrics without bound.
        if self._paths is None:
            self._paths = {route.path for route in self.routes()}
        if path in self._paths:
            return path
        return DOCS_ASSETS if path.startswith(DOCS_ASSETS + "/") else "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.monotonic()
        status = None

        async def observed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except BaseException:
            status = status or 500  # answered by Starlette's error handler, outside
            raise
        finally:
            label = self._label(scope["path"])
            # A request whose client left before any answer counts as nginx's 499.
            self.metrics.requests.labels(path=label,
                                         status=str(status or CLIENT_CLOSED_REQUEST)).inc()
            self.metrics.latency.labels(path=label).observe(time.monotonic() - started)


class BearerAuth:
    """Requires 'Authorization: Bearer <key>' on all but the open paths, when a key is set.

    The header's bytes are compared with the key's UTF-8 bytes: a header value is bytes on
    the wire, and comparing str would fail (hmac refuses non-ASCII str) instead of refusing.
    """

    def __init__(self, app, api_key: str | None):
        self.app = app
        self.key = api_key.encode("utf-8") if api_key else None

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if (self.key is None or scope["type"] != "http" or path in OPEN_PATHS
                or path.startswith(OPEN_PREFIXES)):
            return await self.app(scope, receive, send)
        header = b""
        for name, value in scope.get("headers") or []:
            if name.lower() == b"authorization":
                header = value
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(b" \t"), self.key):
            return await self.app(scope, receive, send)
        await ApiError(401, "unauthorized", "missing or wrong API key: send 'Authorization: "
                       "Bearer <key>'", field="authorization",
                       headers={"WWW-Authenticate": "Bearer"}).response()(scope, receive, send)


class BodySizeLimit:
    """Refuses request bodies over `max_bytes` with a 413, whether declared or streamed.

    The body is read here, up to the limit, and replayed to the app: a body that
    turns out too large is refused before any of it is parsed.
    """

    # How long the rest of a refused body is read and dropped after the 413 is sent.
    LINGER_SECONDS = 2.0

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(receive, send, int(declared))
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await self._refuse(receive, send, size, more)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, receive, send, size: int, more: bool = True) -> None:
        """A 413 with 'Connection: close', then the rest of the body read and dropped.

        The answer's bytes (their length declared) reach the client at once. Keeping the
        response open while the body still arriving is drained, for a bounded time, means
        the connection is closed with nothing left unread: closing a socket with unread
        input sends a reset, which can make the client lose the 413 it was sent.
        """
        error = ApiError(413, "body_too_large", f"the request body has {size} bytes or more; "
                         f"this server accepts at most {self.max_bytes}", field="body",
                         headers={"Connection": "close"})
        response = error.response()
        await send({"type": "http.response.start", "status": 413,
                    "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body, "more_body": True})
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(self._drain(receive, more), self.LINGER_SECONDS)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _drain(receive, more: bool) -> None:
        while more:
            message = await receive()
            more = message["type"] == "http.request" and message.get("more_body", False)
