"""A real `reranker-cli serve` process on a loopback port, driven over HTTP."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = pytest.mark.slow  # server processes (the in-process tests are few and short)

DOCS = ["Paris is the capital of France.", "Berlin is the capital of Germany.", "",
        "Bananas are yellow.", "La capitale de la France est Paris."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model, *args, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reranker.cli.main", "serve", "-m", str(model),
             "--port", str(self.port), "--threads", "2", *args],
            env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not start in 60 s")

    def post(self, body, path="/v1/rerank", **kwargs):
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        return httpx.post(self.url + path, content=data, headers=headers, timeout=60, **kwargs)

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return self.process.returncode, err


@pytest.fixture(scope="module")
def server(converted):
    s = Server(converted("q8_0"), "--max-documents", "200", "--max-tokens", "20000",
               "--max-body-bytes", "100000")
    yield s
    s.stop()


def test_response_has_the_rerank_api_shape(server, ranker_for):
    response = server.post({"model": "jina-reranker-v3", "query": "capital of France",
                            "documents": DOCS[:2] + [{"text": d} for d in DOCS[2:]], "top_n": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"model", "usage", "results"}
    assert body["usage"]["total_tokens"] > 0
    assert len(body["results"]) == 3
    expected = ranker_for("q8_0").rerank("capital of France", DOCS, top_n=3)
    for got, want in zip(body["results"], expected):
        assert got["index"] == want.index
        assert got["relevance_score"] == pytest.approx(want.relevance_score, abs=1e-6)
        assert got["document"] == {"text": DOCS[want.index]}


def test_return_documents_false_and_the_alias_path(server):
    body = server.post({"query": "q", "documents": DOCS, "return_documents": False},
                       path="/rerank").json()
    assert len(body["results"]) == len(DOCS)
    assert all(set(r) == {"index", "relevance_score"} for r in body["results"])
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_health_models_openapi_and_metrics(server):
    from reranker.cpu_path import resolve_cpu_path

    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["cpu_path"] == resolve_cpu_path().name
    head = httpx.head(server.url + "/health")  # as uptime checkers ask
    assert head.status_code == 200 and head.content == b""
    models = httpx.get(server.url + "/v1/models").json()
    assert models["data"][0]["id"] == "tiny-q8_0"
    schema = httpx.get(server.url + "/openapi.json").json()
    for status in ("400", "413", "422", "503"):  # in the shape the server answers in
        assert schema["paths"]["/v1/rerank"]["post"]["responses"][status]["content"][
            "application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    server.post({"query": "q", "documents": ["a", "b"]})
    metrics = httpx.get(server.url + "/metrics").text
    for name in ("reranker_requests_total", "reranker_request_seconds_bucket",
                 "reranker_tokens_total", "reranker_documents_total", "reranker_queue_depth",
                 "reranker_running"):
        assert name in metrics
    assert 'reranker_requests_total{path="/v1/rerank",status="200"}' in metrics


BAD_REQUESTS = [
    ("{not json", 400, "body"),
    ('["a list"]', 422, None),
    ({"documents": ["a"]}, 422, "query"),
    ({"query": "", "documents": ["a"]}, 422, "query"),
    ({"query": 5, "documents": ["a"]}, 422, "query"),
    ({"query": "q"}, 422, "documents"),
    ({"query": "q", "documents": []}, 422, "documents"),
    ({"query": "q", "documents": "a"}, 422, "documents"),
    ({"query": "q", "documents": ["a", 3]}, 422, "documents.1"),
    ({"query": "q", "documents": [{"txt": "a"}]}, 422, "documents.0"),
    ({"query": "q", "documents": ["a"], "top_n": 0}, 422, "top_n"),
    ({"query": "q", "documents": ["a"], "top_n": "2"}, 422, "top_n"),
    ({"query": "q", "documents": ["a"], "return_documents": "yes"}, 422, "return_documents"),
    ({"query": "q", "documents": ["a"], "model": "gpt-4"}, 404, "model"),
    ({"query": "q", "documents": ["a"] * 201}, 413, "documents"),
    ({"query": "q", "documents": ["w " * 1000] * 25}, 413, "documents"),
    ({"query": "q", "documents": ["x" * 200_000]}, 413, "body"),
]


@pytest.mark.parametrize("body,status,field", BAD_REQUESTS,
                         ids=[f"{i}-{s}" for i, (_, s, _) in enumerate(BAD_REQUESTS)])
def test_bad_input_is_a_4xx_naming_the_field_and_the_server_keeps_serving(server, body, status,
                                                                          field):
    response = server.post(body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    assert error.get("field") == field
    assert server.post({"query": "q", "documents": ["a"]}).status_code == 200


def test_limits_name_their_values(server):
    error = server.post({"query": "q", "documents": ["a"] * 201}).json()["error"]
    assert "201" in error["message"] and "200" in error["message"]
    error = server.post({"query": "q", "documents": ["x" * 200_000]}).json()["error"]
    assert "100000" in error["message"]


def test_the_token_limit_counts_the_query_as_scored(converted, ranker_for):
    """--max-tokens caps query plus documents after truncation: a query over the model's
    512-token limit counts 512 (it once counted in full, and documents were cut but not
    the query), and going over by the query's tokens alone is refused."""
    ranker = ranker_for("q8_0")
    query = "query " * 3000
    assert ranker.count_tokens(query) > 2000 and ranker.max_query_tokens == 512
    docs = ["word " * 300] * 3
    doc_tokens = sum(ranker.count_tokens(d) for d in docs)
    limit = doc_tokens + 512
    server = Server(converted("q8_0"), "--max-tokens", str(limit))
    try:
        ok = server.post({"query": query, "documents": docs})
        assert ok.status_code == 200, ok.text
        refused = server.post({"query": query, "documents": docs + ["one more"]})
        assert refused.status_code == 413, refused.text
        error = refused.json()["error"]
        assert error["type"] == "too_many_tokens" and error["field"] == "documents"
        assert (f"more than {limit} tokens after truncation ("
                f"{limit + ranker.count_tokens('one more')} by document 4 of 4)"
                in error["message"])
        assert f"limit (--max-tokens) is {limit}" in error["message"]
    finally:
        server.stop()


