"""`Reranker.plan`: the one place a request's prompts are computed.

Expected ids come from the reference (Hugging Face `tokenizers` on the published prompt
string), never from the planner; real llama.cpp tokenizes throughout.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from reranker import InputTooLongError, Reranker
from reranker.scoring_plan import PlanLimits, PromptPlanner, ScoringPlan
from texts import MULTILINGUAL

DOC_ID, QUERY_ID = 151670, 151671  # <|embed_token|>, <|rerank_token|> in the Qwen3 vocabulary

# Documents whose first characters decide whether their own tokens are the tokens they
# get inside the prompt (after the template's `">\n`): line breaks join that piece.
EDGES = ["\nstarts with a newline", "\r\nwindows line", "\n\n\ntwo more", "\r", "\n",
         " leading space", "  two spaces", "\tTab", "'s contraction", "!punctuation",
         "123 digits", "\u0301combining first", "\u2028line separator", "\x0bvertical tab",
         ">\nlooks like the template", "ends with a newline\n", "<|embed_token|>marker first",
         "x<|rerank_token|>", "\ufeffbyte-order mark", "👍 emoji"]


def _published(reference, query, docs, instruction=None):
    return reference.prompt_ids(query, docs, instruction)


@pytest.mark.parametrize("instruction", [None, "Prefer recent passages.", "\nodd\r\n"])
def test_one_block_is_the_published_prompt(ranker_for, reference, instruction):
    ranker = ranker_for("q8_0")
    query = "Which city is the capital?"
    docs = EDGES + MULTILINGUAL
    plan = ranker.plan(query, docs, instruction=instruction)
    assert isinstance(plan, ScoringPlan) and len(plan.blocks) == 1
    block = plan.blocks[0]
    ids = list(block.token_ids)
    assert ids == _published(reference, query, docs, instruction)
    assert block.documents == tuple(range(len(docs)))
    # The markers are where the engine reads: each document's, then the query's, last.
    assert [i for i, t in enumerate(ids) if t == DOC_ID] == list(block.doc_positions)
    assert [i for i, t in enumerate(ids) if t == QUERY_ID] == [block.query_position]
    assert block.marker_positions == [*block.doc_positions, block.query_position]
    assert block.decode_length == block.query_position + 1 < len(ids)
    assert plan.total_tokens == len(ids)


def test_each_document_starting_with_a_line_break_alone(ranker_for, reference):
    # One document per prompt, so each edge is the first passage and the last.
    ranker = ranker_for("q8_0")
    for doc in EDGES:
        assert list(ranker.plan("q?", [doc]).blocks[0].token_ids) == \
            _published(reference, "q?", [doc]), repr(doc)


def test_token_counts_are_after_marker_removal_and_truncation(converted, reference):
    with Reranker(converted("q8_0"), n_threads=1, max_query_tokens=8,
                  max_doc_tokens=12) as ranker:
        query = "a query long enough to be cut at eight tokens, surely"
        docs = ["short", "<|embed_token|>" * 40 + "tiny", "word " * 50, "北京" * 30, ""]
        plan = ranker.plan(query, docs)
        cut_query, query_tokens = reference._truncate(query, 8)
        cut = [reference._truncate(d.replace("<|embed_token|>", ""), 12) for d in docs]
        assert plan.query_tokens == query_tokens == 8
        assert plan.document_tokens == tuple(length for _, length in cut)
        assert plan.document_tokens[2:4] == (12, 12)
        assert plan.input_tokens == 8 + sum(length for _, length in cut)
        ids = [t for block in plan.blocks for t in block.token_ids]
        assert ids == _published(reference, cut_query, [text for text, _ in cut])
        # The scores are those of the plan: score() decodes exactly this.
        np.testing.assert_array_equal(ranker.score(query, docs).scores,
                                      ranker.score_plan(plan).scores)


def test_blocks_that_do_not_fit_the_context_are_halved(converted, reference):
    docs = [f"document {i} " + "text " * 30 for i in range(20)]
    with Reranker(converted("q8_0"), n_threads=1, max_context=512) as capped:
        plan = capped.plan("q", docs)
        assert len(plan.blocks) > 1
        assert [i for b in plan.blocks for i in b.documents] == list(range(20))
        for block in plan.blocks:
            assert block.decode_length <= 512
            assert list(block.token_ids) == _published(reference, "q",
                                                       [docs[i] for i in block.documents])
        sizes = [len(b.documents) for b in plan.blocks]
        assert max(sizes) - min(sizes) <= 1 or sizes == sorted(sizes, reverse=True)
        assert capped.score_plan(plan).blocks == len(plan.blocks)
        with pytest.raises(InputTooLongError, match="document 1 .* capped at 512"):
            capped.plan("q", ["a", "word " * 600])


def test_each_document_is_tokenized_once(ranker_for):
    """A wrapper around the real engine records every text handed to the tokenizer."""
    engine = ranker_for("q8_0").engine
    seen: list[str] = []

    class Counting:
        max_context = engine.max_context

        def tokenize(self, text):
            seen.append(text)
            return engine.tokenize(text)

        def detokenize(self, tokens):
            return engine.detokenize(tokens)

        def special_token_id(self, text):
            return engine.special_token_id(text)

    planner = PromptPlanner(Counting(), PlanLimits(max_query_tokens=512, max_doc_tokens=2048,
                                                   block_size=3, block_tokens=131072))
    docs = [f"distinct document number {i} about harbours" for i in range(7)]
    plan = planner.plan("harbour city", docs)
    assert len(plan.blocks) == 3  # block_size 3: the query is planned into each block
    for doc in docs:
        assert sum(doc in text for text in seen) == 1, doc


def test_benchmark_prompts_are_the_plans(converted):
    """scripts/bench.py times what Reranker.score decodes (it once had its own copy,
    without marker removal, truncation or halving). Loaded from its file: not a package."""
    path = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
    spec = importlib.util.spec_from_file_location("bench_under_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    docs = ["<|embed_token|> marked", "word " * 80, "plain"] * 4
    with Reranker(converted("q8_0"), n_threads=1, max_doc_tokens=40, max_context=256) as ranker:
        plan = ranker.plan("query <|rerank_token|>", docs)
        assert len(plan.blocks) > 1  # halved to fit the 256-token context
        expected = [(list(b.token_ids), b.marker_positions) for b in plan.blocks]
        assert bench._blocks_of(ranker, "query <|rerank_token|>", docs) == expected


def test_plan_refuses_bad_input_as_score_does(ranker_for):
    ranker = ranker_for("q8_0")
    with pytest.raises(TypeError, match="query is bytes"):
        ranker.plan(b"q", ["a"])
    with pytest.raises(TypeError, match="documents is str"):
        ranker.plan("q", "a")
    with pytest.raises(TypeError, match="instruction is int"):
        ranker.plan("q", ["a"], instruction=3)
    with pytest.raises(TypeError, match="plan is dict; expected a ScoringPlan"):
        ranker.score_plan({"blocks": []})
    with pytest.raises(TypeError, match="text is NoneType"):
        ranker.count_tokens(None)
    empty = ranker.plan("q", [])
    assert empty.blocks == () and empty.input_tokens == ranker.count_tokens("q")
    assert ranker.score_plan(empty).scores.shape == (0,)


def test_a_closed_reranker_refuses_to_plan(converted):
    ranker = Reranker(converted("q8_0"), n_threads=1)
    plan = ranker.plan("q", ["a"])
    ranker.close()
    for call in (lambda: ranker.plan("q", ["a"]), lambda: ranker.score_plan(plan)):
        with pytest.raises(Exception, match="was closed"):
            call()
