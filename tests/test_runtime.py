"""The Reranker's API contract: results, bad input, model files, threads."""
from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from reranker import (InputTooLongError, ModelFileError, Reranker, RerankerClosedError,
                      RerankerError)
from processes import run_python
from texts import LONG_TOKENS

DOCS = ["Paris is the capital of France.", "", "Berlin is the capital of Germany.",
        "Bananas are yellow."]


def test_rerank_sorts_and_does_not_touch_the_input(ranker_for):
    ranker = ranker_for("q8_0")
    docs = list(DOCS)
    results = ranker.rerank("capital of France", docs)
    assert docs == DOCS
    scores = ranker.score("capital of France", docs).scores
    assert [r.index for r in results] == list(np.argsort(-scores, kind="stable"))
    assert [r.relevance_score for r in results] == sorted(scores, reverse=True)
    assert all(r.document == DOCS[r.index] for r in results)
    assert all(r.embedding is None for r in results)


def test_top_n_and_embeddings(ranker_for):
    ranker = ranker_for("q8_0")
    results = ranker.rerank("q", DOCS, top_n=2, return_embeddings=True)
    assert len(results) == 2
    scored = ranker.score("q", DOCS)
    for r in results:
        np.testing.assert_allclose(r.embedding, scored.doc_embeddings[r.index])
        cos = r.embedding @ scored.query_embedding / (
            np.linalg.norm(r.embedding) * np.linalg.norm(scored.query_embedding))
        assert cos == pytest.approx(r.relevance_score, abs=1e-6)
    assert ranker.rerank("q", DOCS, top_n=0) == []
    assert len(ranker.rerank("q", DOCS, top_n=99)) == len(DOCS)


def test_empty_list_gives_empty_results(ranker_for):
    assert ranker_for("q8_0").rerank("q", []) == []


def test_a_token_limit_stops_planning_at_the_document_that_passes_it(ranker_for):
    """A server's --max-tokens: a thousand documents are not all tokenized to refuse them."""
    from reranker.errors import TooManyTokensError

    ranker = ranker_for("q8_0")
    docs = ["word " * 100] * 1000
    per_doc = ranker.count_tokens(docs[0])
    limit = ranker.count_tokens("q") + 2 * per_doc
    assert len(ranker.plan("q", docs[:2], max_input_tokens=limit).document_tokens) == 2
    with pytest.raises(TooManyTokensError, match=rf"more than {limit} tokens .*\("
                                                 rf"{limit + per_doc} by document 3 of 1000\)"):
        ranker.plan("q", docs, max_input_tokens=limit)
    with pytest.raises(ValueError, match="max_input_tokens"):
        ranker.plan("q", docs, max_input_tokens=0)
    query = "a long query " * 50  # with no documents, the query alone is checked
    with pytest.raises(TooManyTokensError,
                       match=f"the query alone holds {ranker.count_tokens(query)} tokens"):
        ranker.plan(query, [], max_input_tokens=1)


def test_numpy_integers_are_integers(converted, ranker_for):
    """As numpy computations hand them over; a bool (numpy's too) is still refused."""
    ranker = ranker_for("q8_0")
    assert len(ranker.rerank("q", DOCS, top_n=np.int64(2))) == 2
    plan = ranker.plan("q", DOCS, max_doc_tokens=np.int32(1))
    assert all(type(n) is int and n <= 1 for n in plan.document_tokens)
    with Reranker(converted("q8_0"), n_threads=np.int64(1), max_context=np.int64(512)) as small:
        assert small.engine.max_context == 512 and type(small.max_doc_tokens) is int
    with pytest.raises(ValueError, match="top_n"):
        ranker.rerank("q", DOCS, top_n=np.bool_(True))


@pytest.mark.parametrize("bad_top_n", [-1, 1.5, "3", True])
def test_bad_top_n(ranker_for, bad_top_n):
    with pytest.raises(ValueError, match="top_n"):
        ranker_for("q8_0").rerank("q", DOCS, top_n=bad_top_n)


