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
            [sys.executable, "-m", "reranker_cli.main", "serve", "-m", str(model),
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
    models = httpx.get(server.url + "/v1/models").json()
    assert models["data"][0]["id"] == "tiny-q8_0"
    assert "/v1/rerank" in httpx.get(server.url + "/openapi.json").json()["paths"]
    server.post({"query": "q", "documents": ["a", "b"]})
    metrics = httpx.get(server.url + "/metrics").text
    for name in ("reranker_requests_total", "reranker_request_seconds_bucket",
                 "reranker_tokens_total", "reranker_documents_total", "reranker_queue_depth",
                 "reranker_running"):
        assert name in metrics
    assert 'reranker_requests_total{status="200"}' in metrics


BAD_REQUESTS = [
    ("{not json", 400, None),
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


def test_a_streamed_oversize_body_is_refused(server):
    def chunks():
        yield b'{"query": "q", "documents": ["'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"]}'
    response = httpx.post(server.url + "/v1/rerank", content=chunks(),
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 413


def test_a_body_that_is_not_json_typed(server):
    response = httpx.post(server.url + "/v1/rerank", content='{"query":"q","documents":["a"]}',
                          headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]["message"]


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
    server = Server(converted("f32"), "--workers", "1")
    heavy = {"query": "q", "documents": [f"document {i} " + "text " * 40 for i in range(120)]}
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=server.post(heavy)))
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the request is being scored
        if httpx.get(server.url + "/health").json()["running"] == 1:
            break
        time.sleep(0.01)
    returncode, _ = server.stop()
    thread.join()
    assert result["r"].status_code == 200
    assert len(result["r"].json()["results"]) == 120
    assert returncode == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/health", timeout=2)


def test_the_server_is_ready_only_after_each_worker_has_scored(converted):
    """In-process: TestClient runs the application's start-up as uvicorn does before it
    binds the port. A worker that cannot score stops start-up (and is closed); workers
    that can have each scored once before the first request."""
    from fastapi.testclient import TestClient

    from reranker import InputTooLongError, Reranker
    from reranker_server.app import create_app
    from reranker_server.settings import ServerSettings

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
    done = subprocess.run([sys.executable, "-m", "reranker_cli.main", "serve", "-m",
                           str(converted("q8_0")), "--port", str(port)],
                          env=dict(os.environ, RERANKER_CPU_PATH="turbo"), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "'turbo'" in done.stderr
    assert "RERANKER_CPU_PATH" in done.stderr
