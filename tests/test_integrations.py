"""The LangChain, LlamaIndex and Haystack wrappers, run inside each framework's own objects
on the tiny model: same order and scores as `Reranker.rerank`, metadata kept, inputs left
alone, one model per file shared between them."""
from __future__ import annotations

import asyncio
import copy
import gc
import os
import pickle
import threading
from pathlib import Path

import pytest

# Haystack sends usage telemetry (and writes ~/.haystack) unless told not to; it reads this
# when first imported, which is below.
os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"

from haystack import Document as HaystackDocument  # noqa: E402
from haystack import Pipeline  # noqa: E402
from haystack.core.errors import DeserializationError  # noqa: E402
from langchain_classic.retrievers import ContextualCompressionRetriever  # noqa: E402
from langchain_core.documents import Document as LangChainDocument  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402
from llama_index.core.schema import (MetadataMode, NodeWithScore, QueryBundle,  # noqa: E402
                                     TextNode)

from reranker import Reranker, RerankerClosedError  # noqa: E402
from reranker.integrations import _shared  # noqa: E402
from reranker.integrations._shared import SharedModel, shared_models  # noqa: E402
from reranker.integrations.haystack import RerankerRanker  # noqa: E402
from reranker.integrations.langchain import RerankerCompressor  # noqa: E402
from reranker.integrations.llama_index import RerankerPostprocessor  # noqa: E402
from processes import run_python  # noqa: E402

QUERY = "What is the capital of France?"
TEXTS = ["Berlin is the capital of Germany.", "Paris is the capital of France.",
         "Bananas are yellow.", "", "France borders Spain and Italy.",
         "The Eiffel Tower is in Paris."]
INSTRUCTION = "Rank the passages that answer a geography question first."
THREADS = 2  # every wrapper here loads with the same options, so they share one model


@pytest.fixture
def model_path(converted) -> Path:
    return converted("q8_0")


@pytest.fixture(scope="module", autouse=True)
def held(converted):
    """A lease on the tiny model with THREADS held for the whole module, as an application
    would hold one, so the wrappers built by each test share it instead of loading again."""
    lease = SharedModel(converted("q8_0"), n_threads=THREADS)
    yield lease.get()
    lease.close()


@pytest.fixture
def closing():
    """closing(wrapper) -> wrapper, closed at the end of the test so that no lease outlives it."""
    wrappers = []

    def keep(wrapper):
        wrappers.append(wrapper)
        return wrapper
    yield keep
    for wrapper in wrappers:
        wrapper.close()


def expected(reranker: Reranker, texts, top_n=None, instruction=None) -> list[tuple[int, float]]:
    return [(r.index, r.relevance_score)
            for r in reranker.rerank(QUERY, texts, top_n=top_n, instruction=instruction)]


def leases(path: Path) -> int:
    return sum(users for file, _, users in shared_models() if file == Path(path).resolve())


@pytest.fixture
def scoring_threads(monkeypatch) -> list[int]:
    """The id of the thread each SharedModel.rerank call ran in, in call order."""
    threads = []
    rerank = SharedModel.rerank

    def recording(self, *args, **kwargs):
        threads.append(threading.get_ident())
        return rerank(self, *args, **kwargs)
    monkeypatch.setattr(SharedModel, "rerank", recording)
    return threads


def on_an_event_loop(start):
    """(the event loop's thread id, the result) of awaiting start() in asyncio.run."""
    async def main():
        return threading.get_ident(), await start()
    return asyncio.run(main())


# -- LangChain ---------------------------------------------------------------------------

def lc_documents() -> list[LangChainDocument]:
    return [LangChainDocument(page_content=text, metadata={"source": f"doc{i}", "i": i},
                              id=f"id{i}") for i, text in enumerate(TEXTS)]


