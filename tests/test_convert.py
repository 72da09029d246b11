"""The converter: every type loads in llama.cpp, metadata and values are right, bad input is refused."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import struct
import threading
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from convert.api import convert_checkpoint, quantize_gguf
from convert.errors import CheckpointError, ConversionError
from convert.file_types import FILE_TYPES, USABLE_TYPE_NAMES
from convert.output import atomic_output, check_output_path
from convert.vocab import read_vocabulary
from gguf_helpers import gguf_tensors
from processes import quantizer_pids, run_python
from reranker import Reranker
from reranker.gguf_metadata import read_metadata
from reranker.model_format import DOC_MARKER, Keys
from reranker.safetensors_file import load_float32, read_header


def _link_copy(src, dst):
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def _rewrite_weights(checkpoint, out, *, drop=(), add=None, reshape=None, dtype=None,
                     truncate_bytes=0):
    """Copy a checkpoint, rewriting model.safetensors with the requested damage."""
    _link_copy(checkpoint, out)
    source = out / "model.safetensors"
    entries = read_header(source)
    header, blobs, offset = {}, [], 0
    raw = source.read_bytes()
    for name, entry in entries.items():
        if name in drop:
            continue
        data = raw[entry.start:entry.start + entry.nbytes]
        shape = list(reshape[name]) if reshape and name in reshape else list(entry.shape)
        if reshape and name in reshape:
            data = data[: int(np.prod(shape)) * 2]
        kind = dtype[name] if dtype and name in dtype else entry.dtype
        header[name] = {"dtype": kind, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    for name, (shape, data) in (add or {}).items():
        header[name] = {"dtype": "BF16", "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header).encode()
    source.unlink()  # it is a hard link to the shared fixture: never write through it
    with open(source, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))
    if truncate_bytes:
        with open(source, "r+b") as f:
            f.truncate(source.stat().st_size - truncate_bytes)
    return out


# Every type against f32 on a case with score gaps. With random weights every score
# sits near 0.3-0.45 and most inputs give near-ties; documents that each repeat one word
# 60 times are the construction found to spread the tiny model's f32 scores widest (0.30
# to 0.44 for any query). A pair keeps its order when its f32 gap exceeds the difference of
# the two documents' errors, so each type's margin is 1.5x the widest spread of errors
# (max - min of score - f32 score over these documents) measured on this case on a 2-core
# AVX2 EPYC: 0.001 for f16 and bf16, 0.009 for q8_0, <= 0.023 for 5 and 6 bits, 0.049 for
# 4 bits, 0.067 for 3 bits.
RANKING_WORDS = "Paris river 北京 😀 ==== 1234 def the Марков القاهرة ! ? ñ apple zebra <think>".split(" ")
RANKING_DOCS = [(word + " ") * 60 for word in RANKING_WORDS]
RANKING_QUERY = "river"
RANKING_MARGIN = {
    "f16": 0.005, "bf16": 0.005, "q8_0": 0.015,
    **dict.fromkeys(["q6_k", "q5_k_m", "q5_k_s", "q5_1", "q5_0"], 0.035),
    **dict.fromkeys(["q4_k_m", "q4_k_s", "q4_1", "q4_0", "iq4_nl", "iq4_xs"], 0.075),
    **dict.fromkeys(["q3_k_l", "q3_k_m", "q3_k_s", "iq3_m", "iq3_s"], 0.10),
}
# q2_k's errors spread over 0.12 here, as wide as the f32 scores themselves: no pair is
# separated enough to check its order, so its scores are held to a distance instead
# (measured: 0.085 at most).
Q2_K_MAX_DIFF = 0.15
MIN_CHECKED_PAIRS = 10  # the case must give each margin pairs to check, or it checks nothing


@pytest.fixture(scope="module")
def f32_ranking_scores(converted):
    with Reranker(converted("f32"), n_threads=2) as ranker:  # fresh: nothing cached before
        return ranker.score(RANKING_QUERY, RANKING_DOCS).scores


def test_the_ranking_case_separates_pairs_beyond_every_margin(f32_ranking_scores):
    scores = f32_ranking_scores
    gaps = scores[:, None] - scores[None, :]
    for type_name, margin in RANKING_MARGIN.items():
        assert int((gaps > margin).sum()) >= MIN_CHECKED_PAIRS, (type_name, np.sort(scores))


@pytest.mark.parametrize("type_name", [  # llama.cpp's quantizer takes 5-35 s a type here
    name if FILE_TYPES[name].direct is not None else pytest.param(name, marks=pytest.mark.slow)
    for name in USABLE_TYPE_NAMES])
def test_every_type_loads_and_keeps_the_f32_ranking(converted, f32_ranking_scores, type_name):
    path = converted(type_name)
    assert read_metadata(path).get(Keys.FILE_TYPE) == int(FILE_TYPES[type_name].ftype)
    with Reranker(path, n_threads=2) as ranker:
        scores = ranker.score(RANKING_QUERY, RANKING_DOCS).scores
    reference = f32_ranking_scores
    if type_name == "f32":  # the same file in a fresh Reranker: the same scores, bit for bit
        np.testing.assert_array_equal(scores, reference)
        return
    if type_name == "q2_k":
        assert np.abs(scores - reference).max() < Q2_K_MAX_DIFF
        return
    margin = RANKING_MARGIN[type_name]
    for i, j in zip(*np.nonzero(reference[:, None] - reference[None, :] > margin)):
        assert scores[i] > scores[j], (type_name, RANKING_WORDS[i], RANKING_WORDS[j],
                                       reference[i], reference[j], scores[i], scores[j])


def test_metadata_llama_cpp_needs(converted, tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    meta = read_metadata(converted("f16"))
    assert meta.get("general.architecture") == "qwen3"
    assert meta.get("qwen3.attention.key_length") == config["head_dim"]
    assert meta.get("qwen3.attention.value_length") == config["head_dim"]
    assert meta.get("qwen3.attention.head_count") == config["num_attention_heads"]
    assert meta.get("qwen3.attention.head_count_kv") == config["num_key_value_heads"]
    assert meta.get("qwen3.block_count") == config["num_hidden_layers"]
    assert meta.get("qwen3.rope.freq_base") == pytest.approx(config["rope_theta"])
    assert meta.get("qwen3.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert meta.get("tokenizer.ggml.model") == "gpt2"
    assert meta.get("tokenizer.ggml.pre") == "qwen2"
    tokens, types = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.token_type")
    assert len(tokens) == config["vocab_size"]
    assert tokens[151670] == "<|embed_token|>" and tokens[151671] == "<|rerank_token|>"
    assert types[151670] == gguf.TokenType.CONTROL and types[151644] == gguf.TokenType.CONTROL
    assert types[151667] == gguf.TokenType.USER_DEFINED  # <think>
    assert set(types[151672:].tolist()) == {gguf.TokenType.UNUSED}
    assert len(meta.get("tokenizer.ggml.merges")) == 151643 - 256
    assert meta.get("tokenizer.ggml.eos_token_id") == 151645
    assert "output.weight" not in {t.name for t in meta.tensors}  # tied embeddings


def test_provenance_is_recorded(converted, tiny_checkpoint):
    import hashlib

    meta = read_metadata(converted("q8_0"))
    digest = hashlib.sha256((tiny_checkpoint / "model.safetensors").read_bytes()).hexdigest()
    assert meta.get(Keys.SOURCE_SHA256) == digest
    assert meta.get(Keys.SOURCE) == str(tiny_checkpoint)
    assert meta.get(Keys.CONVERTER_VERSION)
    assert meta.get(Keys.DOC_MARKER) == "<|embed_token|>"
    assert meta.get(Keys.QUERY_MARKER) == "<|rerank_token|>"


def test_projector_is_embedded_exactly(converted, tiny_checkpoint):
    tensors = read_header(tiny_checkpoint / "model.safetensors")
    meta = read_metadata(converted("q4_k_m"))  # through llama.cpp's quantizer too
    for name, weight_key, shape_key in zip(("projector.0.weight", "projector.2.weight"),
                                           Keys.PROJECTOR_WEIGHTS, Keys.PROJECTOR_SHAPES):
        source = load_float32(tensors[name])
        assert list(meta.get(shape_key)) == list(source.shape)
        np.testing.assert_array_equal(meta.get(weight_key).reshape(source.shape), source)


@pytest.mark.slow  # reads back every tensor (40M values) of four conversions
@pytest.mark.parametrize("type_name,tolerance", [("f32", 0), ("f16", 0), ("bf16", 0),
                                                 ("q8_0", 0.02)])
def test_tensor_values_equal_the_source(converted, tiny_checkpoint, type_name, tolerance):
    source = read_header(tiny_checkpoint / "model.safetensors")
    written = gguf_tensors(converted(type_name))
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, 2)
    assert len(written) == len(source) - 2  # all but the projector
    for hf_name, entry in source.items():
        if hf_name.startswith("projector."):
            continue
        values, stored = written[name_map.get_name(hf_name, try_suffixes=(".weight",))]
        expected = load_float32(entry)
        if expected.ndim == 1:
            assert stored == gguf.GGMLQuantizationType.F32
        if type_name == "f16" and expected.ndim == 2:
            # bf16 has f32's exponent range: its tiniest values round in f16.
            expected = expected.astype(np.float16).astype(np.float32)
        if tolerance == 0:
            np.testing.assert_array_equal(values, expected, err_msg=hf_name)
        else:
            scale = np.abs(expected).max()
            assert np.abs(values - expected).max() <= tolerance * scale, hf_name


@pytest.mark.parametrize("options", [{"dtype": "f16"}, {"dtype": "f32"}, {"shards": 3},
                                     {"merges_as_strings": True}],
                         ids=["f16-source", "f32-source", "sharded", "string-merges"])
@pytest.mark.slow  # four more conversions, every tensor read back
def test_other_published_forms_convert_alike(make_tiny, qwen_ranks, converted, tmp_path, options):
    from reranker.testing import checkpoint as make_checkpoint

    if options.get("merges_as_strings"):
        checkpoint = make_checkpoint.make_checkpoint(
            tmp_path / "ckpt", tokenizer_json=make_checkpoint.build_tokenizer_json(
                qwen_ranks, merges_as_strings=True))
    else:
        checkpoint = make_tiny(**options)
    out = tmp_path / "out.gguf"
    convert_checkpoint(checkpoint, out, "f32")
    ours, baseline = gguf_tensors(out), gguf_tensors(converted("f32"))
    for name, (values, _) in baseline.items():
        if options.get("dtype") == "f16":  # f16 rounds the random weights differently
            np.testing.assert_allclose(ours[name][0], values, rtol=1e-2, atol=1e-2)
        elif options.get("dtype") != "f32":
            np.testing.assert_array_equal(ours[name][0], values)
    assert read_metadata(out).get("tokenizer.ggml.merges") == \
        read_metadata(converted("f32")).get("tokenizer.ggml.merges")


def test_requantize_carries_the_projector(converted, require_decode, tmp_path):
    require_decode("q4_k_m")
    out = tmp_path / "requantized.gguf"
    summary = quantize_gguf(converted("f16"), out, "q4_k_m")
    assert summary.type_name == "q4_k_m" and out.stat().st_size < converted("f16").stat().st_size
    requantized, original = read_metadata(out), read_metadata(converted("f16"))
    for key in Keys.PROJECTOR_WEIGHTS + (Keys.SOURCE_SHA256,):
        np.testing.assert_array_equal(requantized.get(key), original.get(key))
    with Reranker(out, n_threads=2) as ranker:
        assert ranker.score("q", ["d"]).scores.shape == (1,)


def test_the_quantizers_log_lines_reach_the_llama_cpp_logger(converted, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="reranker.llama_cpp")
    quantize_gguf(converted("f16"), tmp_path / "q.gguf", "q8_0")
    lines = [r.getMessage() for r in caplog.records if r.name == "reranker.llama_cpp"]
    assert any("converting to q8_0" in line for line in lines), lines[-5:]


def test_the_quantizer_runs_from_a_folder_with_its_own_convert_py(converted, tmp_path,
                                                                   monkeypatch):
    """`python -m convert.quantize` puts the working directory first on its path: a user's
    convert.py there was imported in place of this package, and relative paths must
    still name the user's files."""
    (tmp_path / "convert.py").write_text('raise SystemExit("the user\'s own convert.py")\n')
    shutil.copy(converted("f16"), tmp_path / "model.gguf")
    monkeypatch.chdir(tmp_path)
    quantize_gguf("model.gguf", "model-q4_0.gguf", "q4_0", n_threads=1)
    assert read_metadata(tmp_path / "model-q4_0.gguf").get(Keys.FILE_TYPE) == \
        FILE_TYPES["q4_0"].ftype


