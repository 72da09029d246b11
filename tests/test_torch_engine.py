"""The PyTorch engine on the same GGUF, and the choice between engines.

Parity is against transformers' own Qwen3Model (tests/reference.py) on the same
weights; the bf16 engine is held to the ranking, as the llama.cpp q8_0 test is. The
only stand-ins: doctor's timings are replaced by chosen numbers where a test needs a
given winner (which engine is faster on a tiny model under a shared CPU is not a fact
a test can rely on), and verdicts are written by hand to test the pure choice.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from reranker import Reranker
from reranker import torch_engine
from reranker.cli.main import cli
from reranker.cpu_path import CpuPathError
from reranker.cpu_support import CpuInfo, read_cpu_info
from reranker.engine_choice import (ENGINES, ROUTED, TIMED_REQUESTS, Engine, EngineError,
                                    EngineVerdict, auto_engine, choose_engine,
                                    load_engine_verdict, model_fingerprint,
                                    resolve_engine, save_engine_verdict)
from reranker.errors import (InputTooLongError, ModelFileError, RerankerCancelled,
                             RerankerClosedError, RerankerError)
from reranker.gguf_metadata import GGUFMetadata, read_metadata
from reranker.torch_engine import BackboneShape, TorchEngine, choose_dtype
from reranker.torch_weights import GGUFWeights, Q8Matrix, UnsupportedTensorTypeError
from gguf_files import write_gguf
from processes import run_python
from test_parity import QUERY, SIXTEEN, assert_same_ranking
from texts import MULTILINGUAL

INSTRUCTION = "Rank passages about rivers first."


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """A fresh verdict cache and no engine override for this test."""
    monkeypatch.setenv("RERANKER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RERANKER_ENGINE", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def f32_engine(converted):
    engine = TorchEngine(converted("f32"), n_threads=2, dtype="float32")
    yield engine
    engine.close()


def cpu_flags(*flags: str) -> CpuInfo:
    """This CPU with other flags: the stand-in for a CPU with (or without) bf16 units,
    which decides only the torch engine's dtype, so both dtypes are tested anywhere."""
    return dataclasses.replace(read_cpu_info(), flags=frozenset(flags))


@pytest.fixture(scope="module")
def torch_ranker_for(converted):
    """torch_ranker_for(type, native_bf16=True) -> a Reranker with engine="torch", on a
    CPU with bf16 units (bf16 compute) or without (float32 compute); one per pair."""
    opened: dict[tuple[str, bool], Reranker] = {}

    def get(type_name: str, native_bf16: bool = True) -> Reranker:
        if (type_name, native_bf16) not in opened:
            flags = ("avx2", "avx512_bf16") if native_bf16 else ("avx2", "fma")
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(torch_engine, "read_cpu_info", lambda: cpu_flags(*flags))
                opened[type_name, native_bf16] = Reranker(converted(type_name), n_threads=2,
                                                          engine="torch")
        return opened[type_name, native_bf16]
    yield get
    for ranker in opened.values():
        ranker.close()