@pytest.mark.parametrize("method", ["rerank", "score", "plan"])
@pytest.mark.parametrize("bad_cap", [0, -1, 1.5, "3", True])
def test_bad_max_doc_tokens_per_call(ranker_for, method, bad_cap):
    with pytest.raises(ValueError, match=f"max_doc_tokens .*{bad_cap!r}"):
        getattr(ranker_for("q8_0"), method)("q", DOCS, max_doc_tokens=bad_cap)


@pytest.mark.parametrize("option,value,error", [
    ("max_context", -5, ValueError), ("max_context", 0, ValueError),
    ("max_context", "x", ValueError), ("n_threads", True, ValueError),
    ("block_size", True, ValueError), ("n_batch", 0, ValueError), ("n_batch", "x", ValueError),
    ("cpu_path", 5, TypeError), ("use_mmap", "no", TypeError),
    ("flash_attention", "yes", TypeError), ("kv_cache_type", 16, TypeError)])
def test_bad_constructor_options_are_named_before_loading(converted, option, value, error):
    with pytest.raises(error, match=f"^{option} "):
        Reranker(converted("q8_0"), **{option: value})


@pytest.mark.parametrize("model", [None, 123, b"model.gguf"])
def test_a_model_that_is_not_a_path_is_named(model):
    with pytest.raises(TypeError, match="^model is .*; expected a path"):
        Reranker(model)


def test_non_string_document_names_its_index(ranker_for):
    with pytest.raises(TypeError, match=r"documents\[2\] is int"):
        ranker_for("q8_0").rerank("q", ["a", "b", 3])
    with pytest.raises(TypeError, match="query is NoneType"):
        ranker_for("q8_0").rerank(None, ["a"])


@pytest.mark.parametrize("call,named", [
    (lambda r: r.rerank("q", ["a", "b\ud800c"]), r"documents\[1\] .*\\ud800\) at character 1"),
    (lambda r: r.score("q\udfff", ["a"]), r"query .*\\udfff\) at character 1"),
    (lambda r: r.plan("q", ["a"], instruction="x\ud800"), r"instruction .* at character 1"),
    (lambda r: r.count_tokens("\ud800"), r"text .* at character 0")])
def test_text_with_a_lone_surrogate_is_refused_by_name(ranker_for, call, named):
    """Python's str can hold one (bytes decoded with surrogateescape); UTF-8 cannot."""
    ranker = ranker_for("q8_0")
    with pytest.raises(ValueError, match=named):
        call(ranker)
    assert ranker.score("q", ["a"]).scores.shape == (1,)


@pytest.mark.parametrize("method", ["rerank", "score"])
@pytest.mark.parametrize("documents,named", [
    ("abc", "str"), ("", "str"), (b"abc", "bytes"), (bytearray(b"abc"), "bytearray"),
    ({"a": "doc"}, "dict"), ({"doc a", "doc b"}, "set"), (frozenset({"doc"}), "frozenset"),
    (3, "int"), (None, "NoneType")])
def test_documents_must_be_an_ordered_collection_of_texts(ranker_for, method, documents, named):
    # A str would be ranked as its characters, a dict as its keys, a set in no stated order.
    with pytest.raises(TypeError, match=rf"documents is {named}; expected a sequence of str"):
        getattr(ranker_for("q8_0"), method)("q", documents)


def test_tuples_and_generators_of_texts_are_documents(ranker_for):
    ranker = ranker_for("q8_0")
    expected = ranker.score("q", DOCS).scores
    np.testing.assert_array_equal(ranker.score("q", tuple(DOCS)).scores, expected)
    np.testing.assert_array_equal(ranker.score("q", (d for d in DOCS)).scores, expected)
    results = ranker.rerank("q", (d for d in DOCS))  # read once, indices in its order
    assert [r.document for r in results] == [DOCS[r.index] for r in results]
    assert sorted(r.index for r in results) == list(range(len(DOCS)))


def test_query_too_long_for_any_document(converted):
    with Reranker(converted("q8_0"), n_threads=2, max_context=256) as ranker:
        with pytest.raises(InputTooLongError, match="capped at 256"):
            ranker.rerank("q", ["a"], instruction="be thorough " * 200)
        # The same instance still works afterwards.
        assert len(ranker.rerank("q", ["a"])) == 1