def test_a_streamed_oversize_body_is_refused(server):
    def chunks():
        yield b'{"query": "q", "documents": ["'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"]}'
    response = httpx.post(server.url + "/v1/rerank", content=chunks(),
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 413


@pytest.mark.parametrize("content_type", ["text/plain", "text/json", "application/x-json",
                                          "application/jsonx", None])
def test_a_body_that_is_not_json_typed(server, content_type):
    """FastAPI reads JSON from application/json and +json types only; the others were
    answered 422 with the request's fields all called missing."""
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(server.url + "/v1/rerank", content='{"query":"q","documents":["a"]}',
                          headers=headers)
    assert response.status_code == 415
    error = response.json()["error"]
    assert "application/json" in error["message"] and error["field"] == "content-type"


def test_json_types_with_parameters_or_a_suffix_are_json(server):
    for content_type in ("application/json; charset=utf-8", "Application/JSON",
                         "application/vnd.api+json"):
        response = httpx.post(server.url + "/v1/rerank",
                              content='{"query":"q","documents":["a"]}',
                              headers={"Content-Type": content_type})
        assert response.status_code == 200, (content_type, response.text)


def test_a_compressed_body_is_named(server):
    import gzip

    response = httpx.post(server.url + "/v1/rerank",
                          content=gzip.compress(b'{"query":"q","documents":["a"]}'),
                          headers={"Content-Type": "application/json",
                                   "Content-Encoding": "gzip"})
    assert response.status_code == 415
    error = response.json()["error"]
    assert "Content-Encoding: gzip" in error["message"] and error["field"] == "content-encoding"
    # The same when the body was not compressed after all: the header is not ignored.
    plain = httpx.post(server.url + "/v1/rerank", content='{"query":"q","documents":["a"]}',
                       headers={"Content-Type": "application/json", "Content-Encoding": "br"})
    assert plain.status_code == 415 and plain.json()["error"]["field"] == "content-encoding"


def test_concurrent_clients_get_the_library_scores(server, ranker_for):
    queries = [f"query {i}" for i in range(8)]
    expected = {q: ranker_for("q8_0").score(q, DOCS).scores for q in queries}

    def client(query):
        with httpx.Client(timeout=60) as http:
            out = []
            for _ in range(25):
                r = http.post(server.url + "/v1/rerank",
                              json={"query": query, "documents": DOCS, "return_documents": False})
                out.append((r.status_code, r.json()))
            return query, out

    with ThreadPoolExecutor(8) as pool:
        for query, responses in pool.map(client, queries):
            for status, body in responses:
                assert status == 200
                got = {r["index"]: r["relevance_score"] for r in body["results"]}
                for index, score in got.items():
                    assert score == pytest.approx(expected[query][index], abs=1e-6)


def test_the_queue_limit_answers_429_with_retry_after(converted):
    server = Server(converted("f32"), "--workers", "1", "--queue-size", "1")
    try:
        heavy = {"query": "q", "documents": [f"document {i} " + "text " * 40 for i in range(120)]}
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda _: server.post(heavy), range(8)))
        statuses = sorted(r.status_code for r in responses)
        assert 200 in statuses and 429 in statuses, statuses
        refused = next(r for r in responses if r.status_code == 429)
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["type"] == "overloaded"
        assert server.post({"query": "q", "documents": ["a"]}).status_code == 200
    finally:
        server.stop()


