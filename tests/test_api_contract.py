"""One rerank API contract (reranker.api_contract) for the CLI, the server and the library.

A table of edge requests goes through all three front ends: `rerank --batch` (and, where
options can say it, `rerank --json`), the server in-process (TestClient on create_app) and
`answer_request`; each must give the same answer: the same error type and field, or the
same ranking with the library's own scores. Then the server's other shapes: Cohere's
v1 and v2 SDK clients against a real server process, and text-embeddings-inference's body.
"""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from reranker import Reranker, RequestError, answer_request
from reranker.cli.main import cli

DOCS = ["Paris is the capital of France.", "Berlin is the capital of Germany.", "Bananas."]
QUERY = "capital of France"


def ok(**changes) -> dict:
    return {"query": QUERY, "documents": DOCS, **changes}


# (request body, expected): ("ok", results, with documents) or ("error", type, field).
EDGE_CASES = [
    (ok(), ("ok", 3, True)),
    (ok(top_n=1), ("ok", 1, True)),
    (ok(top_n=99), ("ok", 3, True)),  # more than the list: every document
    (ok(top_n=0), ("error", "invalid_request", "top_n")),
    (ok(top_n=-1), ("error", "invalid_request", "top_n")),
    (ok(top_n=True), ("error", "invalid_request", "top_n")),
    (ok(top_n=2.0), ("error", "invalid_request", "top_n")),
    (ok(top_n="2"), ("error", "invalid_request", "top_n")),
    (ok(query=""), ("error", "invalid_request", "query")),
    ({"documents": DOCS}, ("error", "invalid_request", "query")),
    (ok(query=["q"]), ("error", "invalid_request", "query")),
    (ok(documents=[]), ("error", "invalid_request", "documents")),
    (ok(documents="one text"), ("error", "invalid_request", "documents")),
    (ok(documents=[DOCS[0], {"text": DOCS[1]}, {"text": DOCS[2], "id": 7}]), ("ok", 3, True)),
    (ok(documents=["", DOCS[0]]), ("ok", 2, True)),  # an empty document is a document
    (ok(documents=[DOCS[0], {"txt": "a"}]), ("error", "invalid_request", "documents.1")),
    (ok(documents=[DOCS[0], None]), ("error", "invalid_request", "documents.1")),
    (ok(rank_fields=["text"], max_chunks_per_doc=3, priority=1), ("ok", 3, True)),  # ignored
    (ok(return_documents=False), ("ok", 3, False)),
    (ok(return_documents="no"), ("error", "invalid_request", "return_documents")),
    (ok(instruction=5), ("error", "invalid_request", "instruction")),
    (ok(instruction="Rank French sources first."), ("ok", 3, True)),
    (ok(documents=[DOCS[0], "half a pair \ud800"]), ("error", "invalid_request", "documents.1")),
    (ok(query="\udfff"), ("error", "invalid_request", "query")),
    (ok(max_tokens_per_doc=4096), ("ok", 3, True)),  # above the model's 2048: no effect
    (ok(max_tokens_per_doc=100), ("ok", 3, True)),  # longer than every document: no effect
    (ok(max_tokens_per_doc=3), ("ok", 3, True)),  # each document cut at 3 tokens
    (ok(max_tokens_per_doc=0), ("error", "invalid_request", "max_tokens_per_doc")),
    (ok(max_tokens_per_doc=-5), ("error", "invalid_request", "max_tokens_per_doc")),
    (ok(max_tokens_per_doc=True), ("error", "invalid_request", "max_tokens_per_doc")),
    (ok(max_tokens_per_doc=1.5), ("error", "invalid_request", "max_tokens_per_doc")),
    (ok(max_tokens_per_doc="100"), ("error", "invalid_request", "max_tokens_per_doc")),
    (["a list"], ("error", "invalid_request", None)),
]


@pytest.fixture(scope="module")
def model(converted):
    return converted("q8_0")


@pytest.fixture(scope="module")
def ranker(model):
    with Reranker(model, n_threads=2) as opened:
        yield opened


