"""llama.cpp+torch: both engines loaded, each prompt sent to one by its length.

Real engines on the tiny generated f32 model. Which engine is faster at which length is
not a fact a test on a shared CPU can rely on, so the verdict that makes auto route is
written through `save_engine_verdict` from chosen timings (the same stand-in as in
test_torch_engine.py); everything after it (loading, routing, scores) is real.
"""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from reranker import Reranker
from reranker.cli.main import cli
from reranker.engine import LlamaEngine
from reranker.engine_choice import ROUTED, load_engine_verdict, save_engine_verdict
from reranker.errors import RerankerClosedError
from reranker.routed_engine import RoutedEngine

from test_parity import QUERY, SIXTEEN

# A recorded verdict where torch lost the short request and won the long one by far.
TIMINGS = {"short": {"llama.cpp": 1.0, "torch": 2.0},
           "typical": {"llama.cpp": 30.0, "torch": 20.0}}


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANKER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RERANKER_ENGINE", raising=False)
    return tmp_path / "cache"


@pytest.fixture()
def routed_model(converted, cache, tmp_path):
    """A copy of the f32 model whose recorded verdict routes prompts of 200+ tokens to torch."""
    model = tmp_path / "routed.gguf"
    model.write_bytes(converted("f32").read_bytes())
    save_engine_verdict(model, TIMINGS, {"short": 200, "typical": 2000})
    assert load_engine_verdict(model).torch_from_tokens == 2000
    save_engine_verdict(model, {**TIMINGS, "medium": {"llama.cpp": 8.0, "torch": 6.0}},
                        {"short": 100, "medium": 200, "typical": 2000})
    assert load_engine_verdict(model).torch_from_tokens == 200
    return model


def test_a_context_below_the_threshold_loads_llama_cpp_alone(routed_model):
    """No prompt can reach torch when the context is capped below its threshold (200)."""
    with Reranker(routed_model, n_threads=2, max_context=180) as ranker:
        assert isinstance(ranker.engine, LlamaEngine)
        assert ranker.engine_choice.name == "llama.cpp"
        assert "capped at 180" in ranker.engine_choice.reason
        assert ranker.score(QUERY, SIXTEEN[:2]).scores.shape == (2,)
    with Reranker(routed_model, n_threads=2, max_context=200) as ranker:  # 200 can reach it
        assert isinstance(ranker.engine, RoutedEngine)


def test_auto_loads_both_and_routes_by_prompt_length(routed_model):
    short_docs, long_docs = SIXTEEN[:1], SIXTEEN
    with Reranker(routed_model, n_threads=2) as ranker:
        engine = ranker.engine
        assert isinstance(engine, RoutedEngine) and engine.name == ROUTED
        assert ranker.engine_choice.torch_from_tokens == 200
        assert "llama.cpp below 200 prompt tokens" in ranker.engine_choice.reason
        # A prompt is routed by its length (the tokens `score` hands the engine; those
        # after the last marker are not decoded).
        (short_block,) = ranker.plan(QUERY, short_docs).blocks
        (long_block,) = ranker.plan(QUERY, long_docs).blocks
        assert len(short_block.token_ids) < 200 <= len(long_block.token_ids)

        short = ranker.score(QUERY, short_docs)
        assert engine.llama.decoded_tokens == short_block.decode_length
        assert engine.torch.decoded_tokens == 0  # torch has not run
        assert short.decoded_tokens == short_block.decode_length
        routed_long = ranker.score(QUERY, long_docs)
        assert engine.torch.decoded_tokens == long_block.decode_length
        assert engine.llama.decoded_tokens == short_block.decode_length  # not run again
        assert routed_long.decoded_tokens == long_block.decode_length
        assert routed_long.reused_tokens == 0  # torch keeps no cache
    for name, docs, routed in (("llama.cpp", short_docs, short),
                               ("torch", long_docs, routed_long)):
        with Reranker(routed_model, n_threads=2, engine=name) as alone:
            np.testing.assert_allclose(routed.scores, alone.score(QUERY, docs).scores,
                                       atol=1e-4)


def test_inspect_shows_the_routing(routed_model):
    shown = CliRunner().invoke(cli, ["inspect", str(routed_model), "--json"])
    assert shown.exit_code == 0, shown.output
    engine = json.loads(shown.stdout)["engine"]
    assert engine["name"] == ROUTED and engine["torch_from_tokens"] == 200


def test_both_engines_share_llama_cpps_tokens(routed_model):
    with Reranker(routed_model, n_threads=2) as ranker:
        engine = ranker.engine
        text = "Köln, 東京 and naïve café 🚀"
        assert engine.tokenize(text) == engine.llama.tokenize(text) == engine.torch.tokenize(text)
        marker = "<|embed_token|>"
        assert engine.special_token_id(marker) == engine.torch.special_token_id(marker)


def test_closing_closes_both_and_concurrent_calls_take_turns(routed_model):
    ranker = Reranker(routed_model, n_threads=2)
    engine = ranker.engine
    results, errors = {}, []

    def score(docs):
        try:
            results.setdefault(len(docs), []).append(ranker.score(QUERY, docs).scores)
        except Exception as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)
    threads = [threading.Thread(target=score, args=(docs,))
               for docs in (SIXTEEN[:1], SIXTEEN, SIXTEEN[:1], SIXTEEN)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and sorted(results) == [1, len(SIXTEEN)]
    for first, second in results.values():  # each length gave the same scores both times
        np.testing.assert_array_equal(first, second)
    ranker.close()
    for call in (lambda: engine.tokenize("a"), lambda: engine.torch.hidden_states([1, 2], [1]),
                 lambda: engine.llama.hidden_states([1, 2], [1])):
        with pytest.raises(RerankerClosedError):
            call()
    engine.close()  # idempotent


def test_a_bad_threshold_is_refused_and_frees_llama_cpp(converted):
    for threshold in (0, -5, True, 2.5, "200"):
        llama = LlamaEngine(converted("f32"), n_threads=1)
        with pytest.raises(ValueError, match="torch_from_tokens must be a positive integer"):
            RoutedEngine(llama, threshold)
        with pytest.raises(RerankerClosedError):  # taken over, then closed
            llama.tokenize("a")


def test_the_server_names_the_routing_and_answers_both_lengths(routed_model):
    from fastapi.testclient import TestClient

    from reranker.server.app import create_app
    from reranker.server.settings import ServerSettings

    settings = ServerSettings(model_path=routed_model, model_name="tiny", threads=1)
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").json()["engine"] == ROUTED
        for docs in (SIXTEEN[:1], SIXTEEN):  # one prompt each side of the threshold
            answer = client.post("/v1/rerank", json={"query": QUERY, "documents": docs})
            assert answer.status_code == 200 and len(answer.json()["results"]) == len(docs)