def test_a_full_disk_is_named_when_the_quantizer_fails(converted, small_disk):
    """llama.cpp says only "basic_ios::clear: iostream error", which came glued to the end
    of an unfinished progress line."""
    with pytest.raises(ConversionError) as failed:
        quantize_gguf(converted("f16"), small_disk / "q.gguf", "q4_0", n_threads=1)
    message = str(failed.value)
    assert "quantizer failed to make q4_0: llama_model_quantize: failed to quantize" in message
    assert f"MB free in {small_disk})" in message
    assert list(small_disk.iterdir()) == []


def test_an_unfinished_log_line_does_not_hide_the_next_error():
    from reranker import llama_logging

    llama_logging.take_last_error()
    llama_logging._forward(2, b"[   3/  24] blk.0.attn_k.weight - converting to q4_0 .. ", None)
    llama_logging._forward(4, b"llama_model_quantize: failed to quantize: disk full\n", None)
    assert llama_logging.take_last_error() == "llama_model_quantize: failed to quantize: disk full"


@pytest.mark.slow  # a quantization killed midway
def test_a_quantizer_that_dies_is_an_error_not_the_end_of_the_process(converted, tmp_path):
    """ggml aborts the whole process on some misuse: the quantizer runs in a child, whose
    death (here a real SIGABRT, as an abort sends) is a ConversionError with nothing written."""
    source, out, errors = converted("f16"), tmp_path / "q.gguf", []

    def quantize():
        try:
            quantize_gguf(source, out, "q4_k_m", n_threads=1)
        except ConversionError as error:
            errors.append(str(error))

    worker = threading.Thread(target=quantize)
    worker.start()
    deadline = time.monotonic() + 60
    while not (started := quantizer_pids(os.getpid())) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert started, "the quantizer never started"
    os.kill(started.pop(), signal.SIGABRT)
    worker.join(60)
    assert errors and "quantizer stopped with signal 6 while making q4_k_m" in errors[0], errors
    assert list(tmp_path.iterdir()) == []