@pytest.fixture(scope="module")
def client(model):
    from fastapi.testclient import TestClient

    from reranker.server.app import create_app
    from reranker.server.settings import ServerSettings

    # Named as `serve` names it: the file's stem (the CLI's JSON names the file).
    settings = ServerSettings(model_path=model, model_name=model.stem)
    # The pool closes what it opens: a Reranker of its own, not the shared one.
    with TestClient(create_app(settings, lambda: Reranker(model, n_threads=2))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def batch_answers(model, tmp_path_factory):
    """Every edge request as one line of a `rerank --batch` file, answered in one run."""
    path = tmp_path_factory.mktemp("batch") / "edge.jsonl"
    path.write_text("\n".join(json.dumps(body) for body, _ in EDGE_CASES) + "\n",
                    encoding="utf-8")
    done = CliRunner().invoke(cli, ["rerank", "-m", str(model), "--batch", str(path)])
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == len(EDGE_CASES), done.output
    return answers


def _library(ranker, body) -> dict:
    """The library's answer as the server would put it: its JSON or its error body."""
    try:
        return answer_request(ranker, body).to_json()
    except RequestError as error:
        return error.body()


def _check(answer: dict, expected, body, ranker) -> None:
    if expected[0] == "error":
        _, kind, field = expected
        assert set(answer) == {"error"}, answer
        assert answer["error"]["type"] == kind and answer["error"].get("field") == field
        assert answer["error"]["message"]
        return
    _, count, with_documents = expected
    texts = [d if isinstance(d, str) else d["text"] for d in body["documents"]]
    # Expected scores from the Reranker's primitive, not from the contract's code.
    scores = ranker.score(body["query"], texts, instruction=body.get("instruction"),
                          max_doc_tokens=body.get("max_tokens_per_doc")).scores
    results = answer["results"]
    assert len(results) == count
    assert sorted(scores, reverse=True)[:count] == pytest.approx(
        [r["relevance_score"] for r in results], abs=1e-6)
    for r in results:
        assert r["relevance_score"] == pytest.approx(scores[r["index"]], abs=1e-6)
        assert ("document" in r) is with_documents
        if with_documents:
            assert r["document"] == {"text": texts[r["index"]]}


@pytest.mark.parametrize("case", range(len(EDGE_CASES)))
def test_the_cli_the_server_and_the_library_give_the_same_answer(case, client, batch_answers,
                                                                 ranker):
    body, expected = EDGE_CASES[case]
    # The body travels as JSON text (json.dumps escapes a lone surrogate as \\udXXX).
    response = client.post("/v1/rerank", content=json.dumps(body),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == (200 if expected[0] == "ok" else 422), response.text
    served = response.json()
    from_batch = {k: v for k, v in batch_answers[case].items() if k != "line"}
    from_library = _library(ranker, body)
    for answer in (served, from_batch, from_library):
        _check(answer, expected, body, ranker)
    if expected[0] == "error":  # the same message, too: one place words it
        assert served == from_batch == from_library
    else:
        order = [r["index"] for r in served["results"]]
        assert [r["index"] for r in from_batch["results"]] == order
        assert [r["index"] for r in from_library["results"]] == order
        assert served["usage"] == from_batch["usage"] == from_library["usage"]


@pytest.mark.parametrize("args,expected", [
    ([], ("ok", 3, True)),
    (["--top-n", "1"], ("ok", 1, True)),
    (["--top-n", "99"], ("ok", 3, True)),
    (["--no-documents"], ("ok", 3, False)),
    (["--max-tokens-per-doc", "3"], ("ok", 3, True)),
])
def test_rerank_json_answers_as_the_server_does(model, ranker, client, args, expected):
    done = CliRunner().invoke(cli, ["rerank", "-m", str(model), "-q", QUERY, "--json",
                                    *sum((["-d", d] for d in DOCS), []), *args])
    assert done.exit_code == 0, done.output
    body = ok()
    if "--top-n" in args:
        body["top_n"] = int(args[1])
    if "--no-documents" in args:
        body["return_documents"] = False
    if "--max-tokens-per-doc" in args:
        body["max_tokens_per_doc"] = int(args[1])
    answer = json.loads(done.stdout)
    _check(answer, expected, body, ranker)
    served = client.post("/v1/rerank", json=body).json()
    assert {**answer, "model": None} == {**served, "model": None}


@pytest.mark.parametrize("args", [["--top-n", "0"], ["--top-n", "-1"], ["--top-n", "true"],
                                  ["-q", ""], ["--max-tokens-per-doc", "0"]])
def test_rerank_json_refuses_what_the_server_refuses(model, args):
    query = [] if "-q" in args else ["-q", QUERY]
    done = CliRunner().invoke(cli, ["rerank", "-m", str(model), *query, "--json", "-d", "a",
                                    *args])
    assert done.exit_code == 2, done.output
    assert (args[0] if args[0] != "-q" else "--query is empty") in done.output
    assert "Traceback" not in done.output


def test_the_openapi_schema_is_the_contract(client):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FastAPI warns of a duplicate operation id
        schema = client.get("/openapi.json").json()
    request = schema["components"]["schemas"]["RerankRequest"]
    assert request["properties"]["top_n"]["anyOf"][0]["minimum"] == 1
    assert request["properties"]["query"]["minLength"] == 1
    assert request["properties"]["documents"]["minItems"] == 1
    assert set(request["required"]) == {"query", "documents"}
    paths = schema["paths"]
    for path in ("/v1/rerank", "/v2/rerank"):
        assert paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"] == \
            {"$ref": "#/components/schemas/RerankRequest"}
    either = paths["/rerank"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in either["oneOf"]} == \
        {"RerankRequest", "TeiRerankRequest"}
    assert paths["/v2/rerank"]["post"]["responses"]["422"]["content"]["application/json"][
        "schema"] == {"$ref": "#/components/schemas/ErrorResponse"}


# -- Cohere v2 and text-embeddings-inference shapes, in-process ---------------------------

def test_v2_answers_in_cohere_v2_shape(client, ranker):
    response = client.post("/v2/rerank", json=ok(top_n=2))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"id", "results", "meta"} and body["id"]
    assert body["meta"]["api_version"] == {"version": "2"}
    assert body["meta"]["tokens"]["input_tokens"] > 0
    assert all(set(r) == {"index", "relevance_score"} for r in body["results"])
    scores = ranker.score(QUERY, DOCS).scores
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx(
        sorted(scores, reverse=True)[:2], abs=1e-6)
    refused = client.post("/v2/rerank", json=ok(top_n=0))
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "top_n"


def test_max_tokens_per_doc_scores_each_document_cut_to_that_many_tokens(client, ranker):
    """As Cohere's v2 client sends it: the answer is that of the documents' first 2 tokens."""
    engine = ranker.engine
    cut = [engine.detokenize(engine.tokenize(doc)[:2]) for doc in DOCS]
    assert all(len(c) < len(doc) for c, doc in zip(cut, DOCS))
    expected = ranker.score(QUERY, cut).scores
    assert not np.allclose(expected, ranker.score(QUERY, DOCS).scores, atol=1e-3)
    whole = client.post("/v2/rerank", json=ok()).json()
    response = client.post("/v2/rerank", json=ok(max_tokens_per_doc=2))
    assert response.status_code == 200, response.text
    body = response.json()
    assert {r["index"]: r["relevance_score"] for r in body["results"]} == pytest.approx(
        dict(enumerate(expected)), abs=1e-6)
    assert (body["meta"]["tokens"]["input_tokens"]
            < whole["meta"]["tokens"]["input_tokens"])


def test_tei_body_on_rerank_gets_tei_ranks(client, ranker):
    scores = ranker.score(QUERY, DOCS).scores
    response = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True,
                                            "raw_scores": True, "truncate": True,
                                            "truncation_direction": "Right"})
    assert response.status_code == 200, response.text
    ranks = response.json()
    assert isinstance(ranks, list) and len(ranks) == 3
    assert [r["score"] for r in ranks] == pytest.approx(sorted(scores, reverse=True), abs=1e-6)
    for r in ranks:
        assert set(r) == {"index", "score", "text"} and r["text"] == DOCS[r["index"]]
        assert r["score"] == pytest.approx(scores[r["index"]], abs=1e-6)
    # raw_scores false gives the same cosine: there is no sigmoid for this model.
    plain = client.post("/rerank", json={"query": QUERY, "texts": DOCS}).json()
    assert [(r["index"], r["score"]) for r in plain] == [(r["index"], r["score"]) for r in ranks]
    assert all(set(r) == {"index", "score"} for r in plain)