def test_api_key(converted, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    server = Server(converted("q8_0"), "--api-key-file", str(key_file))
    try:
        body = {"query": "q", "documents": ["a"]}
        assert server.post(body).status_code == 401
        wrong = server.post(body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
        assert server.post(body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(server.url + "/health").status_code == 200
        assert httpx.get(server.url + "/metrics").status_code == 401
    finally:
        server.stop()


def test_documents_stay_out_of_the_logs_unless_asked(converted):
    secret = "confidential-passage-text"
    for flag, should_log in (([], False), (["--log-documents"], True)):
        server = Server(converted("q8_0"), *flag)
        server.post({"query": "q", "documents": [secret]})
        _, err = server.stop()
        assert (secret in err) is should_log, err


def test_shutdown_finishes_the_running_request(converted):
    """SIGTERM while a request is being scored: the port stops taking connections at once,
    the running request still gets its 200, then the process exits 0. The request is seen
    running before the signal and answered after it, so it was in flight when it came."""
    # A grace period far above the request's time (5-30 s here, on a shared 2-core VM):
    # this test is about finishing, not about the grace period running out (tested below).
    server = Server(converted("f32"), "--workers", "1", "--shutdown-timeout", "300")
    heavy = {"query": "q", "documents": [f"document {i} " + "text " * 40 for i in range(120)]}
    result = {}

    def send():
        response = httpx.post(server.url + "/v1/rerank", json=heavy, timeout=300)
        result.update(response=response, answered=time.monotonic())
    thread = threading.Thread(target=send)
    thread.start()
    wait_for_health(server, running=1)  # fails the test if the request is never seen running
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    refused_while_running = None
    deadline = time.monotonic() + 20
    while refused_while_running is None and time.monotonic() < deadline:
        try:
            httpx.get(server.url + "/health", timeout=2)
            time.sleep(0.05)
        except httpx.TransportError:
            refused_while_running = thread.is_alive()
    returncode, err = server.stop()
    thread.join()
    assert refused_while_running, "new connections were still accepted during the shutdown"
    assert result["answered"] > signalled, "the request ended before SIGTERM: nothing tested"
    assert result["response"].status_code == 200, result["response"].text
    assert len(result["response"].json()["results"]) == 120
    assert returncode == 0, err


def test_the_server_is_ready_only_after_each_worker_has_scored(converted):
    """In-process: TestClient runs the application's start-up as uvicorn does before it
    binds the port. A worker that cannot score stops start-up (and is closed); workers
    that can have each scored once before the first request."""
    from fastapi.testclient import TestClient

    from reranker import InputTooLongError, Reranker
    from reranker.server.app import create_app
    from reranker.server.settings import ServerSettings

    model = converted("q8_0")

    class CountingReranker(Reranker):
        opened: list = []

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.scored = 0
            self.opened.append(self)

        def score(self, *args, **kwargs):
            self.scored += 1
            return super().score(*args, **kwargs)

    settings = ServerSettings(model_path=model, model_name="tiny", workers=2)
    app = create_app(settings, lambda: CountingReranker(model, n_threads=1))
    with TestClient(app) as client:
        assert [r.scored for r in CountingReranker.opened] == [1, 1]
        assert client.get("/health").json()["status"] == "ok"

    # A context too small for the start-up request: scoring fails, start-up with it.
    too_small = create_app(settings, lambda: CountingReranker(model, n_threads=1,
                                                              max_context=48))
    with pytest.raises(InputTooLongError):
        with TestClient(too_small):
            pass


def test_serve_refuses_a_bad_cpu_path_in_one_line_before_binding(converted):
    port = free_port()
    done = subprocess.run([sys.executable, "-m", "reranker.cli.main", "serve", "-m",
                           str(converted("q8_0")), "--port", str(port)],
                          env=dict(os.environ, RERANKER_CPU_PATH="turbo"), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "'turbo'" in done.stderr
    assert "RERANKER_CPU_PATH" in done.stderr


# -- every error in one JSON shape ------------------------------------------------------------

def _raw(body: bytes, content_type="application/json") -> tuple[bytes, dict]:
    return body, {"Content-Type": content_type}


ERROR_SHAPE_CASES = [
    # JSON lets a \u escape name half a surrogate pair; no UTF-8 text can hold it.
    ("POST", "/v1/rerank", b'{"query": "q", "documents": ["a", "b\\ud800c"]}', 422, "documents.1"),
    ("POST", "/v1/rerank", b'{"query": "q", "documents": [{"text": "\\udc00"}]}', 422,
     "documents.0.text"),
    ("POST", "/v1/rerank", b'{"query": "q\\ud800", "documents": ["a"]}', 422, "query"),
    ("POST", "/v1/rerank", b'{"query": "q", "documents": ["a"], "instruction": "\\udfff"}', 422,
     "instruction"),
    ("POST", "/v1/rerank", b'{"model": "\\ud800", "query": "q", "documents": ["a"]}', 422,
     "model"),
    ("POST", "/v1/rerank", b'{"query": "caf\xe9", "documents": ["a"]}', 400, "body"),  # Latin-1
    ("POST", "/v1/rerank", b"[" * 50_000 + b"]" * 50_000, 400, "body"),  # past json's recursion
    ("GET", "/no/such/path", b"", 404, None),
    ("GET", "/v1/rerank", b"", 405, None),
    ("DELETE", "/health", b"", 405, None),
]


@pytest.mark.parametrize("method,path,body,status,field", ERROR_SHAPE_CASES,
                         ids=[f"{i}-{c[3]}" for i, c in enumerate(ERROR_SHAPE_CASES)])
def test_every_error_has_the_api_error_shape(server, method, path, body, status, field):
    response = httpx.request(method, server.url + path, content=body,
                             headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) <= {"type", "message", "field"}
    assert error["type"] and error["message"] and error.get("field") == field
    assert server.post({"query": "q", "documents": ["a"]}).status_code == 200


def test_error_messages_say_what_was_wrong(server):
    error = server.post(b'{"query": "q", "documents": ["ab\\ud800"]}').json()["error"]
    assert "surrogate" in error["message"] and "\\ud800" in error["message"]
    error = server.post(b'{"query": "caf\xe9", "documents": ["a"]}').json()["error"]
    assert "UTF-8" in error["message"] and "0xe9" in error["message"]
    error = httpx.put(server.url + "/v1/rerank").json()["error"]
    assert "PUT" in error["message"] and "POST" in error["message"]


def test_an_unexpected_failure_is_a_json_500_and_the_server_keeps_serving(converted):
    """In-process. No request can make the real stack fail unexpectedly (each known way is
    refused as bad input), so this Reranker fails on purpose: a stand-in for a future bug."""
    from fastapi.testclient import TestClient

    from reranker import Reranker
    from reranker.server.app import create_app
    from reranker.server.settings import ServerSettings

    model = converted("q8_0")

    class FailingReranker(Reranker):
        def plan(self, query, documents, **options):
            if query == "fail":
                raise KeyError("an unexpected bug")
            return super().plan(query, documents, **options)

    settings = ServerSettings(model_path=model, model_name="tiny")
    app = create_app(settings, lambda: FailingReranker(model, n_threads=1))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/v1/rerank", json={"query": "fail", "documents": ["a"]})
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["type"] == "internal_error" and "KeyError" in error["message"]
        assert client.post("/v1/rerank", json={"query": "q", "documents": ["a"]}).status_code == 200
        metrics = client.get("/metrics").text
        assert 'reranker_requests_total{path="/v1/rerank",status="500"} 1.0' in metrics


# -- API keys ----------------------------------------------------------------------------------

def test_api_keys_are_compared_as_bytes(converted):
    """In-process: a non-ASCII key (allowed: compared as UTF-8 bytes) and non-ASCII header
    bytes, which once made hmac raise and every request answer 500."""
    from fastapi.testclient import TestClient

    from reranker.server.app import create_app
    from reranker.server.settings import ServerSettings

    key = "clé-secrète-ключ"
    settings = ServerSettings(model_path=converted("q8_0"), model_name="tiny", api_key=key,
                              threads=1)
    body = {"query": "q", "documents": ["a"]}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        ok = client.post("/v1/rerank", json=body,
                         headers={"Authorization": b"Bearer " + key.encode("utf-8")})
        assert ok.status_code == 200, ok.text
        for header in (b"Bearer " + key.encode("latin-1", "replace"), b"Bearer \xff\xfe",
                       b"Bearer \xc3\xa9", b"Basic " + key.encode("utf-8"), b"Bearer"):
            refused = client.post("/v1/rerank", json=body, headers={"Authorization": header})
            assert refused.status_code == 401, (header, refused.text)
            assert refused.json()["error"]["field"] == "authorization"
        assert client.get("/docs").status_code == 200  # open, with its assets
        assert client.get("/docs/assets/swagger-ui.css").status_code == 200
        assert client.get("/metrics").status_code == 401


@pytest.mark.parametrize("where,key,named", [
    ("env", "two words", "U+0020"),
    ("env", "zero\u200bwidth", "U+200B"),
    ("file", "tab\tinside", "U+0009"),
    ("file", "\ufeffbom-first", "U+FEFF"),
])
def test_serve_refuses_a_key_that_cannot_travel_in_a_header(converted, tmp_path, where, key,
                                                            named):
    args, env = [], dict(os.environ)
    env.pop("RERANKER_API_KEY", None)
    if where == "env":
        env["RERANKER_API_KEY"] = key
    else:
        (tmp_path / "key").write_text(key, encoding="utf-8")
        args = ["--api-key-file", str(tmp_path / "key")]
    done = subprocess.run([sys.executable, "-m", "reranker.cli.main", "serve", "-m",
                           str(converted("q8_0")), "--port", str(free_port()), *args],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and named in done.stderr
    assert key.strip() not in done.stderr  # the key itself is never printed
    assert ("RERANKER_API_KEY" if where == "env" else "--api-key-file") in done.stderr


# -- docs, metrics, oversize bodies ----------------------------------------------------------

def test_docs_pages_load_nothing_from_other_hosts(server):
    import re

    for page in ("/docs", "/redoc"):
        response = httpx.get(server.url + page)
        assert response.status_code == 200
        html = response.text
        assert "://" not in html and "//cdn" not in html, html
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets
        for asset in assets:
            assert asset.startswith("/"), asset
            fetched = httpx.get(server.url + asset)
            assert fetched.status_code == 200 and len(fetched.content) > 1000, asset


def _counter(metrics: str, name: str, **labels) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    line_start = f"{name}{{{wanted}}} " if labels else f"{name} "
    for line in metrics.splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return 0.0


def test_metrics_count_every_response_and_the_tokens(server):
    def metrics() -> str:
        return httpx.get(server.url + "/metrics").text

    requests = [
        (400, "/v1/rerank", lambda: server.post("{not json")),
        (404, "other", lambda: httpx.get(server.url + "/no/such/path")),
        (405, "/v1/rerank", lambda: httpx.get(server.url + "/v1/rerank")),
        (413, "/v1/rerank", lambda: server.post({"query": "q", "documents": ["x" * 200_000]})),
        (415, "/v1/rerank", lambda: httpx.post(server.url + "/v1/rerank", content="{}",
                                               headers={"Content-Type": "text/plain"})),
        (422, "/rerank", lambda: server.post({"query": ""}, path="/rerank")),
        (200, "/health", lambda: httpx.get(server.url + "/health")),
    ]
    for status, path, send in requests:
        before = metrics()
        assert send().status_code == status
        after = metrics()
        assert _counter(after, "reranker_requests_total", path=path, status=status) == \
            _counter(before, "reranker_requests_total", path=path, status=status) + 1, status
        assert _counter(after, "reranker_request_seconds_count", path=path) == \
            _counter(before, "reranker_request_seconds_count", path=path) + 1, status

    body = {"query": "a query for the token counters", "documents": DOCS}
    before = metrics()
    first = server.post(body).json()["usage"]["total_tokens"]
    middle = metrics()
    server.post(body)
    after = metrics()

    def delta(name, a, b):
        return _counter(b, name) - _counter(a, name)
    # Decoding stops at the query marker, so a request decodes a little less than its tokens.
    assert 0 < delta("reranker_decoded_tokens_total", before, middle) <= first
    # The same prompt again: its prefix up to the first document's marker is reused.
    assert delta("reranker_reused_tokens_total", middle, after) > 0
    assert delta("reranker_decoded_tokens_total", middle, after) + \
        delta("reranker_reused_tokens_total", middle, after) <= first


def test_a_declared_oversize_body_gets_413_and_the_connection_closes(server):
    """Raw HTTP/1.1 on a socket: the refused body must not be read as a next request."""
    body = b'{"query": "q", "documents": ["' + b"x" * 200_000 + b'"]}'
    request = (b"POST /v1/rerank HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body))
    pipelined = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request + body + pipelined)
        received = b""
        while chunk := sock.recv(65536):  # a reset or a timeout raises and fails the test
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), received[:300]
    assert b"connection: close" in head.lower()
    assert json.loads(rest)["error"]["type"] == "body_too_large"  # one answer, nothing after


# -- queue timeout, clients that leave, shutdown -----------------------------------------------

# About 40 s of scoring on the tiny q8_0 model here: long enough that each test below
# can only pass by stopping or refusing in time, never by waiting for it to end.
SLOW = {"query": "q", "documents": [f"document {i} " + "text " * 40 for i in range(400)],
        "return_documents": False}


def open_request(server, body) -> socket.socket:
    """Send a rerank request on a raw socket and return it unread: closing it is a client
    that goes away."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(data) + data)
    return sock


def wait_for_health(server, deadline_s=30, **expected):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        health = httpx.get(server.url + "/health").json()
        if all(health[k] == v for k, v in expected.items()):
            return health
        time.sleep(0.02)
    raise AssertionError(f"/health never showed {expected}: {health}")


@pytest.fixture(scope="module")
def slow_server(converted):
    s = Server(converted("q8_0"), "--workers", "1", "--queue-timeout", "2")
    yield s
    s.stop()


def metrics_of(server) -> str:
    return httpx.get(server.url + "/metrics").text


def test_the_queue_timeout_answers_503_when_it_expires(slow_server):
    running = open_request(slow_server, SLOW)
    try:
        wait_for_health(slow_server, running=1)
        started = time.monotonic()
        response = slow_server.post({"query": "q", "documents": ["a"]})
        waited = time.monotonic() - started
        assert response.status_code == 503, response.text
        assert response.json()["error"]["type"] == "queue_timeout"
        assert int(response.headers["Retry-After"]) >= 1
        assert waited < 4.5, f"503 after {waited:.1f} s for a 2 s queue timeout"
        # Refused, so gone from the queue; the slow request is still the one running.
        assert wait_for_health(slow_server, 2, running=1, waiting=0)
    finally:
        running.close()
    wait_for_health(slow_server, 10, running=0, waiting=0)


def test_a_client_that_leaves_is_dropped_from_the_queue_and_its_running_work_stopped(
        slow_server, converted):
    from reranker import Reranker

    before = metrics_of(slow_server)
    running = open_request(slow_server, SLOW)
    wait_for_health(slow_server, running=1)
    waiting = open_request(slow_server, SLOW)
    wait_for_health(slow_server, running=1, waiting=1)
    waiting.close()
    wait_for_health(slow_server, 2, running=1, waiting=0)
    running.close()
    wait_for_health(slow_server, 2, running=0)

    # The worker is free at once, and its llama.cpp context gives a fresh context's
    # scores: nothing of the aborted decode is reused.
    body = {"query": "q", "documents": SLOW["documents"][:3] + DOCS, "return_documents": False}
    started = time.monotonic()
    response = slow_server.post(body)
    assert response.status_code == 200 and time.monotonic() - started < 5
    with Reranker(converted("q8_0"), n_threads=2) as fresh:
        expected = fresh.score(body["query"], body["documents"]).scores
    for result in response.json()["results"]:
        assert result["relevance_score"] == expected[result["index"]]

    after = metrics_of(slow_server)
    for stage in ("waiting", "running"):
        assert _counter(after, "reranker_cancelled_requests_total", reason="client_gone",
                        stage=stage) == _counter(before, "reranker_cancelled_requests_total",
                                                 reason="client_gone", stage=stage) + 1
    assert _counter(after, "reranker_requests_total", path="/v1/rerank", status=499) == \
        _counter(before, "reranker_requests_total", path="/v1/rerank", status=499) + 2
    # Neither slow request was scored: only the last request's documents were.
    assert _counter(after, "reranker_documents_total") == \
        _counter(before, "reranker_documents_total") + len(body["documents"])


def test_the_shutdown_grace_period_ends_with_a_503(converted):
    server = Server(converted("q8_0"), "--workers", "1", "--shutdown-timeout", "1")
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=server.post(SLOW)))
    thread.start()
    wait_for_health(server, running=1)
    stopped = time.monotonic()
    returncode, err = server.stop()
    thread.join()
    response = result["r"]
    assert response.status_code == 503, response.text
    assert response.json()["error"]["type"] == "shutting_down"
    assert returncode == 0
    # 1 s of grace, then the decode is aborted: not the ~40 s the request needed.
    assert time.monotonic() - stopped < 10
    assert "status 503 (shutting_down)" in err