def test_langchain_compressor_ranks_as_rerank_and_keeps_metadata(model_path, closing):
    compressor = closing(RerankerCompressor(model_path, top_n=3, n_threads=THREADS))
    docs = lc_documents()
    before = [d.model_copy(deep=True) for d in docs]
    out = compressor.compress_documents(docs, QUERY)
    want = expected(compressor.reranker, TEXTS, top_n=3)
    assert [(int(d.metadata["i"]), d.metadata["relevance_score"]) for d in out] == want
    for doc, (index, _) in zip(out, want):
        assert doc.page_content == TEXTS[index] and doc.id == f"id{index}"
        assert doc.metadata["source"] == f"doc{index}"
    assert docs == before  # the caller's documents gained no score
    assert all("relevance_score" not in d.metadata for d in docs)


def test_langchain_top_n_and_instruction(model_path, closing):
    everything = closing(RerankerCompressor(model_path, top_n=None, n_threads=THREADS,
                                            instruction=INSTRUCTION))
    out = everything.compress_documents(lc_documents(), QUERY)
    want = expected(everything.reranker, TEXTS, instruction=INSTRUCTION)
    assert [(d.metadata["i"], d.metadata["relevance_score"]) for d in out] == want
    assert want != expected(everything.reranker, TEXTS)  # the instruction reached the model
    none = closing(RerankerCompressor(model_path, top_n=0, n_threads=THREADS))
    assert none.compress_documents(lc_documents(), QUERY) == []


def test_langchain_inside_contextual_compression_retriever(model_path, closing):
    # A real first stage: langchain_core's in-memory vector store (fake, seeded embeddings).
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=16))
    store.add_documents(lc_documents())
    base = store.as_retriever(search_kwargs={"k": 5})
    compressor = closing(RerankerCompressor(model_path, top_n=2, n_threads=THREADS))
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base)
    retrieved = base.invoke(QUERY)
    assert len(retrieved) == 5
    want = expected(compressor.reranker, [d.page_content for d in retrieved], top_n=2)
    for out in (retriever.invoke(QUERY), asyncio.run(retriever.ainvoke(QUERY))):
        assert [(d.id, d.metadata["relevance_score"]) for d in out] == \
            [(retrieved[i].id, score) for i, score in want]


def test_langchain_async_scores_off_the_event_loop(model_path, closing, scoring_threads):
    compressor = closing(RerankerCompressor(model_path, top_n=3, n_threads=THREADS))
    loop_thread, out = on_an_event_loop(
        lambda: compressor.acompress_documents(lc_documents(), QUERY))
    assert scoring_threads and scoring_threads[0] != loop_thread
    assert out == compressor.compress_documents(lc_documents(), QUERY)


def test_langchain_empty_and_wrong_types(model_path, closing):
    compressor = closing(RerankerCompressor(model_path, n_threads=THREADS))
    assert compressor.compress_documents([], QUERY) == []
    assert asyncio.run(compressor.acompress_documents([], QUERY)) == []
    with pytest.raises(TypeError, match=r"documents\[1\] is str; expected langchain_core Document"):
        compressor.compress_documents([lc_documents()[0], "text"], QUERY)
    with pytest.raises(TypeError, match="documents is str"):
        compressor.compress_documents("text", QUERY)
    with pytest.raises(TypeError, match="query is int"):
        compressor.compress_documents(lc_documents(), 3)
    with pytest.raises(TypeError, match="top_n is str"):
        RerankerCompressor(model_path, top_n="3")
    with pytest.raises(TypeError, match="model is int; expected the path of a GGUF"):
        RerankerCompressor(3)
    with pytest.raises(TypeError, match="instruction is int"):
        RerankerCompressor(model_path, instruction=5)


# -- LlamaIndex --------------------------------------------------------------------------

def li_nodes() -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(text=text, id_=f"node{i}", metadata={"i": i}),
                          score=0.5 - i / 100) for i, text in enumerate(TEXTS)]


def test_llama_index_postprocessor_ranks_as_rerank(model_path, closing):
    post = closing(RerankerPostprocessor(model_path, top_n=3, n_threads=THREADS))
    nodes = li_nodes()
    # LlamaIndex's rerankers score the embedding view: the text with its metadata.
    texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    assert texts[1] == "i: 1\n\n" + TEXTS[1]
    want = expected(post.reranker, texts, top_n=3)
    for out in (post.postprocess_nodes(nodes, query_str=QUERY),
                post.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY)),
                asyncio.run(post.apostprocess_nodes(nodes, query_str=QUERY))):
        assert all(isinstance(n, NodeWithScore) for n in out)
        assert [(n.node.node_id, n.score) for n in out] == [(f"node{i}", s) for i, s in want]
        assert all(n.node is nodes[i].node for n, (i, _) in zip(out, want))  # metadata kept
    assert [n.score for n in nodes] == [n.score for n in li_nodes()]  # retrieval scores kept