STOP_QUANTIZING = """
import os, signal, sys, threading, time
from pathlib import Path
from convert.api import quantize_gguf
from processes import quantizer_pids, running

source, out = sys.argv[1], Path(sys.argv[2])
children = set()

def interrupt_once_quantizing():
    while not any(p.stat().st_size for p in out.parent.glob(".q.gguf.*")):
        children.update(quantizer_pids(os.getpid()))
        time.sleep(0.005)
    os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=interrupt_once_quantizing, daemon=True).start()
try:
    quantize_gguf(source, out, "q4_k_m", n_threads=1)
    print("finished")
except KeyboardInterrupt:
    cpu = time.process_time()
    time.sleep(1.0)
    left = [pid for pid in children if running(pid)]
    print(f"interrupted; quantizers left {left}; "
          f"cpu seconds in the next second: {time.process_time() - cpu:.2f}")
"""


@pytest.mark.slow  # a child process
def test_ctrl_c_stops_a_library_quantization(converted, tmp_path):
    """An interrupt in a long-lived Python process (a notebook's kernel, say) stops the
    quantizer: it went on in a thread, using the CPU into a file already removed."""
    child = run_python(STOP_QUANTIZING, converted("f16"), tmp_path / "q.gguf",
                       path_first=Path(__file__).parent)
    assert child.returncode == 0, child.stderr[-2000:]
    outcome = child.stdout.strip()
    assert outcome.startswith("interrupted; quantizers left []"), outcome
    assert float(outcome.rsplit(" ", 1)[1]) < 0.2, outcome
    assert list(tmp_path.iterdir()) == []