@pytest.mark.slow  # many small blocks, decoded again as they are halved
def test_context_cap_splits_blocks_instead_of_failing(converted):
    docs = [f"document {i} " + "text " * 30 for i in range(20)]
    with Reranker(converted("f32"), n_threads=2) as unlimited, \
            Reranker(converted("f32"), n_threads=2, max_context=512) as capped:
        assert unlimited.score("q", docs).blocks == 1
        scored = capped.score("q", docs)
    assert scored.blocks > 1 and scored.scores.shape == (20,)


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        Reranker(tmp_path / "nope.gguf")


def test_directory_with_several_ggufs_asks_which(tmp_path, converted):
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(converted("q8_0").read_bytes()[:64])
    with pytest.raises(ModelFileError, match="holds 2 .gguf files"):
        Reranker(tmp_path)


@pytest.mark.parametrize("content", [b"", b"not a gguf at all" * 10,
                                     b"GGUF" + struct.pack("<I", 3) + b"\xff" * 40])
def test_corrupt_model_file_is_an_error_not_a_crash(tmp_path, content):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelFileError):
        Reranker(path)


def test_truncated_model_file(tmp_path, converted):
    data = converted("q8_0").read_bytes()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        Reranker(path)


def test_wrong_architecture(tmp_path):
    import gguf

    path = tmp_path / "llama.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelFileError, match="'llama' model; expected qwen3"):
        Reranker(path)


def test_projector_of_the_wrong_shape(tmp_path, converted):
    from safetensors.numpy import save_file

    projector = tmp_path / "projector.safetensors"
    save_file({"projector.0.weight": np.zeros((8, 100), np.float32),
               "projector.2.weight": np.zeros((8, 8), np.float32)}, str(projector))
    with pytest.raises(ModelFileError, match="100-wide states but the model's hidden size is 256"):
        Reranker(converted("q8_0"), projector)
    save_file({"projector.0.weight": np.zeros((8, 256), np.float32),
               "projector.2.weight": np.zeros((8, 9), np.float32)}, str(projector))
    with pytest.raises(ModelFileError, match="do not chain"):
        Reranker(converted("q8_0"), projector)


def test_concurrent_calls_equal_serial_calls(ranker_for):
    ranker = ranker_for("q8_0")
    queries = [f"query number {i}" for i in range(6)]
    serial = {q: ranker.score(q, DOCS).scores for q in queries}
    results, errors = {}, []

    def work(q):
        try:
            results[q] = ranker.score(q, DOCS).scores
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(q,)) for q in queries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for q in queries:
        np.testing.assert_array_equal(results[q], serial[q])


CLOSED = "Reranker .* was closed; create a new Reranker"


def test_every_call_after_close_raises_a_closed_error(converted):
    ranker = Reranker(converted("q8_0"), n_threads=2)
    engine = ranker.engine
    assert not ranker.closed
    ranker.close()
    assert ranker.closed
    calls = [lambda: ranker.rerank("q", ["a"]), lambda: ranker.rerank("q", []),
             lambda: ranker.score("q", ["a"]), lambda: ranker.score("q", []),
             lambda: ranker.count_tokens("a")]
    for call in calls:
        with pytest.raises(RerankerClosedError, match=CLOSED):
            call()
    with pytest.raises(RerankerClosedError, match=CLOSED):
        with ranker:
            pass
    ranker.close()  # idempotent
    # The engine, used directly, refuses too rather than touch its freed model.
    engine_calls = [lambda: engine.tokenize("a"), lambda: engine.detokenize([64]),
                    lambda: engine.special_token_id("<|im_end|>"),
                    lambda: engine.hidden_states([64, 65], [1])]
    for call in engine_calls:
        with pytest.raises(RerankerClosedError, match="LlamaEngine on .* was closed"):
            call()
    engine.close()
    assert issubclass(RerankerClosedError, RerankerError)


