"""Damaged or foreign GGUF files: every command refuses them with one line naming the
file and what is wrong, before llama.cpp can fail without a reason or abort the process.

The files are real conversions of the tiny checkpoint, then cut short or with one
metadata value overwritten in place, as a broken copy or a faulty writer would leave them.
"""
from __future__ import annotations

import shutil
import struct
import subprocess
import sys

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from reranker.cli.main import cli


def _set_u32(data: bytearray, key: str, value: int) -> None:
    """Overwrite the uint32 value of metadata `key` in a GGUF held in memory."""
    encoded = key.encode()
    at = data.index(struct.pack("<Q", len(encoded)) + encoded) + 8 + len(encoded)
    assert struct.unpack_from("<I", data, at)[0] == gguf.GGUFValueType.UINT32
    struct.pack_into("<I", data, at + 4, value)


def _value_at(data: bytearray, key: str, value_type: gguf.GGUFValueType) -> int:
    """The offset of metadata `key`'s value (after its type) in a GGUF held in memory."""
    encoded = key.encode()
    at = data.index(struct.pack("<Q", len(encoded)) + encoded) + 8 + len(encoded)
    assert struct.unpack_from("<I", data, at)[0] == value_type
    return at + 4


def _set_f32(data: bytearray, key: str, value: float) -> None:
    struct.pack_into("<f", data, _value_at(data, key, gguf.GGUFValueType.FLOAT32), value)


def _set_first_of_f32_array(data: bytearray, key: str, value: float) -> None:
    at = _value_at(data, key, gguf.GGUFValueType.ARRAY)
    assert struct.unpack_from("<I", data, at)[0] == gguf.GGUFValueType.FLOAT32
    struct.pack_into("<f", data, at + 4 + 8, value)  # after the element type and the count