def reference_states(reference, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return reference.model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()


# -- parity ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["one", "sixteen", "multilingual", "instruction"])
def test_float32_hidden_states_match_transformers(f32_engine, reference, case):
    docs = {"one": SIXTEEN[:1], "sixteen": SIXTEEN, "multilingual": MULTILINGUAL,
            "instruction": SIXTEEN}[case]
    ids = reference.prompt_ids(QUERY, docs, INSTRUCTION if case == "instruction" else None)
    markers = [i for i, t in enumerate(ids) if t in (reference.doc_id, reference.query_id)]
    assert len(markers) == len(docs) + 1
    expected = reference_states(reference, ids)
    np.testing.assert_allclose(f32_engine.hidden_states(ids, markers), expected[markers],
                               atol=1e-4, rtol=0)


def test_every_row_up_to_the_last_position_matches(f32_engine, reference):
    """Rows before the last layer's trimming and rows at arbitrary positions, not just
    markers: the last layer's row selection must keep causality for any position."""
    ids = reference.prompt_ids(QUERY, SIXTEEN[:3])
    positions = [0, 1, 7, 40, len(ids) // 2, len(ids) - 1]
    expected = reference_states(reference, ids)
    np.testing.assert_allclose(f32_engine.hidden_states(ids, positions), expected[positions],
                               atol=1e-4, rtol=0)


def test_tokens_after_the_last_position_are_not_computed(f32_engine, reference):
    ids = reference.prompt_ids(QUERY, SIXTEEN[:2])
    positions = [5, 30]
    alone = f32_engine.hidden_states(ids[:31], positions)
    assert f32_engine.decoded_tokens == 31
    followed = f32_engine.hidden_states(ids[:31] + [999999] * 5, positions)  # never read
    assert f32_engine.decoded_tokens == 31
    np.testing.assert_array_equal(alone, followed)


def test_float32_scores_match_transformers(torch_ranker_for, reference):
    ranker = torch_ranker_for("f32")  # float32 even where bf16 is native: the file is exact
    assert ranker.engine.name == "torch" and ranker.engine.dtype == torch.float32
    docs = SIXTEEN + MULTILINGUAL
    np.testing.assert_allclose(ranker.score(QUERY, docs, instruction=INSTRUCTION).scores,
                               reference.scores(QUERY, docs, INSTRUCTION), atol=1e-4, rtol=0)


@pytest.mark.parametrize("type_name", ["bf16", "f16", "q8_0"])
def test_bf16_engine_keeps_the_ranking(torch_ranker_for, ranker_for, reference, type_name):
    """bf16 weights and activations: the ranking of transformers float32 (pairs it
    separates by more than 1e-2, as llama.cpp's q8_0 is held) and of llama.cpp."""
    ranker = torch_ranker_for(type_name)
    assert ranker.engine.dtype == torch.bfloat16
    docs = SIXTEEN + MULTILINGUAL
    ours = ranker.score(QUERY, docs).scores
    expected = reference.scores(QUERY, docs)
    separated = sum(expected[i] - expected[j] > 1e-2 for i in range(len(docs))
                    for j in range(len(docs)))
    assert separated > 50  # the case constrains the ranking
    assert np.abs(ours - expected).max() < 1e-2
    assert_same_ranking(ours, expected, margin=1e-2)
    llama = ranker_for(type_name).score(QUERY, docs).scores
    assert_same_ranking(ours, llama, margin=1e-2)


def test_without_bf16_units_a_quantized_file_runs_in_float32(torch_ranker_for, ranker_for,
                                                             reference):
    """On a CPU without bf16 products (AVX2) the q8_0 file runs in float32 (its matrices
    kept as stored), so the scores sit within q8_0's own error of transformers'."""
    ranker = torch_ranker_for("q8_0", native_bf16=False)
    assert ranker.engine.dtype == torch.float32 and "no native bf16" in ranker.engine.dtype_reason
    # kept as stored between calls (int8 and a scale per 32), widened per matrix
    assert isinstance(ranker.engine._layers[0].down, Q8Matrix)
    docs = SIXTEEN + MULTILINGUAL
    ours = ranker.score(QUERY, docs).scores
    bf16 = torch_ranker_for("q8_0").score(QUERY, docs).scores
    expected = reference.scores(QUERY, docs)
    assert np.abs(ours - expected).max() < 1e-2
    assert_same_ranking(ours, expected, margin=1e-2)
    # float32 activations are closer to llama.cpp's q8_0 than bf16 ones are
    llama = ranker_for("q8_0").score(QUERY, docs).scores
    assert np.abs(ours - llama).max() <= np.abs(bf16 - llama).max()


@pytest.mark.parametrize("type_name, kept", [("f32", torch.float32), ("bf16", torch.bfloat16),
                                             ("f16", torch.float16), ("q4_k_m", torch.float16),
                                             ("q8_0", torch.int8)])
def test_float32_compute_keeps_matrices_in_the_files_precision(converted, type_name, kept):
    """float32 compute keeps an f32 file in float32, a bf16 file's matrices bit for bit in
    bf16, q8_0 ones as stored (int8 and scales), the rest in float16; what a call widens
    them to is the file's values (q4_k_m: dequantized, then rounded to float16, 2^-11 of
    each value at most; the others exactly)."""
    engine = TorchEngine(converted(type_name), n_threads=1, dtype="float32")
    try:
        matrix = engine._layers[1].v
        assert matrix.dtype == kept
        widened = (matrix.widened(torch.float32) if isinstance(matrix, Q8Matrix)
                   else matrix.float())
        exact = GGUFWeights(read_metadata(converted(type_name))).tensor(
            "blk.1.attn_v.weight", torch.float32, tuple(matrix.shape))
        np.testing.assert_allclose(widened.numpy(), exact.numpy(),
                                   rtol=2.0 ** -11 if kept == torch.float16 else 0, atol=0)
    finally:
        engine.close()


def test_q8_0_matrices_as_stored_give_the_float16_stored_hidden_states(converted):
    """The same q8_0 file with its matrices kept as stored and kept in float16: the
    hidden states differ only by float16's rounding of the weights."""
    ids = list(range(1000, 1300))
    positions = [10, 150, 299]
    engine = TorchEngine(converted("q8_0"), n_threads=1, dtype="float32")
    try:
        assert isinstance(engine._layers[0].q, Q8Matrix)
        as_stored = engine.hidden_states(ids, positions)
        for layer in engine._layers:  # the float16 copies of the very same values
            for part in ("q", "k", "v", "out", "gate", "up", "down"):
                setattr(layer, part, getattr(layer, part).widened(torch.float16))
        in_float16 = engine.hidden_states(ids, positions)
    finally:
        engine.close()
    scale = np.abs(as_stored).max()
    assert 0 < np.abs(as_stored - in_float16).max() < 1e-2 * scale


def test_q8_0_is_dequantized_as_gguf_py_does(converted):
    """The torch engine's own q8_0 dequantizer (gguf-py's was half the load time) gives
    gguf-py's values bit for bit, on the file's matrices and embedding rows."""
    from gguf.quants import dequantize

    weights = GGUFWeights(read_metadata(converted("q8_0")))
    infos = {t.name: t for t in weights.metadata.tensors}
    for name, shape in [("blk.0.ffn_down.weight", (256, 512)), ("blk.1.attn_k.weight", (128, 256))]:
        raw, qtype = weights._raw(infos[name])
        assert qtype == gguf.GGMLQuantizationType.Q8_0
        np.testing.assert_array_equal(weights.tensor(name, torch.float32, shape).numpy(),
                                      dequantize(raw, qtype).reshape(shape))
    embedding = weights.quantized_rows("token_embd.weight", (151936, 256))
    index = np.array([0, 7, 151935])
    np.testing.assert_array_equal(embedding.rows(index, torch.float32).numpy(),
                                  dequantize(embedding.raw[index], embedding.qtype).reshape(3, 256))


def test_weights_dtype_follows_the_file_and_the_cpu():
    assert choose_dtype(True, frozenset({"amx_bf16", "avx512_bf16"}))[0] == "float32"
    assert choose_dtype(False, frozenset({"amx_tile", "amx_bf16"})) == (
        "bfloat16", "this CPU multiplies bf16 natively (amx_bf16)")
    assert choose_dtype(False, frozenset({"avx512f", "avx512_bf16"}))[0] == "bfloat16"
    for flags in [frozenset(), frozenset({"avx2", "fma"}), frozenset({"avx512f", "avx512_vnni"})]:
        dtype, why = choose_dtype(False, flags)
        assert dtype == "float32" and "no native bf16" in why, flags


@pytest.mark.parametrize("via_float32", [False, True])
def test_the_benchmarks_transformers_bf16_baseline_is_the_reference_model(
        tiny_checkpoint, reference, via_float32):
    """scripts/bench_engines.py's bf16 baselines (from_pretrained, straight or through
    float32) score what the float32 reference scores, within bf16's error: the speed
    they are compared at is this model's."""
    from transformers import Qwen3Model

    from reranker.testing.reference import ReferenceReranker

    loaded = Qwen3Model.from_pretrained(tiny_checkpoint,
                                        dtype=torch.float32 if via_float32 else torch.bfloat16)
    baseline = ReferenceReranker(tiny_checkpoint, backbone=loaded.to(torch.bfloat16).eval())
    assert next(baseline.model.parameters()).dtype == torch.bfloat16
    docs = SIXTEEN + MULTILINGUAL
    with torch.inference_mode():
        ours = baseline.scores(QUERY, docs)
    expected = reference.scores(QUERY, docs)
    assert np.abs(ours - expected).max() < 1e-2
    assert_same_ranking(ours, expected, margin=1e-2)


def test_k_quants_dequantize_to_the_weights_they_were_made_from(converted, torch_ranker_for,
                                                              ranker_for):
    """q4_k_m (Q4_K and Q6_K tensors), which gguf-py dequantizes, so the torch engine
    takes it. Each matrix is within its type's quantization error of the f32 file's
    (a misread offset or row layout would be ~100% off), and the scores within 1e-2 of
    llama.cpp's on the same file. Not the ranking: llama.cpp rounds activations to 8
    bits for k-quant products (6.6e-3 apart even with float32 torch), and the tiny
    model's scores sit closer together than that."""
    quantized = GGUFWeights(read_metadata(converted("q4_k_m")))
    exact = GGUFWeights(read_metadata(converted("f32")))
    types = {t.name: gguf.GGMLQuantizationType(t.ggml_type).name
             for t in read_metadata(converted("q4_k_m")).tensors}
    for name, shape, bound in [("blk.0.attn_q.weight", (512, 256), 0.1),
                               ("blk.1.ffn_down.weight", (256, 512), 0.1),
                               ("blk.1.attn_v.weight", (128, 256), 0.03)]:
        ours = quantized.tensor(name, torch.float32, shape)
        truth = exact.tensor(name, torch.float32, shape)
        error = ((ours - truth).norm() / truth.norm()).item()
        assert types[name] in ("Q4_K", "Q6_K") and 0 < error < bound, (name, types[name], error)
    docs = SIXTEEN + MULTILINGUAL
    ours = torch_ranker_for("q4_k_m").score(QUERY, docs).scores
    llama = ranker_for("q4_k_m").score(QUERY, docs).scores
    assert np.abs(ours - llama).max() < 1e-2


def test_several_blocks_and_truncation_as_on_llama_cpp(converted, reference):
    docs = [f"document {i}: " + "word " * 40 for i in range(20)]
    with Reranker(converted("f32"), n_threads=2, block_tokens=300, max_doc_tokens=64,
                  engine="torch") as ranker:
        scored = ranker.score(QUERY, docs)
    assert scored.blocks >= 3 and scored.reused_tokens == 0
    expected = reference.scores(QUERY, docs, max_length=300, max_doc_length=64)
    np.testing.assert_allclose(scored.scores, expected, atol=1e-4, rtol=0)


# -- hostile use ---------------------------------------------------------------------------
def test_bad_requests_are_refused_as_on_llama_cpp(f32_engine):
    with pytest.raises(ValueError, match="ascending"):
        f32_engine.hidden_states([1, 2, 3], [2, 1])
    with pytest.raises(ValueError, match="outside the 3 tokens"):
        f32_engine.hidden_states([1, 2, 3], [3])
    with pytest.raises(RerankerError, match="token id -1 is outside the vocabulary"):
        f32_engine.hidden_states([1, -1, 3], [2])
    with pytest.raises(RerankerError, match="outside the vocabulary"):
        f32_engine.hidden_states([1, f32_engine.n_vocab, 3], [2])
    assert f32_engine.hidden_states([1, 2], []).shape == (0, f32_engine.hidden_size)


def test_a_prompt_longer_than_the_context_is_refused(converted):
    engine = TorchEngine(converted("f32"), n_threads=1, max_context=32, dtype="float32")
    try:
        assert engine.max_context == 32
        with pytest.raises(InputTooLongError, match="capped at 32"):
            engine.hidden_states(list(range(100, 140)), [39])
        assert engine.hidden_states(list(range(100, 132)), [31]).shape == (1, 256)
    finally:
        engine.close()


def test_should_stop_cancels_between_layers_and_the_threads_are_the_calls(f32_engine):
    before = torch.get_num_threads()
    seen = []

    def stop_at_second_layer() -> bool:
        seen.append(torch.get_num_threads())
        return len(seen) == 2
    with pytest.raises(RerankerCancelled, match="before layer 1 of 2"):
        f32_engine.hidden_states(list(range(100, 200)), [50, 99], stop_at_second_layer)
    assert seen == [2, 2]  # the engine's n_threads while it runs
    assert torch.get_num_threads() == before  # and the process's own value after
    assert f32_engine.hidden_states(list(range(100, 200)), [99]).shape == (1, 256)


def test_a_closed_engine_and_ranker_refuse_calls(converted):
    ranker = Reranker(converted("f32"), n_threads=1, engine="torch")
    ranker.close()
    ranker.close()  # idempotent
    with pytest.raises(RerankerClosedError):
        ranker.score(QUERY, ["a"])
    engine = TorchEngine(converted("f32"), n_threads=1)
    engine.close()
    with pytest.raises(RerankerClosedError):
        engine.hidden_states([1, 2], [1])
    with pytest.raises(RerankerClosedError):
        engine.tokenize("text")
    with pytest.raises(RerankerClosedError):
        engine.reset_cache()


def test_concurrent_calls_give_the_single_call_answer(torch_ranker_for):
    ranker = torch_ranker_for("f32")
    alone = ranker.score(QUERY, SIXTEEN[:4]).scores
    results, errors = [], []

    def call():
        try:
            results.append(ranker.score(QUERY, SIXTEEN[:4]).scores)
        except BaseException as error:  # reported below, not lost in the thread
            errors.append(error)
    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 3
    for scores in results:
        np.testing.assert_array_equal(scores, alone)


def test_a_type_gguf_cannot_dequantize_is_a_typed_error(tmp_path):
    """A real GGUF with a Q8_1 tensor (gguf-py has no dequantizer for it)."""
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_1]
    raw = np.zeros((4, 64 // block * size), dtype=np.uint8)
    path = write_gguf(tmp_path / "q8_1.gguf", "qwen3", lambda writer: writer.add_tensor(
        "blk.0.attn_q.weight", raw, raw_dtype=gguf.GGMLQuantizationType.Q8_1))
    weights = GGUFWeights(read_metadata(path))
    with pytest.raises(UnsupportedTensorTypeError, match="Q8_1.*q8_0, f16 or bf16"):
        weights.tensor("blk.0.attn_q.weight", torch.bfloat16, (4, 64))
    with pytest.raises(ModelFileError, match="expected \\[4, 32\\]"):
        weights.tensor("blk.0.attn_q.weight", torch.bfloat16, (4, 32))
    with pytest.raises(ModelFileError, match="no tensor blk.0.attn_k.weight"):
        weights.tensor("blk.0.attn_k.weight", torch.bfloat16, (4, 64))


def test_values_float16_cannot_hold_keep_their_tensor_in_float32(tmp_path):
    """float32 compute keeps matrices in float16; an f32 tensor with values past 65504
    stays float32 instead of becoming infinities."""
    large = np.full((4, 64), 1e-3, dtype=np.float32)
    large[2, 5] = 1e6
    as_bf16 = (large.view(np.uint32) >> 16).astype(np.uint16)  # 1e6 is 999424 in bf16

    def add_tensors(writer: gguf.GGUFWriter) -> None:
        writer.add_tensor("blk.0.attn_q.weight", large)
        writer.add_tensor("blk.0.attn_k.weight", np.full((4, 64), 0.5, dtype=np.float32))
        writer.add_tensor("blk.0.attn_v.weight", as_bf16,
                          raw_dtype=gguf.GGMLQuantizationType.BF16)
    weights = GGUFWeights(read_metadata(write_gguf(tmp_path / "large.gguf", "qwen3",
                                                   add_tensors)))
    kept = weights.tensor("blk.0.attn_q.weight", torch.float16, (4, 64))
    assert kept.dtype == torch.float32 and kept[2, 5].item() == 1e6
    assert weights.tensor("blk.0.attn_k.weight", torch.float16, (4, 64)).dtype == torch.float16
    from_bf16 = weights.tensor("blk.0.attn_v.weight", torch.float16, (4, 64))
    assert from_bf16.dtype == torch.float32 and from_bf16[2, 5].item() == 999424.0


def test_missing_or_damaged_shape_metadata_is_a_model_file_error(converted):
    meta = read_metadata(converted("f32"))
    assert BackboneShape.from_metadata(meta, 151936).heads == 8
    for damage in (None, "eight", True):
        values = dict(meta.values)
        if damage is None:
            del values["qwen3.attention.head_count"]
        else:
            values["qwen3.attention.head_count"] = damage
        broken = GGUFMetadata(meta.path, meta.version, values, meta.tensors, meta.data_offset)
        with pytest.raises(ModelFileError, match="qwen3.attention.head_count is"):
            BackboneShape.from_metadata(broken, 151936)


def test_bf16_weights_load_without_a_float32_copy(converted):
    """The bf16 file's matrices are loaded as bf16 (the file's bytes, not widened)."""
    engine = TorchEngine(converted("bf16"), n_threads=1, dtype="bfloat16")
    try:
        layer = engine._layers[0]
        assert layer.q.dtype == torch.bfloat16 and layer.down.dtype == torch.bfloat16
        assert engine._embedding.raw.dtype == np.uint8  # kept as stored, rows on demand
        table = gguf_table(converted("bf16"), "blk.0.attn_q.weight")
        np.testing.assert_array_equal(layer.q.view(torch.int16).numpy(), table)
    finally:
        engine.close()


def gguf_table(path, name) -> np.ndarray:
    tensor = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
    return np.asarray(tensor.data).view(np.int16)


# -- the choice ------------------------------------------------------------------------------
TOKENS = {"short": 327, "medium": 811, "typical": 2303}


def verdict(engine: str, fingerprint: str = "fp", threshold: int | None = None) -> EngineVerdict:
    return EngineVerdict(engine, fingerprint, timed(short=(2.0, 1.5), typical=(20.0, 10.0)),
                         {"short": 327, "typical": 2303}, "today", threshold)


def timed(**requests: tuple[float, float]) -> dict[str, dict[str, float]]:
    """doctor's seconds by request and engine, from (llama.cpp, torch) pairs."""
    return {request: {"llama.cpp": pair[0], "torch": pair[1]}
            for request, pair in requests.items()}


def test_choice_without_a_measurement_is_llama_cpp():
    chosen = choose_engine("auto", None, "fp", torch_available=True)
    assert chosen.name == "llama.cpp" and "doctor --model" in chosen.reason


def test_choice_follows_a_verdict_for_this_file():
    assert choose_engine("auto", verdict("torch"), "fp", torch_available=True).name == "torch"
    assert choose_engine("auto", verdict("llama.cpp"), "fp",
                         torch_available=True).name == "llama.cpp"
    chosen = choose_engine("auto", verdict("torch"), "fp", torch_available=True)
    assert ("327 tokens: llama.cpp 2.00 s, torch 1.50 s; 2303 tokens: llama.cpp 20.00 s, "
            "torch 10.00 s") in chosen.reason and "today" in chosen.reason
    routed = choose_engine("auto", verdict(ROUTED, threshold=800), "fp", torch_available=True)
    assert routed == Engine(ROUTED, routed.reason, 800)
    assert "llama.cpp below 800 prompt tokens, torch from there" in routed.reason


def test_a_stale_or_unusable_verdict_falls_back_to_llama_cpp():
    stale = choose_engine("auto", verdict("torch", "old"), "new", torch_available=True)
    assert stale.name == "llama.cpp" and "changed" in stale.reason
    for recorded in ("torch", ROUTED):
        no_torch = choose_engine("auto", verdict(recorded, threshold=800), "fp",
                                 torch_available=False)
        assert no_torch.name == "llama.cpp"
        assert "pip install -e '.[torch]' in this project's folder" in no_torch.reason
    unknown = choose_engine("auto", verdict("onnx"), "fp", torch_available=True)
    assert unknown.name == "llama.cpp" and "'onnx'" in unknown.reason


def test_explicit_engines_and_bad_names():
    assert choose_engine("torch", verdict("llama.cpp"), "fp",
                         torch_available=True).name == "torch"
    assert choose_engine("llama.cpp", verdict("torch"), "fp",
                         torch_available=True).name == "llama.cpp"
    with pytest.raises(EngineError,
                       match=r"needs PyTorch.*pip install -e '\.\[torch\]' in this project's"):
        choose_engine("torch", None, "fp", torch_available=False)
    with pytest.raises(EngineError, match="'fastest' \\(from option\\) is not one of"):
        choose_engine("fastest", None, "fp", torch_available=True)


def test_environment_variable_and_bad_types(converted, cache, monkeypatch):
    model = converted("f32")
    monkeypatch.setenv("RERANKER_ENGINE", "torch")
    assert resolve_engine(None, model).name == "torch"
    assert resolve_engine("llama.cpp", model).name == "llama.cpp"  # the option wins
    monkeypatch.setenv("RERANKER_ENGINE", "gpu")
    with pytest.raises(EngineError, match="from RERANKER_ENGINE"):
        resolve_engine(None, model)
    with pytest.raises(TypeError, match="engine is int"):
        Reranker(model, engine=3)


def test_a_recorded_verdict_decides_auto_until_the_file_changes(converted, cache, tmp_path):
    model = tmp_path / "copy.gguf"
    model.write_bytes(converted("f32").read_bytes())
    assert load_engine_verdict(model) is None
    save_engine_verdict(model, timed(short=(1.0, 0.5), typical=(3.0, 1.5)), TOKENS)
    assert resolve_engine(None, model).name == "torch"
    assert resolve_engine(None, converted("f32")).name == "llama.cpp"  # another file
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # replaced since
    assert model_fingerprint(model) != load_engine_verdict(model).fingerprint
    assert resolve_engine(None, model).name == "llama.cpp"


def test_torch_is_recorded_only_when_clearly_faster_on_the_longest_request():
    assert auto_engine(timed(short=(1.0, 1.0), typical=(10.0, 8.0)), TOKENS) == ("torch", None)
    assert auto_engine(timed(short=(1.0, 0.5), typical=(10.0, 9.5)), TOKENS) == \
        ("llama.cpp", None)  # within the margin on the longest
    assert auto_engine(timed(short=(1.0, 0.5), typical=(10.0, 12.0)), TOKENS) == \
        ("llama.cpp", None)
    only_llama = {"short": {"llama.cpp": 1.0}, "typical": {"llama.cpp": 10.0}}
    assert auto_engine(only_llama, TOKENS) == ("llama.cpp", None)  # torch failed or absent
    assert auto_engine({}, {}) == ("llama.cpp", None)


def test_torch_slower_on_short_requests_is_routed_from_where_it_wins():
    # As doctor measured on an AVX2 EPYC (q8_0, real size): torch 0.69x at 327 tokens,
    # 1.46x at 2,303. One engine alone would be slower on one of them: both are loaded.
    assert auto_engine(timed(short=(1.74, 2.51), typical=(31.87, 21.77)), TOKENS) == \
        (ROUTED, 2303)
    # From the shortest request on which it, and every longer one, won by the margin.
    assert auto_engine(timed(short=(1.74, 2.51), medium=(7.0, 6.0), typical=(31.87, 21.77)),
                       TOKENS) == (ROUTED, 811)
    assert auto_engine(timed(short=(1.74, 2.51), medium=(7.0, 6.7), typical=(31.87, 21.77)),
                       TOKENS) == (ROUTED, 2303)  # medium won, but within the margin
    assert auto_engine(timed(short=(1.74, 1.5), medium=(7.0, 7.5), typical=(31.87, 21.77)),
                       TOKENS) == (ROUTED, 2303)  # a slower medium: only typical's length
    assert auto_engine(timed(short=(1.74, 1.74), medium=(7.0, 7.0), typical=(31.87, 21.77)),
                       TOKENS) == ("torch", None)  # ties on short ones: one engine will do
    # The order of requests is their token counts', not the dict's.
    assert auto_engine(timed(typical=(31.87, 21.77), short=(1.74, 2.51)), TOKENS) == \
        (ROUTED, 2303)


def test_a_verdict_recorded_before_token_counts_were_kept_counts_as_none(converted, cache,
                                                                          tmp_path):
    model = tmp_path / "copy.gguf"
    model.write_bytes(converted("f32").read_bytes())
    save_engine_verdict(model, timed(short=(1.0, 0.5), typical=(3.0, 1.5)), TOKENS)
    assert load_engine_verdict(model).engine == "torch"
    verdicts = cache / "cpu-paths.json"
    records = json.loads(verdicts.read_text())
    (key,) = [key for key in records if key.startswith("engine|")]
    earlier = {name: value for name, value in records[key].items()
               if name not in ("tokens", "torch_from_tokens")}
    earlier["seconds"] = {"llama.cpp": 3.0, "torch": 1.5}  # the earlier record's shape
    routed = {**records[key], "engine": ROUTED}
    hand_edited = [{**routed, "torch_from_tokens": value} for value in
                   (float("inf"), 5.9, "5", True, 0, float("nan"))]  # 1e999 reads as inf
    hand_edited += [{**records[key], "tokens": {**records[key]["tokens"], "short": 1e999}},
                    {**records[key], "seconds": {**records[key]["seconds"],
                                                 "short": {"llama.cpp": "1", "torch": 0.5}}}]
    for broken in (earlier, routed,  # routed, no threshold
                   {**records[key], "tokens": {"short": 327}},  # a request without tokens
                   *hand_edited):  # an OverflowError traceback in every command, for inf
        verdicts.write_text(json.dumps({key: broken}))
        assert load_engine_verdict(model) is None
        chosen = resolve_engine(None, model)
        assert chosen.name == "llama.cpp" and "doctor --model" in chosen.reason


def test_an_unreadable_verdict_file_counts_as_no_measurement(converted, cache):
    cache.mkdir()
    (cache / "cpu-paths.json").write_text("{not json")
    assert resolve_engine(None, converted("f32")).name == "llama.cpp"


# -- the CLI, doctor, inspect and the server -----------------------------------------------------
def test_llama_cpp_options_are_checked_on_the_torch_engine_too(converted, cache):
    """Whether a setting is refused must not turn on what doctor recorded for auto."""
    model = converted("f32")
    with pytest.raises(CpuPathError, match="'bogus'"):
        Reranker(model, engine="torch", cpu_path="bogus")
    with pytest.raises(ValueError, match="kv_cache_type 'nonsense' is not one of"):
        Reranker(model, engine="torch", kv_cache_type="nonsense")


def test_cli_engine_option(converted, cache):
    model = str(converted("f32"))
    done = CliRunner().invoke(cli, ["rerank", "-m", model, "-q", QUERY, "--json",
                                    "--engine", "torch", *sum((["-d", d] for d in SIXTEEN[:4]),
                                                              [])])
    assert done.exit_code == 0, done.output
    ours = [r["relevance_score"] for r in sorted(json.loads(done.output)["results"],
                                                 key=lambda r: r["index"])]
    with Reranker(model, n_threads=2, engine="llama.cpp") as ranker:
        np.testing.assert_allclose(ours, ranker.score(QUERY, SIXTEEN[:4]).scores, atol=1e-4)
    done = CliRunner().invoke(cli, ["rerank", "-m", model, "-q", "q", "-d", "a",
                                    "--engine", "onnx"])
    assert done.exit_code == 2 and "Traceback" not in done.output
    assert "'onnx' is not one of" in done.output
    for command in ("serve", "eval"):
        help_text = CliRunner().invoke(cli, [command, "--help"]).output
        assert "--engine [auto|llama.cpp|torch]" in help_text


def test_an_engine_the_environment_names_wrongly_is_one_line(converted, cache, monkeypatch):
    monkeypatch.setenv("RERANKER_ENGINE", "onnx")
    done = CliRunner().invoke(cli, ["rerank", "-m", str(converted("f32")), "-q", "q",
                                    "-d", "a"])
    assert done.exit_code == 1 and "Traceback" not in done.output
    assert "engine 'onnx' (from RERANKER_ENGINE)" in done.output


def doctor_on_a_copy(converted, tmp_path) -> tuple[Path, dict]:
    """`doctor --model --json` on a fresh copy of the tiny q8_0 model (so no other test's
    verdict applies to it): the copy and doctor's report."""
    model = tmp_path / "tiny.gguf"
    model.write_bytes(converted("q8_0").read_bytes())
    done = CliRunner().invoke(cli, ["doctor", "--model", str(model), "--threads", "2",
                                    "--json"])
    assert done.exit_code == 0, done.output
    return model, json.loads(done.stdout)


@pytest.mark.slow  # doctor's child processes and a timed request per engine
def test_doctor_times_both_engines_and_records_the_faster(converted, cache, tmp_path):
    model, report = doctor_on_a_copy(converted, tmp_path)
    engines = report["engines"]
    assert set(engines) == {"llama.cpp", "torch"}
    for engine in engines.values():
        assert set(engine) == set(TIMED_REQUESTS)
        # A B B A, twice over for the short request
        assert engine["short"]["runs"] == 4 and engine["typical"]["runs"] == 2
    for request, least in (("short", 100), ("medium", 500), ("typical", 2000)):
        assert engines["torch"][request]["tokens"] == engines["llama.cpp"][request]["tokens"] \
            > least
    faster, threshold = auto_engine(
        {request: {name: engines[name][request]["request_seconds"] for name in engines}
         for request in TIMED_REQUESTS},
        {request: engines["llama.cpp"][request]["tokens"] for request in TIMED_REQUESTS})
    recorded = load_engine_verdict(model)
    assert recorded.engine == faster and recorded.fingerprint == model_fingerprint(model)
    assert recorded.torch_from_tokens == threshold
    assert report["engine_verdict"] == {"engine": faster, "torch_from_tokens": threshold,
                                        "recorded": True}
    assert resolve_engine(None, model).name == faster
    with Reranker(model, n_threads=1) as ranker:
        assert ranker.engine.name == ranker.engine_choice.name == faster
        assert "measured" in ranker.engine_choice.reason
    shown = CliRunner().invoke(cli, ["inspect", str(model), "--json"])
    assert json.loads(shown.output)["engine"]["name"] == faster
    shown = CliRunner().invoke(cli, ["inspect", str(model)])
    assert f"engine:        {faster} here (measured" in shown.output


@pytest.mark.slow  # doctor's child processes and the timed requests
def test_doctor_without_torch_times_llama_cpp_alone_and_records_nothing(converted, cache,
                                                                        tmp_path, monkeypatch):
    # The stand-in: PyTorch reported as not installed (it is, for the other tests).
    monkeypatch.setattr("reranker.cli.doctor_command.torch_problem",
                        lambda: "PyTorch is not installed")
    model, report = doctor_on_a_copy(converted, tmp_path)
    assert set(report["engines"]) == {"llama.cpp"}
    runs = {request: timing["runs"] for request, timing in report["engines"]["llama.cpp"].items()}
    assert runs == {"short": 2, "medium": 1, "typical": 1}  # no turns to take alone
    assert "PyTorch is not installed" in report["engine"]
    assert "pip install -e '.[torch]' in this project's folder" in report["engine"]
    assert report["engine_verdict"] == {"engine": "llama.cpp", "torch_from_tokens": None,
                                        "recorded": False}
    assert load_engine_verdict(model) is None  # nothing measured against: auto stays llama.cpp


CLI = "import sys\nfrom reranker.cli.main import main\nsys.argv[0] = 'reranker-cli'\nmain()\n"


@pytest.mark.slow  # child processes
def test_a_torch_that_cannot_be_imported_is_a_reason_not_a_traceback(converted, cache,
                                                                       tmp_path):
    """A broken install (a missing libtorch_cpu.so, a wheel built for another numpy), whose
    stand-in is a `torch` package that raises on import, first on the child's path: every
    command that wanted torch ended in a traceback, the default `rerank` included."""
    broken = tmp_path / "broken"
    (broken / "torch").mkdir(parents=True)
    (broken / "torch" / "__init__.py").write_text(
        'raise ImportError("libtorch_cpu.so: cannot open shared object file")\n')
    model = tmp_path / "copy.gguf"
    model.write_bytes(converted("f32").read_bytes())
    save_engine_verdict(model, timed(short=(1.0, 0.5), typical=(3.0, 1.5)), TOKENS)  # torch
    problem = "PyTorch is installed but cannot be imported (ImportError: libtorch_cpu.so"
    forced = run_python(CLI, "rerank", "-m", model, "-q", "q", "-d", "a", "--engine", "torch",
                        path_first=broken)
    assert forced.returncode == 1 and problem in forced.stderr, forced.stderr
    assert "Traceback" not in forced.stderr
    ranked = run_python(CLI, "rerank", "-m", model, "-q", "q", "-d", "a", path_first=broken)
    assert ranked.returncode == 0, ranked.stderr
    shown = run_python(CLI, "inspect", model, "--json", path_first=broken)
    engine = json.loads(shown.stdout)["engine"]
    assert engine["name"] == "llama.cpp" and problem in engine["reason"], engine


def test_health_names_the_engine(converted, cache):
    from fastapi.testclient import TestClient

    from reranker.server.app import create_app
    from reranker.server.settings import ServerSettings

    settings = ServerSettings(model_path=converted("f32"), model_name="tiny", threads=1,
                              engine="torch")
    with TestClient(create_app(settings)) as client:
        health = client.get("/health").json()
        assert health["engine"] == "torch"
        answer = client.post("/v1/rerank", json={"query": QUERY, "documents": SIXTEEN[:3]})
        assert answer.status_code == 200 and len(answer.json()["results"]) == 3


def test_engine_names_are_one_list():
    assert ENGINES == ("auto", "llama.cpp", "torch")