def test_llama_index_metadata_mode_and_top_n(model_path, closing):
    post = closing(RerankerPostprocessor(model_path, top_n=None, metadata_mode="none",
                                         n_threads=THREADS, instruction=INSTRUCTION))
    out = post.postprocess_nodes(li_nodes(), query_str=QUERY)
    assert [(n.node.node_id, n.score) for n in out] == \
        [(f"node{i}", s) for i, s in expected(post.reranker, TEXTS, instruction=INSTRUCTION)]


def test_llama_index_serialization_round_trip(model_path, closing):
    post = closing(RerankerPostprocessor(model_path, top_n=2, n_threads=THREADS,
                                         metadata_mode="none", instruction=INSTRUCTION))
    again = closing(RerankerPostprocessor.from_json(post.to_json()))
    assert again.to_dict() == post.to_dict()
    assert again.reranker is post.reranker  # same file and options: the same model


def test_llama_index_empty_and_wrong_input(model_path, closing):
    post = closing(RerankerPostprocessor(model_path, n_threads=THREADS))
    assert post.postprocess_nodes([], query_str=QUERY) == []
    with pytest.raises(ValueError, match="needs the query"):
        post.postprocess_nodes(li_nodes())
    with pytest.raises(TypeError, match=r"nodes\[0\] is TextNode; expected llama_index Node"):
        post.postprocess_nodes([n.node for n in li_nodes()], query_str=QUERY)
    with pytest.raises(TypeError, match="top_n is float"):
        RerankerPostprocessor(model_path, top_n=2.0)


# -- Haystack ----------------------------------------------------------------------------

def hs_documents() -> list[HaystackDocument]:
    return [HaystackDocument(content=text, meta={"i": i, "title": f"title {i}"}, score=0.1 * i)
            for i, text in enumerate(TEXTS)]


def ranked(result) -> list[tuple[int, float]]:
    return [(d.meta["i"], d.score) for d in result["documents"]]


def test_haystack_ranker_in_a_pipeline_ranks_as_rerank(model_path, closing):
    ranker = closing(RerankerRanker(model_path, top_k=3, n_threads=THREADS))
    pipeline = Pipeline()
    pipeline.add_component("ranker", ranker)
    docs = hs_documents()
    out = pipeline.run({"ranker": {"query": QUERY, "documents": docs}})["ranker"]
    assert ranked(out) == expected(ranker.reranker, TEXTS, top_n=3)
    for doc in out["documents"]:
        original = docs[doc.meta["i"]]
        assert (doc.id, doc.content, doc.meta) == (original.id, original.content, original.meta)
    assert [d.score for d in docs] == [d.score for d in hs_documents()]  # inputs untouched
    five = pipeline.run({"ranker": {"query": QUERY, "documents": docs, "top_k": 5}})["ranker"]
    assert ranked(five) == expected(ranker.reranker, TEXTS, top_n=5)


def test_haystack_run_async_scores_off_the_event_loop(model_path, closing, scoring_threads):
    """docs/integrations.md named an AsyncPipeline, which haystack-ai 3 does not have; the
    documented way is Pipeline.run_async, which runs this sync component in a thread."""
    ranker = closing(RerankerRanker(model_path, top_k=3, n_threads=THREADS))
    pipeline = Pipeline()
    pipeline.add_component("ranker", ranker)
    pipeline.warm_up()
    loop_thread, out = on_an_event_loop(lambda: pipeline.run_async(
        {"ranker": {"query": QUERY, "documents": hs_documents()}}))
    assert scoring_threads and scoring_threads[0] != loop_thread
    assert ranked(out["ranker"]) == expected(ranker.reranker, TEXTS, top_n=3)