def _projector_of_text(path):
    """A qwen3 GGUF with the markers whose projector key holds a string, not numbers."""
    writer = gguf.GGUFWriter(str(path), "qwen3")
    writer.add_token_list(["<|embed_token|>", "<|rerank_token|>"])
    writer.add_string("jina_reranker.projector.0.weight", "not numbers")
    writer.add_tensor("t", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


DAMAGE = {
    # case: (what to do to the q8_0 file's bytes, what the error must say)
    "truncated": (lambda data: data[:-1000], "is truncated: its tensors need"),
    "context length 0": (lambda data: _set_u32(data, "qwen3.context_length", 0),
                         "qwen3.context_length is 0; it must be a positive integer"),
    "no layers": (lambda data: _set_u32(data, "qwen3.block_count", 0),
                  "qwen3.block_count is 0; it must be from 1 to 512"),
    "zero width": (lambda data: _set_u32(data, "qwen3.embedding_length", 0),
                   "qwen3.embedding_length is 0; it must be a positive integer"),
    "projector of text": (None, "jina_reranker.projector.0.weight holds str, not numbers"),
    "NaN epsilon": (lambda data: _set_f32(data, "qwen3.attention.layer_norm_rms_epsilon",
                                          float("nan")),
                    "qwen3.attention.layer_norm_rms_epsilon is nan; it must be a positive"),
    "no KV heads": (lambda data: _set_u32(data, "qwen3.attention.head_count_kv", 0),
                    "qwen3.attention.head_count_kv is 0; it must be a positive integer"),
    "heads not grouped": (lambda data: _set_u32(data, "qwen3.attention.head_count_kv", 3),
                          "is not a multiple of qwen3.attention.head_count_kv (3)"),
    "NaN projector": (lambda data: _set_first_of_f32_array(
        data, "jina_reranker.projector.0.weight", float("nan")),
        "the projector's first matrix holds NaN or infinite values"),
}
# llama.cpp aborts the process on these when it loads them: only a child process may try.
ABORTS_LLAMA_CPP = {"no layers", "NaN epsilon"}


@pytest.fixture
def damaged(converted, tmp_path):
    def make(case: str):
        path = tmp_path / f"{case.replace(' ', '-')}.gguf"
        damage, _ = DAMAGE[case]
        if damage is None:
            _projector_of_text(path)
            return path
        data = bytearray(converted("q8_0").read_bytes())
        path.write_bytes(damage(data) or data)
        return path
    return make


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_inspect_reports_a_damaged_file(damaged, case):
    path = damaged(case)
    done = CliRunner().invoke(cli, ["inspect", str(path)])
    assert done.exit_code == 1, done.output
    assert done.output.startswith(f"Error: {path}") and DAMAGE[case][1] in done.output
    assert len(done.output.splitlines()) == 1


@pytest.mark.parametrize("case", sorted(set(DAMAGE) - ABORTS_LLAMA_CPP))
def test_rerank_refuses_a_damaged_file(damaged, case):
    path = damaged(case)
    done = CliRunner().invoke(cli, ["rerank", "-m", str(path), "-q", "q", "-d", "d"])
    assert done.exit_code == 1
    assert done.output.startswith(f"Error: {path}") and DAMAGE[case][1] in done.output


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_serve_refuses_a_damaged_file_in_one_line(damaged, case):
    path = damaged(case)
    # A real process: the server must stop before binding, and an abort must not take
    # pytest with it.
    done = subprocess.run([sys.executable, "-m", "reranker.cli.main", "serve", "-m", str(path),
                           "--port", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"Error: {path}") and DAMAGE[case][1] in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_nan_weights_are_an_error_not_silent_zero_scores(converted, tmp_path):
    """A NaN inside the backbone's weights (nothing in the metadata shows it) made every
    hidden state NaN, and the cosine turned those into scores of exactly 0."""
    from reranker import Reranker, RerankerError

    path = tmp_path / "nan-norm.gguf"
    path.write_bytes(converted("f32").read_bytes())
    tensor = next(t for t in gguf.GGUFReader(path).tensors if t.name == "output_norm.weight")
    with open(path, "r+b") as file:
        file.seek(tensor.data_offset)
        file.write(struct.pack("<f", float("nan")))
    with Reranker(path, n_threads=1) as ranker:
        with pytest.raises(RerankerError, match="NaN or infinite hidden states .*damaged"):
            ranker.score("q", ["a", "b"])


@pytest.mark.parametrize("command", ["inspect", "rerank", "compare"])
def test_a_checkpoint_folder_given_as_the_model_says_to_convert_it(tiny_checkpoint, command,
                                                                   tmp_path):
    """It said the folder "holds 0 .gguf files (none)", which does not say what to do."""
    requests = tmp_path / "requests.jsonl"
    requests.write_text('{"query": "q", "documents": ["d"]}\n')
    args = {"inspect": [str(tiny_checkpoint)],
            "rerank": ["-m", str(tiny_checkpoint), "-q", "q", "-d", "d"],
            "compare": ["--ladder", str(tiny_checkpoint), "--requests", str(requests)]}[command]
    done = CliRunner().invoke(cli, [command, *args])
    assert done.exit_code == 1
    assert done.output == (f"Error: {tiny_checkpoint} is a Hugging Face checkpoint, not a GGUF "
                           f"model: convert it first (reranker-cli convert {tiny_checkpoint} "
                           "-t q8_0)\n")


def test_the_convert_hint_is_a_command_that_can_be_pasted(tiny_checkpoint, tmp_path):
    from reranker.errors import ModelFileError
    from reranker.reranker import resolve_model_file

    spaced = tmp_path / "my checkpoint"
    shutil.copytree(tiny_checkpoint, spaced)
    with pytest.raises(ModelFileError, match=f"reranker-cli convert '{spaced}' -t q8_0"):
        resolve_model_file(spaced)
    settings = tmp_path / "settings"  # a config.json alone is not a checkpoint
    settings.mkdir()
    (settings / "config.json").write_text("{}")
    with pytest.raises(ModelFileError, match="holds 0 .gguf files"):
        resolve_model_file(settings)
    with pytest.raises(ModelFileError, match="the model path is empty"):
        resolve_model_file("")