def test_a_with_block_closes_the_reranker_even_on_an_error(converted):
    with Reranker(converted("q8_0"), n_threads=2) as ranker:
        assert len(ranker.rerank("q", ["a", "b"])) == 2
    with pytest.raises(RerankerClosedError, match=CLOSED):
        ranker.rerank("q", ["a"])
    with pytest.raises(KeyError):
        with Reranker(converted("q8_0"), n_threads=2) as ranker:
            raise KeyError("the caller's own error")
    with pytest.raises(RerankerClosedError, match=CLOSED):
        ranker.count_tokens("a")


CLOSE_DURING_RERANK = """
import json, sys, threading, time
from reranker import Reranker, RerankerClosedError

ranker = Reranker(sys.argv[1], n_threads=1)
engine, events = ranker.engine, []
inside = threading.Event()
decode = engine.hidden_states

def slow_decode(*args):
    inside.set()
    time.sleep(0.5)  # close() is called in the meantime
    return decode(*args)
engine.hidden_states = slow_decode

def work():
    events.append(["rerank returned", len(ranker.rerank("q", ["alpha", "beta"]))])

thread = threading.Thread(target=work)
thread.start()
inside.wait()
ranker.close()
events.append(["close returned", None])
thread.join()
try:
    ranker.rerank("q", ["alpha"])
except RerankerClosedError as error:
    events.append(["next call raised", str(error)])
print(json.dumps(events))
"""


def test_close_waits_for_a_running_rerank(converted):
    """close() from another thread while a rerank decodes: the rerank returns its results,
    close() returns after it, the next call raises. Run in a child process, where a use of
    freed llama.cpp objects (which this once was) kills only the child."""
    child = run_python(CLOSE_DURING_RERANK, converted("q8_0"))
    assert child.returncode == 0, child.stderr[-2000:]
    events = json.loads(child.stdout.splitlines()[-1])
    assert [e[0] for e in events] == ["rerank returned", "close returned", "next call raised"]
    assert events[0][1] == 2
    assert "was closed; create a new Reranker" in events[2][1]


CLOSE_AT_RANDOM_POINTS = """
import random, sys, threading, time
from reranker import Reranker, RerankerClosedError

random.seed(0)
for attempt in range(8):
    ranker = Reranker(sys.argv[1], n_threads=1)
    engine, outcomes = ranker.engine, []

    def loop(call):
        try:
            for _ in range(10_000):
                call()
        except RerankerClosedError:
            outcomes.append("closed")
    workers = [threading.Thread(target=loop, args=(call,)) for call in (
        lambda: ranker.rerank("q", ["alpha " * 40, "beta", "gamma " * 20]),
        lambda: ranker.count_tokens("some text to count"),
        lambda: engine.detokenize(engine.tokenize("straight to the engine")))]
    for w in workers:
        w.start()
    time.sleep(random.uniform(0.0, 0.3))
    ranker.close()
    for w in workers:
        w.join()
    assert outcomes == ["closed"] * 3, outcomes
print("ok")
"""


@pytest.mark.slow  # eight model loads in a child process
def test_close_at_any_point_of_concurrent_calls_never_crashes(converted):
    """Three threads call the Reranker and its engine in a loop while close() comes at a
    random moment, eight times: each loop must end with RerankerClosedError, never a crash.
    Run in a child process so that a segfault fails this test instead of killing pytest."""
    child = run_python(CLOSE_AT_RANDOM_POINTS, converted("q8_0"))
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    assert child.stdout.strip() == "ok"


def test_llama_cpp_logs_are_silent_by_default(converted, capfd):
    with Reranker(converted("q8_0"), n_threads=2) as ranker:
        ranker.rerank("q", ["a"])
    captured = capfd.readouterr()
    assert "llama_model_loader" not in captured.err + captured.out


def test_the_shared_prompt_prefix_is_reused_without_changing_scores(converted):
    # Long enough that more than 64 tokens follow the first document's marker (the
    # engine always decodes at least that many).
    docs = ["alpha beta " * 10, "gamma delta " * 10, "epsilon " * 10]
    with Reranker(converted("f32"), n_threads=2) as warm:
        warm.score("first query", docs)
        second = warm.score("second query", docs).scores
        reused = warm.engine.reused_tokens
        again = warm.score("second query", docs).scores
        reused_again = warm.engine.reused_tokens
    with Reranker(converted("f32"), n_threads=2) as cold:
        fresh = cold.score("second query", docs).scores
        assert cold.engine.reused_tokens == 0
    assert 50 < reused < reused_again  # the system message, then up to the first document
    np.testing.assert_allclose(second, fresh, atol=1e-6, rtol=0)
    np.testing.assert_allclose(again, fresh, atol=1e-6, rtol=0)


