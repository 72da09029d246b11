"""The engine's public operations for benchmarks and tests (no private state set from outside),
and plans built by hand being checked before they are scored."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reranker import Reranker, RerankerClosedError

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["word " * 200, "another document about harbours", "w " * 150]


def test_reset_cache_makes_the_next_call_decode_from_scratch(ranker_for):
    ranker = ranker_for("f32")
    block = ranker.plan("q", DOCS).blocks[0]
    ids, positions = list(block.token_ids), block.marker_positions
    engine = ranker.engine
    first = engine.hidden_states(ids, positions)
    again = engine.hidden_states(ids, positions)
    assert engine.reused_tokens > 0
    engine.reset_cache()
    fresh = engine.hidden_states(ids, positions)
    assert engine.reused_tokens == 0 and engine.decoded_tokens == block.decode_length
    np.testing.assert_array_equal(fresh, first)
    np.testing.assert_array_equal(again, first)


def test_configure_context_recreates_the_context_at_the_new_micro_batch(converted):
    """The states do not depend on the micro-batch size (slices of at least 64 tokens, see
    engine.py), so what shows the new context is the cache: a warm one is gone after it."""
    with Reranker(converted("f32"), n_threads=1) as default, \
            Reranker(converted("f32"), n_threads=1, n_ubatch=128) as made:
        block = default.plan("q", DOCS).blocks[0]
        assert block.decode_length > 2 * 128  # several micro-batches at 128, one at 512
        ids, positions = list(block.token_ids), block.marker_positions
        expected = made.engine.hidden_states(ids, positions)
        engine = default.engine
        engine.hidden_states(ids, positions)
        engine.hidden_states(ids, positions)
        assert engine.reused_tokens > 0  # warm
        engine.configure_context(n_ubatch=128, n_tokens=len(ids))
        assert engine.n_ubatch == 128
        got = engine.hidden_states(ids, positions)
        assert engine.reused_tokens == 0  # the old context's cache went with it
        np.testing.assert_array_equal(got, expected)
        # And the Reranker on top scores with it as the other does.
        np.testing.assert_array_equal(default.score("q", DOCS).scores,
                                      made.score("q", DOCS).scores)


@pytest.mark.parametrize("options,named", [
    ({"n_ubatch": 0}, "n_ubatch"), ({"n_ubatch": True}, "n_ubatch"),
    ({"n_ubatch": "512"}, "n_ubatch"), ({"n_ubatch": 64, "n_tokens": 0}, "n_tokens"),
    ({"n_ubatch": 64, "n_tokens": 10**9}, "n_tokens"), ({"n_ubatch": 64, "n_tokens": 2.5}, "n_tokens"),
])
def test_configure_context_refuses_bad_values_and_keeps_working(ranker_for, options, named):
    ranker = ranker_for("q8_0")
    with pytest.raises(ValueError, match=named):
        ranker.engine.configure_context(**options)
    assert ranker.engine.n_ubatch == 512
    assert len(ranker.rerank("q", ["a", "b"])) == 2


def test_a_closed_engine_refuses_its_public_operations(converted):
    ranker = Reranker(converted("q8_0"), n_threads=1)
    engine = ranker.engine
    ranker.close()
    for call in (engine.reset_cache, lambda: engine.configure_context(n_ubatch=64),
                 lambda: engine.llama_model):
        with pytest.raises(RerankerClosedError, match="LlamaEngine on .* was closed"):
            call()


def test_a_plan_that_leaves_out_or_repeats_a_document_is_refused(ranker_for):
    ranker = ranker_for("q8_0")
    plan = ranker.plan("q", ["a", "b", "c"], instruction="x")
    block = plan.blocks[0]
    with pytest.raises(ValueError, match="must hold 0..3 once each"):
        dataclasses.replace(plan, document_tokens=plan.document_tokens + (1,))
    with pytest.raises(ValueError, match="must hold 0..2 once each"):
        dataclasses.replace(plan, blocks=(block, block))
    shifted = dataclasses.replace(block, query_position=len(block.token_ids))
    with pytest.raises(ValueError, match="block 0 .* 3 documents but markers at"):
        dataclasses.replace(plan, blocks=(shifted,))
    unordered = dataclasses.replace(block, doc_positions=block.doc_positions[::-1])
    with pytest.raises(ValueError, match="block 0"):
        dataclasses.replace(plan, blocks=(unordered,))
    assert ranker.score_plan(plan).scores.shape == (3,)


def test_bench_interleaved_runs_on_the_public_operations(converted):
    """The script that once set engine.n_ubatch and called _free_context/_ensure_context."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_interleaved.py"),
                           str(converted("q8_0")), "--docs", "3", "--words", "20", "--rounds",
                           "1", "--threads", "1", "--ubatch", "128"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("round 1: ") and all(f"{name} " in last
                                                for name in ("markers", "last", "raw", "u128"))