@pytest.mark.parametrize("body,field", [
    ({"query": QUERY, "texts": []}, "texts"),
    ({"query": "", "texts": DOCS}, "query"),
    ({"query": QUERY, "texts": [DOCS[0], {"text": "a"}]}, "texts.1"),
    ({"query": QUERY, "texts": DOCS, "truncation_direction": "Left"}, "truncation_direction"),
    ({"query": QUERY, "texts": DOCS, "raw_scores": "yes"}, "raw_scores"),
    ({"query": QUERY, "texts": "one text"}, "texts"),
    ({"query": QUERY, "texts": DOCS, "truncation_direction": 5}, "truncation_direction"),
    (["a", "list"], None),
])
def test_tei_bodies_are_refused_by_field(client, body, field):
    response = client.post("/rerank", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request" and error.get("field") == field, error


def test_rerank_keeps_the_jina_shape_for_a_documents_body(client):
    # LlamaIndex's TEI reranker sends "raw_score" (sic): an unknown field, ignored.
    for body in (ok(), {**ok(), "texts": ["ignored"]}):
        answer = client.post("/rerank", json=body).json()
        assert set(answer) == {"model", "usage", "results"}
        assert len(answer["results"]) == 3
    tei = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_score": False})
    assert isinstance(tei.json(), list)


# -- Cohere's own SDK against a real server process -----------------------------------------

@pytest.fixture(scope="module")
def keyed_server(model, tmp_path_factory):
    from test_server import Server

    key_file = tmp_path_factory.mktemp("key") / "key"
    key_file.write_text("cohere-test-key\n")
    server = Server(model, "--api-key-file", str(key_file))
    yield server
    server.stop()


@pytest.mark.slow  # a real server process
def test_cohere_sdk_v1_client(keyed_server, model, ranker):
    import cohere

    co = cohere.Client(api_key="cohere-test-key", base_url=keyed_server.url)
    response = co.rerank(model=model.stem, query=QUERY, documents=DOCS, top_n=2,
                         return_documents=True)
    scores = ranker.score(QUERY, DOCS).scores
    assert [r.relevance_score for r in response.results] == pytest.approx(
        sorted(scores, reverse=True)[:2], abs=1e-6)
    for r in response.results:
        assert r.document.text == DOCS[r.index]
    with pytest.raises(cohere.core.ApiError) as refused:
        co.rerank(model=model.stem, query=QUERY, documents=[])
    assert refused.value.status_code == 422
    assert refused.value.body["error"]["field"] == "documents"


@pytest.mark.slow  # a real server process
def test_cohere_sdk_v2_client(keyed_server, model, ranker):
    import cohere

    co = cohere.ClientV2(api_key="cohere-test-key", base_url=keyed_server.url)
    response = co.rerank(model=model.stem, query=QUERY, documents=DOCS, top_n=3,
                         max_tokens_per_doc=4096)
    scores = ranker.score(QUERY, DOCS).scores
    assert [r.index for r in response.results] == sorted(range(3), key=lambda i: -scores[i])
    assert [r.relevance_score for r in response.results] == pytest.approx(
        sorted(scores, reverse=True), abs=1e-6)
    assert response.meta.api_version.version == "2"
    assert response.id
    with pytest.raises(cohere.core.ApiError) as refused:
        co.rerank(model=model.stem, query=QUERY, documents=DOCS, top_n=0)
    assert refused.value.status_code == 422
    wrong_key = cohere.ClientV2(api_key="not-the-key", base_url=keyed_server.url)
    with pytest.raises(cohere.core.ApiError) as unauthorized:
        wrong_key.rerank(model=model.stem, query=QUERY, documents=DOCS)
    assert unauthorized.value.status_code == 401


@pytest.mark.slow  # a real server process
def test_tei_body_against_the_real_server(keyed_server, ranker):
    """No package installed here ships a TEI client class (Haystack 3.4 has no
    HuggingFaceTEIRanker; LangChain's and LlamaIndex's TEI rerankers live in packages
    this project does not install), so this posts the body Haystack's
    HuggingFaceTEIRanker sends, as documented in its source."""
    response = httpx.post(keyed_server.url + "/rerank", timeout=60,
                          headers={"Authorization": "Bearer cohere-test-key"},
                          json={"query": QUERY, "texts": DOCS, "raw_scores": False,
                                "truncate": True, "truncation_direction": "Right"})
    assert response.status_code == 200, response.text
    scores = ranker.score(QUERY, DOCS).scores
    assert [r["index"] for r in response.json()] == sorted(range(3), key=lambda i: -scores[i])


@pytest.mark.parametrize("body", [None, "capital of France", 42, ["a"], {"query": "q"}])
def test_answer_request_refuses_what_is_not_a_request_body(ranker, body):
    with pytest.raises(RequestError) as refused:
        answer_request(ranker, body)
    assert refused.value.kind == "invalid_request"
    assert isinstance(refused.value, ValueError)


def test_answer_request_on_a_closed_reranker_says_so(model):
    from reranker import RerankerClosedError

    closed = Reranker(model, n_threads=1)
    closed.close()
    with pytest.raises(RerankerClosedError):
        answer_request(closed, ok())