def test_mapped_and_read_weights_score_alike(converted):
    # The default reads the weights; use_mmap maps the file: the same tensors either way.
    docs = ["Paris is the capital of France.", "Berlin is in Germany.", "A recipe for bread."]
    with Reranker(converted("q4_k_m"), n_threads=2, use_mmap=True) as mapped:
        got = mapped.score("capital of France", docs).scores
    with Reranker(converted("q4_k_m"), n_threads=2) as read:
        expected = read.score("capital of France", docs).scores
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_tokens_after_the_last_marker_are_not_decoded(converted):
    # Attention is causal: the template's closing tokens after the query marker cannot
    # change any marker's state (parity with transformers, which reads the whole prompt,
    # is in test_parity.py), so the engine stops decoding at the last marker.
    with Reranker(converted("f32"), n_threads=2) as ranker:
        scored = ranker.score("q", ["alpha", "beta"])
        engine = ranker.engine
        decoded = engine.reused_tokens + engine.decoded_tokens
        assert 0 < decoded < scored.total_tokens
        ids = engine.tokenize("one two three four five six seven eight nine")
        whole = engine.hidden_states(ids, [2, 5])
        assert engine.reused_tokens + engine.decoded_tokens == 6
        engine.reset_cache()  # decode the cut prompt from scratch
        np.testing.assert_array_equal(engine.hidden_states(ids[:6], [2, 5]), whole)


@pytest.mark.parametrize("positions", [[3, 2], [1, 1], [99], [-1]])
def test_bad_positions_are_an_error_not_a_crash(ranker_for, positions):
    engine = ranker_for("q8_0").engine
    ids = engine.tokenize("one two three four five")
    with pytest.raises(ValueError, match="position"):
        engine.hidden_states(ids, positions)
    assert engine.hidden_states(ids, [4]).shape == (1, engine.hidden_size)


def test_micro_batch_boundaries_and_cache_state_do_not_change_scores(converted):
    # llama.cpp's flash attention computes a micro-batch of fewer than 64 rows with a less
    # precise kernel than larger ones. The engine decodes in slices of at least 64 tokens,
    # so a prompt just past one micro-batch, and a request whose shared prefix came from the
    # cache, give the same bits as a single fresh micro-batch.
    with Reranker(converted("f32"), n_threads=2, flash_attention=True) as sliced, \
            Reranker(converted("f32"), n_threads=2, flash_attention=True,
                     n_ubatch=1024) as whole:
        words = 300
        while True:  # a prompt 1-63 tokens longer than the 512-token micro-batch
            docs = ["word " * words, "another document"]
            if 0 < sliced.plan("q", docs).blocks[0].decode_length % 512 < 64:
                break
            words += 7
        expected = whole.score("q", docs).scores
        np.testing.assert_array_equal(sliced.score("q", docs).scores, expected)
        short = ["alpha", "", "beta gamma"]
        fresh = sliced.score("q", short).scores
        again = sliced.score("q", short).scores
        assert sliced.engine.reused_tokens > 0
        np.testing.assert_array_equal(again, fresh)


@pytest.mark.parametrize("start,stop,most", [(0, 530, 512), (0, 513, 512), (117, 2321, 512),
                                             (0, 64, 512), (0, 10, 512), (5, 1100, 256),
                                             (0, 100, 32)])
def test_decode_slices_cover_the_prompt_within_one_micro_batch_each(start, stop, most):
    from reranker.engine import _slices

    slices = _slices(start, stop, most)
    assert slices[0][0] == start and slices[-1][1] == stop
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
    assert all(0 < b - a <= most for a, b in slices)
    if len(slices) > 1 and most >= 64:
        assert min(b - a for a, b in slices) >= 64