def test_haystack_meta_fields_and_instruction(model_path, closing):
    ranker = closing(RerankerRanker(model_path, top_k=6, n_threads=THREADS, instruction=INSTRUCTION,
                                    meta_fields_to_embed=["title"], embedding_separator=" | "))
    out = ranker.run(QUERY, hs_documents())
    texts = [f"title {i} | {text}" for i, text in enumerate(TEXTS)]
    assert ranked(out) == expected(ranker.reranker, texts, instruction=INSTRUCTION)


def test_haystack_serialization_round_trip(model_path, closing):
    ranker = RerankerRanker(model_path, top_k=2, n_threads=THREADS, instruction=INSTRUCTION,
                            meta_fields_to_embed=["title"])
    data = ranker.to_dict()
    assert data == {"type": "reranker.integrations.haystack.RerankerRanker",
                    "init_parameters": {"model": str(model_path), "top_k": 2,
                                        "instruction": INSTRUCTION, "n_threads": THREADS,
                                        "block_tokens": None, "cpu_path": None,
                                        "engine": None,
                                        "meta_fields_to_embed": ["title"],
                                        "embedding_separator": "\n"}}
    assert RerankerRanker.from_dict(data).to_dict() == data
    pipeline = Pipeline()
    pipeline.add_component("ranker", ranker)
    text = pipeline.dumps()
    # Haystack 3 imports only allowed modules when loading a pipeline.
    with pytest.raises(DeserializationError):
        Pipeline.loads(text)
    loaded = Pipeline.loads(text, allowed_modules=["reranker.*"])
    closing(loaded.get_component("ranker"))
    closing(ranker)
    args = {"ranker": {"query": QUERY, "documents": hs_documents()}}
    assert ranked(loaded.run(args)["ranker"]) == ranked(pipeline.run(args)["ranker"])
    # A given Reranker is saved as its file.
    assert RerankerRanker(ranker.reranker).to_dict()["init_parameters"]["model"] == str(model_path)


def test_haystack_loads_in_warm_up_and_empty_input_loads_nothing(model_path, closing):
    # One thread: options no other test uses, so this component's model is its own.
    ranker = closing(RerankerRanker(model_path, n_threads=1))
    assert ranker.run(QUERY, []) == {"documents": []}
    assert all(o.n_threads != 1 for _, o, _ in shared_models())
    ranker.warm_up()
    ranker.warm_up()
    assert [u for _, o, u in shared_models() if o.n_threads == 1] == [1]
    ranker.close()
    assert all(o.n_threads != 1 for _, o, _ in shared_models())


def test_haystack_wrong_input(model_path):
    ranker = RerankerRanker(model_path, n_threads=THREADS)
    with pytest.raises(TypeError, match=r"documents\[0\] is str; expected haystack Document"):
        ranker.run(QUERY, ["text"])
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        ranker.run(QUERY, hs_documents(), top_k=0)
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        RerankerRanker(model_path, top_k=0)
    with pytest.raises(TypeError, match="top_k is str"):
        RerankerRanker(model_path, top_k="3")
    with pytest.raises(ValueError, match="cpu_path 'fast' is not one of"):
        RerankerRanker(model_path, cpu_path="fast")
    with pytest.raises(ValueError, match="engine 'tensorflow' is not one of auto, llama.cpp, torch"):
        RerankerRanker(model_path, engine="tensorflow")
    with pytest.raises(TypeError, match="engine is int; expected str or None"):
        RerankerRanker(model_path, engine=1)


# -- one model per file ------------------------------------------------------------------

@pytest.fixture
def count_loads(monkeypatch):
    """Counts the Rerankers the registry creates."""
    loads = []
    load = _shared._registry._load

    def counting(path, options):
        loads.append(path)
        return load(path, options)
    monkeypatch.setattr(_shared._registry, "_load", counting)
    return loads