def test_quantize_never_overwrites_its_input(converted, tmp_path):
    source = tmp_path / "model.gguf"
    shutil.copy(converted("f16"), source)
    os.link(source, tmp_path / "hard-link.gguf")
    before = source.read_bytes()
    for output in (source, tmp_path / "hard-link.gguf",
                   tmp_path / ".." / tmp_path.name / "model.gguf"):
        with pytest.raises(ConversionError, match="is the input .*model.gguf; writing it would"):
            quantize_gguf(source, output, "q8_0", force=True)
    assert source.read_bytes() == before


def test_requantizing_a_quantized_file_is_refused(converted, tmp_path):
    with pytest.raises(ConversionError, match="q8_0.*requantize from an f32, f16 or bf16"):
        quantize_gguf(converted("q8_0"), tmp_path / "x.gguf", "q4_k_m")
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("type_name", ["iq2_xxs", "iq1_s", "q2_k_s"])
def test_types_needing_an_importance_matrix_are_refused(tiny_checkpoint, tmp_path, type_name):
    with pytest.raises(ConversionError, match="importance matrix"):
        convert_checkpoint(tiny_checkpoint, tmp_path / "x.gguf", type_name)
    assert list(tmp_path.iterdir()) == []


def test_unknown_type_names_the_choices(tiny_checkpoint, tmp_path):
    with pytest.raises(ConversionError, match="unknown output type 'q9_9'.*q4_k_m"):
        convert_checkpoint(tiny_checkpoint, tmp_path / "x.gguf", "q9_9")


def test_an_unwritable_output_directory_is_refused_before_any_work(tiny_checkpoint,
                                                                   unwritable_dir):
    with pytest.raises(ConversionError, match=f"output directory {unwritable_dir} is not "
                                              "writable"):
        convert_checkpoint(tiny_checkpoint, unwritable_dir / "x.gguf", "f16")


def test_an_output_written_meanwhile_is_not_replaced_without_force(tmp_path):
    """Two runs writing one output: the existence check comes first, the rename last, and
    a plain rename replaced whatever the other run had finished meanwhile."""
    out = tmp_path / "model.gguf"
    with pytest.raises(ConversionError, match="was written by another run meanwhile; pass "
                                              "--force"):
        with atomic_output(out) as tmp:
            tmp.write_text("this run")
            out.write_text("the other run")
    assert out.read_text() == "the other run" and list(tmp_path.iterdir()) == [out]
    with atomic_output(out, force=True) as tmp:
        tmp.write_text("this run")
    assert out.read_text() == "this run" and list(tmp_path.iterdir()) == [out]