@pytest.mark.parametrize("name", LONG_TOKENS)
@pytest.mark.slow  # the transformers reference
def test_truncating_long_tokens_keeps_a_prefix_of_the_text(ranker_for, reference, name):
    """A cut text is the published cut (tokenizers' decode of the first ids), never "".

    Each text averages over 16 bytes a token, more than the first buffer llama_detokenize
    is given, so every cut at 512 and 2,048 tokens goes through llama.cpp's "buffer too
    small" answer. Re-tokenizing a cut gives the limit within two tokens, not always
    exactly, because BPE of a cut text is not the cut of the text's BPE: a whitespace run
    whose last space belonged to the next word merges back into one token (one fewer),
    and a character cut between its byte tokens decodes to U+FFFD, which is a token of
    its own or merges with a space before it (one more or up to two fewer).
    """
    ranker = ranker_for("q8_0")
    engine = ranker.engine
    text = LONG_TOKENS[name]
    ids = engine.tokenize(text)
    assert ids == reference.tokenizer.encode(text).ids and len(ids) > 2048
    for limit in [*range(1, 150), 511, 512, 2047, 2048]:
        cut = engine.detokenize(ids[:limit])
        assert cut == reference.tokenizer.decode(ids[:limit], skip_special_tokens=False)
        assert cut and text.startswith(cut.removesuffix("\ufffd"))
        assert abs(len(engine.tokenize(cut)) - limit) <= 2, (limit, cut[-20:])
    assert len(engine.detokenize(ids[:512]).encode()) > 16 * 512
    # And through the Reranker's own limits, as a query and as a document.
    plan = ranker.plan(text, [text])
    assert (plan.query_tokens, plan.document_tokens) == (ranker.max_query_tokens,
                                                         (ranker.max_doc_tokens,))
    cut_query, _ = reference._truncate(text, ranker.max_query_tokens)
    cut_doc, _ = reference._truncate(text, ranker.max_doc_tokens)
    assert list(plan.blocks[0].token_ids) == reference.prompt_ids(cut_query, [cut_doc])


@pytest.mark.slow  # the transformers reference
def test_a_long_token_document_is_scored_on_its_text(ranker_for, reference):
    # Before llama.cpp's "buffer too small" answer was heeded, this document was scored as "".
    ranker = ranker_for("f32")
    rule = LONG_TOKENS["rules between CJK"]
    cut, _ = reference._truncate(rule, ranker.max_doc_tokens)
    scored, expected, empty = (ranker.score("q", [doc, "short"]).scores for doc in (rule, cut, ""))
    np.testing.assert_allclose(scored, expected, atol=1e-6, rtol=0)
    assert np.abs(scored - empty).max() > 1e-3


@pytest.mark.parametrize("needed", [1, 17, 4096])
def test_a_buffer_too_small_is_grown_to_what_llama_cpp_asks(needed):
    # llama_tokenize and llama_detokenize answer -(size needed) and write a partial
    # answer; byte-level BPE never makes tokenize do it, so the protocol is tested here.
    from reranker.engine import _fill

    sizes = []

    def call(capacity):
        sizes.append(capacity)
        return (needed if capacity >= needed else -needed), bytearray(capacity)
    n, buf = _fill(call, 16, "llama_detokenize")
    assert n == needed and len(buf) >= needed
    assert sizes == ([16] if needed <= 16 else [16, needed])


def test_a_buffer_that_never_fits_is_an_error_not_a_partial_answer():
    from reranker.engine import _fill

    with pytest.raises(RerankerError, match="llama_tokenize asked for 10 entries"):
        _fill(lambda capacity: (-capacity - 1, bytearray(capacity)), 8, "llama_tokenize")


def test_a_model_path_that_is_not_utf8_loads(converted, tmp_path):
    """File names are bytes on Linux; one that is not UTF-8 must still reach llama.cpp."""
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/mod\xe8les"))
    folder.mkdir()
    target = folder / "tiny.gguf"
    os.link(converted("q8_0"), target)
    with Reranker(target, n_threads=2) as ranker:
        assert ranker.score("q", ["a", "b"]).scores.shape == (2,)