def test_the_three_wrappers_share_one_model(model_path, tmp_path, count_loads, held):
    # Block size: options no other test uses, so the model is this test's own. The file is
    # named three ways: its path, a symlink to it, and the directory holding that link.
    (tmp_path / "link.gguf").symlink_to(model_path)
    options = {"n_threads": THREADS, "block_tokens": 4096}
    compressor = RerankerCompressor(model_path, **options)
    post = RerankerPostprocessor(tmp_path / "link.gguf", **options)
    ranker = RerankerRanker(str(tmp_path), **options)
    ranker.warm_up()
    assert count_loads == [model_path.resolve()]
    shared = compressor.reranker
    assert post.reranker is shared and ranker.reranker is shared
    assert [u for _, o, u in shared_models() if o.block_tokens == 4096] == [3]
    # Default options spelled out are the same options (the module's held model).
    assert RerankerCompressor(model_path, n_threads=THREADS, block_tokens=131072).reranker \
        is held
    # The model is closed when the last wrapper lets go of it, not before.
    compressor.close()
    post.close()
    assert shared.rerank(QUERY, TEXTS[:2])
    ranker.close()
    assert all(o.block_tokens != 4096 for _, o, _ in shared_models())
    with pytest.raises(RerankerClosedError):
        shared.rerank(QUERY, TEXTS[:2])
    # A run after close() takes the model back.
    assert len(ranker.run(QUERY, hs_documents())["documents"]) == 3
    ranker.close()
    assert len(count_loads) == 2  # the first and the one after close()


def test_different_options_load_different_models(model_path, closing):
    two = closing(RerankerCompressor(model_path, n_threads=THREADS))
    one = closing(RerankerCompressor(model_path, n_threads=1))
    assert one.reranker is not two.reranker


def test_the_engine_option_reaches_the_reranker(model_path, closing):
    pytest.importorskip("torch")
    default = closing(RerankerPostprocessor(model_path, n_threads=THREADS))
    on_torch = closing(RerankerPostprocessor(model_path, n_threads=THREADS, engine="torch"))
    ranker = closing(RerankerRanker(model_path, n_threads=THREADS, engine="torch"))
    ranker.warm_up()
    assert on_torch.reranker is not default.reranker  # another engine is another model
    assert on_torch.reranker is ranker.reranker  # the same options share one
    assert on_torch.reranker.engine.name == "torch"
    assert on_torch.reranker.engine_choice.reason == "asked for (option)"  # not the env var
    assert RerankerRanker.from_dict(ranker.to_dict()).engine == "torch"


def test_a_dropped_wrapper_gives_its_model_back(model_path, count_loads):
    post = RerankerPostprocessor(model_path, n_threads=THREADS, block_tokens=2048)
    shared = post.reranker
    del post
    gc.collect()
    assert all(o.block_tokens != 2048 for _, o, _ in shared_models())
    with pytest.raises(RerankerClosedError):
        shared.rerank(QUERY, TEXTS[:2])


def test_a_copied_wrapper_holds_its_own_lease(model_path, closing):
    compressor = RerankerCompressor(model_path, n_threads=THREADS, block_tokens=1024)
    deep = closing(compressor.model_copy(deep=True))
    also = closing(copy.deepcopy(compressor))
    assert leases(model_path) >= 1
    compressor.close()
    assert deep.reranker is also.reranker
    assert len(deep.compress_documents(lc_documents(), QUERY)) == 3


def test_close_during_a_call_lets_the_call_finish(model_path, monkeypatch):
    """close() from another thread after a call has taken the model but before it scores:
    the call used to meet a closed model (RerankerClosedError, "create a new Reranker").
    The patched Reranker.rerank only holds the call in that window, which is real but a
    few instructions wide, until close() has returned."""
    compressor = RerankerCompressor(model_path, n_threads=THREADS, block_tokens=768)
    model = compressor.reranker
    want = expected(model, TEXTS, top_n=3)
    in_window, closed = threading.Event(), threading.Event()
    rerank = Reranker.rerank

    def held_in_the_window(self, *args, **kwargs):
        if threading.current_thread().name == "caller":
            in_window.set()
            closed.wait(timeout=30)
        return rerank(self, *args, **kwargs)
    monkeypatch.setattr(Reranker, "rerank", held_in_the_window)
    outcome = {}

    def call():
        try:
            outcome["docs"] = compressor.compress_documents(lc_documents(), QUERY)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc
    caller = threading.Thread(target=call, name="caller")
    caller.start()
    assert in_window.wait(timeout=30)
    compressor.close()
    closed.set()
    caller.join(timeout=60)
    assert "error" not in outcome, outcome
    assert [(d.metadata["i"], d.metadata["relevance_score"]) for d in outcome["docs"]] == want
    # The call's lease was the last: the model is closed once it ends, not leaked.
    assert model.closed
    assert all(o.block_tokens != 768 for _, o, _ in shared_models())


