"""Damaged or foreign GGUF files: every command refuses them with one line naming the
file and what is wrong, before llama.cpp can fail without a reason or abort the process.

The files are real conversions of the tiny checkpoint, then cut short or with one
metadata value overwritten in place, as a broken copy or a faulty writer would leave them.
"""
from __future__ import annotations

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
}
# llama.cpp aborts the process on these when it loads them: only a child process may try.
ABORTS_LLAMA_CPP = {"no layers"}


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