def test_a_dangling_symlink_as_output_is_refused_before_the_work(tmp_path):
    """exists() follows the link and the final link() does not: it failed after the work,
    blaming another run."""
    link = tmp_path / "model.gguf"
    link.symlink_to(tmp_path / "missing.gguf")
    with pytest.raises(ConversionError, match="is a symbolic link to a missing file; pass "
                                              "--force to replace the link"):
        check_output_path(link, force=False)
    with atomic_output(link, force=True) as tmp:
        tmp.write_text("written")
    assert not link.is_symlink() and link.read_text() == "written"


def test_an_output_name_too_long_for_the_temporary_file_is_refused_first(tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    with pytest.raises(ConversionError, match=r"bytes long; this filesystem allows \d+ for it"):
        check_output_path(tmp_path / ("x" * (limit - 10) + ".gguf"), force=False)
    check_output_path(tmp_path / ("x" * (limit - 40) + ".gguf"), force=False)


def test_existing_output_needs_force(tiny_checkpoint, tmp_path):
    out = tmp_path / "model.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(ConversionError, match="already exists; pass --force"):
        convert_checkpoint(tiny_checkpoint, out, "f16")
    assert out.read_bytes() == b"keep me"
    convert_checkpoint(tiny_checkpoint, out, "f16", force=True)
    assert read_metadata(out).get("general.architecture") == "qwen3"


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
def test_force_never_overwrites_the_checkpoint_being_read(tiny_checkpoint, tmp_path, name):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    before = (checkpoint / name).read_bytes()
    with pytest.raises(ConversionError, match=f"is the input .*{name}; writing it would destroy"):
        convert_checkpoint(checkpoint, checkpoint / name, "f16", force=True)
    assert (checkpoint / name).read_bytes() == before
    # Through a symbolic link too.
    (tmp_path / "link.gguf").symlink_to(checkpoint / name)
    with pytest.raises(ConversionError, match=f"is the input .*{name}"):
        convert_checkpoint(checkpoint, tmp_path / "link.gguf", "f16", force=True)


@pytest.mark.parametrize("name", ["sub/model.safetensors", "model.safetensors.index.json"])
def test_force_never_overwrites_a_shard_in_a_subfolder_or_the_index(tiny_checkpoint, tmp_path,
                                                                    name):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    (checkpoint / "sub").mkdir()
    (checkpoint / "model.safetensors").rename(checkpoint / "sub/model.safetensors")
    tensors = read_header(checkpoint / "sub/model.safetensors")
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": dict.fromkeys(tensors, "sub/model.safetensors")}))
    before = (checkpoint / name).read_bytes()
    with pytest.raises(ConversionError, match=f"is the input .*{name}; writing it would destroy"):
        convert_checkpoint(checkpoint, checkpoint / name, "f16", force=True)
    assert (checkpoint / name).read_bytes() == before


@pytest.mark.parametrize("type_name", ["q8_0", "q4_k_m"])
def test_an_interrupted_run_leaves_nothing(tiny_checkpoint, tmp_path, type_name):
    def interrupt(done, total, name):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(tiny_checkpoint, tmp_path / "x.gguf", type_name, progress=interrupt)
    assert list(tmp_path.iterdir()) == []


_NULL = object()  # for _edit_config: set the key to JSON null (None removes it)

BAD_INPUTS = {
    "missing path": (lambda ck, d: d / "missing", "neither an existing directory nor a Hub repo id"),
    "a file, not a directory": (lambda ck, d: _a_file(d), "is not a directory"),
    "no config": (lambda ck, d: (d.mkdir(), d)[1], "no config.json"),
    "unknown architecture": (
        lambda ck, d: _edit_config(ck, d, architectures=["LlamaForCausalLM"], model_type="llama"),
        r"architectures \['LlamaForCausalLM'\].*JinaForRanking"),
    "missing config key": (lambda ck, d: _edit_config(ck, d, hidden_size=None), "missing hidden_size"),
    "zero heads": (lambda ck, d: _edit_config(ck, d, num_attention_heads=0),
                   "config.json: num_attention_heads is 0; expected a positive integer"),
    "non-numeric size": (lambda ck, d: _edit_config(ck, d, hidden_size="256"),
                         'config.json: hidden_size is "256"; expected a positive integer'),
    "negative layers": (lambda ck, d: _edit_config(ck, d, num_hidden_layers=-2),
                        "config.json: num_hidden_layers is -2; expected a positive integer"),
    "fractional size": (lambda ck, d: _edit_config(ck, d, intermediate_size=511.5),
                        "config.json: intermediate_size is 511.5; expected a positive integer"),
    "null epsilon": (lambda ck, d: _edit_config(ck, d, rms_norm_eps=_NULL),
                     "config.json: rms_norm_eps is null; expected a positive number"),
    "zero head_dim": (lambda ck, d: _edit_config(ck, d, head_dim=0),
                      "config.json: head_dim is 0; expected a positive integer"),
    "heads not a multiple of kv heads": (
        lambda ck, d: _edit_config(ck, d, num_key_value_heads=3),
        r"config.json: num_attention_heads \(\d+\) is not a multiple of num_key_value_heads \(3\)"),
    "context length beyond uint32": (
        lambda ck, d: _edit_config(ck, d, max_position_embeddings=2**40),
        r"config.json: max_position_embeddings is 1099511627776; expected at most 4294967295"),
    "layers beyond llama.cpp's limit": (
        lambda ck, d: _edit_config(ck, d, num_hidden_layers=10**8),
        r"config.json: num_hidden_layers is 100000000; expected at most 512"),
    "more layers than the weights hold": (
        lambda ck, d: _edit_config(ck, d, num_hidden_layers=3),
        "config.json: num_hidden_layers is 3 but the weights hold 2 layers"),
    "rope base beyond float32": (lambda ck, d: _edit_config(ck, d, rope_theta=1e300),
                                 r"config.json: rope_theta is 1e\+300; GGUF stores it as a "
                                 "float32, where it becomes inf"),
    "epsilon float32 rounds to 0": (lambda ck, d: _edit_config(ck, d, rms_norm_eps=1e-50),
                                    "config.json: rms_norm_eps is 1e-50; GGUF stores it as a "
                                    "float32, where it becomes 0.0"),
    "name not a string": (lambda ck, d: _edit_config(ck, d, _name_or_path=5),
                          "config.json: _name_or_path is 5; expected a string"),
    "tie_word_embeddings as a string": (
        lambda ck, d: _edit_config(ck, d, tie_word_embeddings="false"),
        'config.json: tie_word_embeddings is "false"; expected true or false'),
    "rope scaling": (
        lambda ck, d: _edit_config(ck, d, rope_scaling={"rope_type": "yarn", "factor": 4.0}),
        "config.json: rope_scaling is .*yarn.*; this converter writes no rope scaling"),
    "sliding window": (lambda ck, d: _edit_config(ck, d, use_sliding_window=True),
                       "config.json: use_sliding_window is true; this converter writes no "
                       "sliding window"),
    "architectures as a string": (
        lambda ck, d: _edit_config(ck, d, architectures="NotJinaForRanking"),
        "architectures NotJinaForRanking"),
    "no weights": (lambda ck, d: _remove(ck, d, "model.safetensors"), "no model.safetensors"),
    "no tokenizer": (lambda ck, d: _remove(ck, d, "tokenizer.json"), "tokenizer.json is missing"),
    "missing tensor": (lambda ck, d: _rewrite_weights(ck, d, drop={"model.layers.1.mlp.up_proj.weight"}),
                       "tensor model.layers.1.mlp.up_proj.weight is missing"),
    "missing projector": (lambda ck, d: _rewrite_weights(ck, d, drop={"projector.2.weight"}),
                          "projector.2.weight.*missing"),
    "extra tensor": (lambda ck, d: _rewrite_weights(ck, d, add={"lm_head.weight": ((2, 2), b"\0" * 8)}),
                     "unexpected tensor lm_head.weight"),
    "misshaped tensor": (lambda ck, d: _rewrite_weights(
        ck, d, reshape={"model.layers.0.self_attn.k_proj.weight": (64, 256)}),
        r"k_proj.weight has shape \[64, 256\]; expected \[128, 256\]"),
    "unsupported dtype": (lambda ck, d: _rewrite_weights(
        ck, d, dtype={"model.norm.weight": "I16"}), "model.norm.weight has dtype I16"),
    "truncated weights": (lambda ck, d: _rewrite_weights(ck, d, truncate_bytes=1000),
                          "truncated download"),
    "negative data offset": (
        lambda ck, d: _edit_header(ck, d, lambda h: h["model.layers.0.input_layernorm.weight"]
                                   .update(data_offsets=[-512, 0])),
        r"tensor model.layers.0.input_layernorm.weight has data_offsets \[-512, 0\]; expected "
        "two non-negative integers"),
    "data offsets as strings": (
        lambda ck, d: _edit_header(ck, d, lambda h: h["model.norm.weight"].update(
            data_offsets=[str(x) for x in h["model.norm.weight"]["data_offsets"]])),
        r'tensor model.norm.weight has data_offsets \["\d+", "\d+"\]'),
    "fractional shape": (
        lambda ck, d: _edit_header(ck, d, lambda h: h["model.norm.weight"].update(shape=[256.9])),
        r"tensor model.norm.weight has shape \[256.9\]; expected non-negative integers"),
    "overlapping tensors": (
        lambda ck, d: _edit_header(ck, d, lambda h: h["model.layers.1.self_attn.q_proj.weight"]
                                   .update(data_offsets=h["model.layers.0.self_attn.q_proj.weight"]
                                           ["data_offsets"])),
        r"tensors model.layers.[01].self_attn.q_proj.weight and "
        r"model.layers.[01].self_attn.q_proj.weight share bytes"),
    "tokenizer without markers": (lambda ck, d: _edit_tokenizer(ck, d), "lack <|embed_token|>"),
    "added token without content": (
        lambda ck, d: _edit_tokenizer(ck, d, lambda t: t["added_tokens"][0].pop("content")),
        r'tokenizer.json: added_tokens\[0\] is not an object with a string "content"'),
    "token id not a number": (
        lambda ck, d: _edit_tokenizer(ck, d, lambda t: t["model"]["vocab"].update({"!": "0"})),
        """tokenizer.json: token '!' has id "0"; expected a non-negative integer"""),
    "merges as an object": (
        lambda ck, d: _edit_tokenizer(ck, d, lambda t: t["model"].update(merges={"Ġ t": 1})),
        'tokenizer.json: model.merges is {"Ġ t": 1}; expected a list of merges'),
    "merges as a number": (lambda ck, d: _edit_tokenizer(ck, d, lambda t: t["model"].update(merges=5)),
                           "tokenizer.json: model.merges is 5; expected a list"),
    "merges of numbers": (
        lambda ck, d: _edit_tokenizer(ck, d, lambda t: t["model"].update(merges=[1, 2])),
        r'tokenizer.json: model.merges\[0\] is 1; expected "left right" or \["left", "right"\]'),
    "projector holding NaN": (lambda ck, d: _set_first_value(ck, d, "projector.0.weight", NAN_BF16),
                              "tensor projector.0.weight holds NaN or infinite values"),
    "tokenizer not an object": (lambda ck, d: _replace_tokenizer(ck, d, "[]"),
                                "tokenizer.json: expected a JSON object"),
}


def _a_file(path):
    path.write_text("not a checkpoint")
    return path


def _edit_config(checkpoint, out, **changes):
    _link_copy(checkpoint, out)
    config = json.loads((out / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = None if value is _NULL else value
    (out / "config.json").unlink()
    (out / "config.json").write_text(json.dumps(config))
    return out


def _remove(checkpoint, out, name):
    _link_copy(checkpoint, out)
    (out / name).unlink()
    return out


def _edit_header(checkpoint, out, edit):
    """Copy a checkpoint, editing model.safetensors' JSON header and keeping its data."""
    _link_copy(checkpoint, out)
    source = out / "model.safetensors"
    raw = source.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    edit(header)
    encoded = json.dumps(header).encode()
    source.unlink()  # a hard link to the shared fixture: never write through it
    source.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + header_len:])
    return out


NAN_BF16 = struct.pack("<H", 0x7FC0)


def _set_first_value(checkpoint, out, name, value: bytes):
    _link_copy(checkpoint, out)
    source = out / "model.safetensors"
    start = read_header(source)[name].start
    raw = bytearray(source.read_bytes())
    raw[start:start + len(value)] = value
    source.unlink()  # a hard link to the shared fixture: never write through it
    source.write_bytes(raw)
    return out


def _drop_doc_marker(data):
    data["added_tokens"] = [t for t in data["added_tokens"] if "embed_token" not in t["content"]]


def _edit_tokenizer(checkpoint, out, edit=_drop_doc_marker):
    _link_copy(checkpoint, out)
    data = json.loads((out / "tokenizer.json").read_text())
    edit(data)
    return _replace_tokenizer(checkpoint, out, json.dumps(data))


def _replace_tokenizer(checkpoint, out, text):
    if not out.exists():
        _link_copy(checkpoint, out)
    (out / "tokenizer.json").unlink()  # a hard link to the shared fixture: never write through it
    (out / "tokenizer.json").write_text(text)
    return out


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_error_and_nothing_written(tiny_checkpoint, tmp_path, case):
    make, message = BAD_INPUTS[case]
    source = make(tiny_checkpoint, tmp_path / "ckpt")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(CheckpointError, match=message):
        convert_checkpoint(source, out_dir / "model.gguf", "q8_0")
    assert list(out_dir.iterdir()) == []


def test_a_file_the_runtime_would_refuse_is_not_written(tiny_checkpoint, tmp_path, monkeypatch):
    # A gap in the converter's own checks, stood in for by a vocabulary losing its marker
    # after they ran: the output is checked as rerank and serve check it.
    import convert.api

    def read_without_marker(path, vocab_size):
        vocab = read_vocabulary(path, vocab_size)
        vocab.tokens[vocab.tokens.index(DOC_MARKER)] = "<|not_the_marker|>"
        return vocab

    monkeypatch.setattr(convert.api, "read_vocabulary", read_without_marker)
    out = tmp_path / "model.gguf"
    with pytest.raises(ConversionError, match=rf"{out} was not written: the runtime would refuse "
                                              rf"it \({out}: the vocabulary has no"):
        convert_checkpoint(tiny_checkpoint, out, "f16")
    assert list(tmp_path.iterdir()) == []


def test_a_requantized_file_the_runtime_would_refuse_is_not_written(converted, tmp_path,
                                                                    monkeypatch):
    # A stand-in for llama.cpp's quantizer writing a cut-short file (as a bug or a disk
    # error could; the real one cannot be made to on demand): quantize checks its output
    # as convert does before it takes the output's name.
    import convert.api

    def cut_short(source, destination, target, n_threads):
        destination.write_bytes(Path(source).read_bytes()[:4096])

    monkeypatch.setattr(convert.api, "run_llama_quantizer", cut_short)
    out = tmp_path / "q.gguf"
    with pytest.raises(ConversionError, match=rf"{out} was not written: the runtime would refuse"):
        quantize_gguf(converted("f16"), out, "q4_0")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def umask():
    """umask(value): set the process umask for this test; restored afterwards."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize("type_name,mask", [("f16", 0o022), ("q4_k_m", 0o027)],
                         ids=["f16-umask-022", "q4_k_m-umask-027"])
def test_outputs_get_the_mode_of_the_users_umask(tiny_checkpoint, converted, tmp_path, umask,
                                                 type_name, mask):
    from convert.pull import record_checksums
    from reranker.cli.eval_commands import write_json_atomically

    umask(mask)
    expected = 0o666 & ~mask  # as a plain open() gives a new file
    converted_file = tmp_path / "model.gguf"
    convert_checkpoint(tiny_checkpoint, converted_file, type_name)
    requantized = tmp_path / "requantized.gguf"
    quantize_gguf(converted("f16"), requantized, "q8_0")
    sums = record_checksums(tmp_path, [converted_file])
    report = tmp_path / "report.json"
    write_json_atomically(report, {"ok": True})
    for path in (converted_file, requantized, sums, report):
        assert oct(path.stat().st_mode & 0o777) == oct(expected), path.name


@pytest.mark.slow  # two conversions in child processes
def test_a_killed_conversion_is_removed_by_the_next_run(tiny_checkpoint, tmp_path):
    import subprocess
    import sys
    import time

    out = tmp_path / "model.gguf"
    command = [sys.executable, "-m", "reranker.cli.main", "convert", str(tiny_checkpoint),
               "-o", str(out), "-t", "q4_k_m"]
    killed = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".model.gguf.*.partial")) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed.kill()  # SIGKILL: no handler runs, as for the OOM killer or a power cut
    killed.wait()
    left = sorted(p.name for p in tmp_path.glob(".model.gguf.*.partial"))
    assert left and all(name.startswith(f".model.gguf.{killed.pid}.") for name in left)
    # Kept: a temporary file of a run still going (this process), and another output's.
    running = tmp_path / f".model.gguf.{os.getpid()}.0123abcd.partial"
    other = tmp_path / f".other.gguf.{killed.pid}.0123abcd.partial"
    running.touch()
    other.touch()

    again = subprocess.run(command[:-2] + ["-t", "q8_0"], capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    for name in left:
        assert f"removed {tmp_path / name}" in again.stderr and "interrupted run" in again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["model.gguf", running.name, other.name])
    assert read_metadata(out).get(Keys.FILE_TYPE) == int(FILE_TYPES["q8_0"].ftype)


def test_file_names_that_are_not_utf8_reach_llama_cpps_quantizer(converted, tmp_path):
    # Python keeps such a name's bytes as surrogates; encoding them as UTF-8 raised.
    source = tmp_path / "model-\udcff.gguf"
    os.link(converted("f16"), source)
    out = tmp_path / "out-\udcfe.gguf"
    quantize_gguf(source, out, "q8_0")
    assert read_metadata(out).get(Keys.FILE_TYPE) == int(FILE_TYPES["q8_0"].ftype)