def test_an_unpickled_wrapper_ranks_as_the_original(model_path, closing):
    """The LangChain and Haystack wrappers could not be pickled ("cannot pickle
    '_thread.lock' object"); multiprocessing and joblib pickle pipeline components."""
    compressor = closing(RerankerCompressor(model_path, top_n=3, n_threads=THREADS))
    ranker = closing(RerankerRanker(model_path, top_k=3, n_threads=THREADS))
    post = closing(RerankerPostprocessor(model_path, top_n=3, n_threads=THREADS))
    lc_copy = closing(pickle.loads(pickle.dumps(compressor)))
    hs_copy = closing(pickle.loads(pickle.dumps(ranker)))
    li_copy = closing(pickle.loads(pickle.dumps(post)))
    assert lc_copy.compress_documents(lc_documents(), QUERY) == \
        compressor.compress_documents(lc_documents(), QUERY)
    assert hs_copy.run(QUERY, hs_documents()) == ranker.run(QUERY, hs_documents())
    assert li_copy.postprocess_nodes(li_nodes(), query_str=QUERY) == \
        post.postprocess_nodes(li_nodes(), query_str=QUERY)
    assert (lc_copy.top_n, hs_copy.top_k, hs_copy.n_threads) == (3, 3, THREADS)
    # Each copy holds its own lease: closing the original leaves it working.
    before = leases(model_path)
    compressor.close()
    assert leases(model_path) == before - 1
    assert len(lc_copy.compress_documents(lc_documents(), QUERY)) == 3


def test_a_wrapper_on_a_given_reranker_says_why_it_cannot_be_pickled(model_path):
    with Reranker(model_path, n_threads=1) as own:
        for wrapper in (RerankerCompressor(own), RerankerRanker(own)):
            with pytest.raises(TypeError, match="given a loaded Reranker .* cannot be pickled"
                                                ".* build the wrapper from the model's path"):
                pickle.dumps(wrapper)


def test_a_given_reranker_is_used_and_never_closed(model_path, count_loads):
    with Reranker(model_path, n_threads=1) as own:
        wrappers = [RerankerCompressor(own), RerankerPostprocessor(own), RerankerRanker(own)]
        assert all(w.reranker is own for w in wrappers)
        assert count_loads == []  # the registry loaded nothing
        out = wrappers[0].compress_documents(lc_documents(), QUERY)
        assert [d.metadata["relevance_score"] for d in out] == \
            [s for _, s in expected(own, TEXTS, top_n=3)]
        for wrapper in wrappers:
            wrapper.close()
        assert own.rerank(QUERY, TEXTS[:2])  # still open
    with pytest.raises(ValueError, match="n_threads only apply when a model file is loaded"):
        RerankerRanker(own, n_threads=2)


def test_a_reranker_closed_by_hand_is_loaded_again(model_path, count_loads):
    first = RerankerCompressor(model_path, n_threads=THREADS, block_tokens=512)
    first.reranker.close()
    second = RerankerCompressor(model_path, n_threads=THREADS, block_tokens=512)
    assert len(second.compress_documents(lc_documents(), QUERY)) == 3
    assert len(count_loads) == 2
    first.close()  # the first lease's release leaves the second's model open
    assert len(second.compress_documents(lc_documents(), QUERY)) == 3
    second.close()
    assert all(o.block_tokens != 512 for _, o, _ in shared_models())


def test_a_relative_path_still_loads_after_a_chdir(model_path, tmp_path, monkeypatch, closing):
    """A relative path was kept as given, so a load after os.chdir (Haystack's warm-up, a
    wrapper used after close()) failed: "model file tiny-q8_0.gguf does not exist"."""
    monkeypatch.chdir(model_path.parent)
    relative = model_path.name
    ranker = closing(RerankerRanker(relative, n_threads=THREADS))
    compressor = closing(RerankerCompressor(relative, n_threads=THREADS))
    post = closing(RerankerPostprocessor(relative, n_threads=THREADS))
    compressor.close()
    post.close()
    monkeypatch.chdir(tmp_path)
    ranker.warm_up()
    assert len(ranker.run(QUERY, hs_documents())["documents"]) == 3
    assert len(compressor.compress_documents(lc_documents(), QUERY)) == 3
    assert len(post.postprocess_nodes(li_nodes(), query_str=QUERY)) == 3
    assert compressor.model == post.model == str(model_path)
    # A saved Haystack pipeline keeps the path as given, relative to where it is loaded.
    assert ranker.to_dict()["init_parameters"]["model"] == relative
    monkeypatch.chdir(model_path.parent)
    again = closing(RerankerRanker.from_dict(ranker.to_dict()))
    assert again.to_dict() == ranker.to_dict() and again.reranker is ranker.reranker


def test_a_path_from_home_is_expanded(model_path, monkeypatch, closing):
    monkeypatch.setenv("HOME", str(model_path.parent))
    compressor = closing(RerankerCompressor(f"~/{model_path.name}", n_threads=THREADS))
    assert compressor.model == str(model_path)


def test_missing_model_file_fails_where_the_wrapper_is_built(tmp_path):
    from reranker import ModelFileError

    with pytest.raises(ModelFileError, match="does not exist"):
        RerankerCompressor(tmp_path / "nope.gguf")
    ranker = RerankerRanker(tmp_path / "nope.gguf")  # Haystack: at warm-up
    with pytest.raises(ModelFileError, match="does not exist"):
        ranker.warm_up()


@pytest.mark.parametrize("wrapper", [RerankerCompressor, RerankerPostprocessor])
def test_unknown_keywords_are_refused(model_path, wrapper):
    """The frameworks' pydantic models drop fields they do not know: top_k=1 (Haystack's
    name) returned 3 documents, and max_context or a typo passed without a word."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'top_k'; the number "
                                        "of documents to return is top_n here"):
        wrapper(model_path, top_k=1, n_threads=THREADS)
    for name in ("topn", "max_context"):
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{name}'; other "
                                            "Reranker options .* building the Reranker"):
            wrapper(model_path, **{name: 1}, n_threads=THREADS)


def test_the_frameworks_own_keywords_still_pass(model_path, closing):
    from llama_index.core.callbacks import CallbackManager

    manager = CallbackManager([])
    post = closing(RerankerPostprocessor(model_path, n_threads=THREADS, callback_manager=manager))
    assert post.callback_manager is manager


# -- imports -----------------------------------------------------------------------------

def test_importing_reranker_imports_no_framework():
    child = run_python(
        "import sys, reranker, reranker.integrations, reranker.integrations._shared\n"
        "found = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'langchain_core', 'langchain_classic', 'llama_index', 'haystack'})\n"
        "print(found)")
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "[]"


@pytest.mark.parametrize("module,blocked,extra", [
    ("langchain", "langchain_core", "langchain"),
    ("llama_index", "llama_index", "llama-index"),
    ("haystack", "haystack", "haystack")])
def test_a_missing_framework_names_the_extra(module, blocked, extra):
    # From the project's folder: `pip install 'reranker[...]'` would name PyPI's
    # `reranker`, another project.
    child = run_python(f"import sys\nsys.modules[{blocked!r}] = None\n"
                       f"import reranker.integrations.{module}")
    assert child.returncode != 0
    assert f"pip install -e '.[{extra}]' in this project's folder" in child.stderr


def test_engine_and_cpu_path_are_spelled_as_reranker_reads_them():
    """" TORCH " is torch for Reranker and $RERANKER_ENGINE; the wrappers refused it."""
    from reranker.integrations._shared import LoadOptions

    options = LoadOptions(engine=" TORCH ", cpu_path="Plain")
    assert (options.engine, options.cpu_path) == ("torch", "plain")
