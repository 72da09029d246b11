""""Is this a reranker file?" has one answer: the runtime's, given by `inspect` and `serve` too.

The files are written with gguf-py's own writer (metadata only: nothing here needs
llama.cpp to load weights, since every refusal comes before that).
"""
from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from gguf_files import add_backbone, write_gguf
from reranker import ModelFileError, Reranker
from reranker.cli.main import cli
from reranker.model_check import open_reranker_file, reranker_file_problem


def _gguf(path, arch="qwen3", tokens=("a", "<|embed_token|>", "<|rerank_token|>"), *,
          layers=1, block_count=None, extra=()):
    """A GGUF with the vocabulary `tokens` and a backbone of `layers` layers (its block
    count saying `block_count` if given), plus the tensors named in `extra`."""
    def add(writer):
        writer.add_token_list(list(tokens))
        add_backbone(writer, layers, block_count)
        for name in extra:
            writer.add_tensor(name, np.zeros(4, dtype=np.float32))
    return write_gguf(path, arch, add, placeholder=False)


def _with_type_id(path, tensor, type_id):
    """A reranker GGUF whose `tensor` claims a ggml type id gguf-py cannot write."""
    raw = bytearray(_gguf(path).read_bytes())
    name = tensor.encode()
    start = raw.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    dims = struct.unpack_from("<I", raw, start)[0]
    struct.pack_into("<I", raw, start + 4 + 8 * dims, type_id)
    path.write_bytes(bytes(raw))
    return path


def _projector_file(path):
    save_file({"projector.0.weight": np.ones((8, 16), np.float32),
               "projector.2.weight": np.ones((4, 8), np.float32)}, str(path))
    return path


def _inspect(path) -> dict:
    done = CliRunner().invoke(cli, ["inspect", str(path), "--json"])
    assert done.exit_code == 0, done.output
    return json.loads(done.output)


@pytest.mark.parametrize("sidecar", ["projector.safetensors", "{stem}.projector.safetensors"])
def test_inspect_finds_the_projector_file_the_runtime_loads(tmp_path, sidecar):
    model = _gguf(tmp_path / "backbone-q8.gguf")
    projector = _projector_file(tmp_path / sidecar.format(stem="backbone-q8"))
    assert open_reranker_file(model).projector.source == str(projector)
    info = _inspect(model)
    assert info["projector"] == {"where": str(projector), "shapes": None}
    assert info["problem"] is None
    text = CliRunner().invoke(cli, ["inspect", str(model)]).output
    assert "reranker:      yes" in text


def test_inspect_says_why_the_runtime_refuses_a_file(tmp_path):
    cases = {
        "no-projector.gguf": (_gguf(tmp_path / "no-projector.gguf"), "carries no projector"),
        "llama.gguf": (_gguf(tmp_path / "llama.gguf", arch="llama"),
                       "'llama' model; expected qwen3"),
        "no-markers.gguf": (_gguf(tmp_path / "no-markers.gguf", tokens=("a", "b")),
                            "the vocabulary has no <|embed_token|>"),
        # llama.cpp refuses these at load: inspect called them loadable, quantize copied them.
        "fewer-layers.gguf": (_gguf(tmp_path / "fewer-layers.gguf", block_count=3),
                              "lacks 22 of the tensors of a 3-layer model (the first: "
                              "blk.1.attn_norm.weight)"),
        "more-layers.gguf": (_gguf(tmp_path / "more-layers.gguf", layers=2,
                                   block_count=1),
                             "holds blk.1.attn_k.weight, beyond its qwen3.block_count of 1"),
        "stray-tensor.gguf": (_gguf(tmp_path / "stray-tensor.gguf",
                                    extra=["blk.0.ffn_extra.weight"]),
                              "holds blk.0.ffn_extra.weight, which a qwen3 model has not"),
        "unknown-type.gguf": (_with_type_id(tmp_path / "unknown-type.gguf", "blk.0.ffn_up.weight",
                                            99),
                              "tensor blk.0.ffn_up.weight has type id 99, which this "
                              "llama.cpp does not know"),
    }
    for name, (path, reason) in cases.items():
        with pytest.raises(ModelFileError) as refused:
            Reranker(path)
        assert reason in str(refused.value), name
        info = _inspect(path)
        assert info["problem"] == str(refused.value) == reranker_file_problem(path), name
        text = CliRunner().invoke(cli, ["inspect", str(path)]).output
        assert f"reranker:      no: {refused.value}" in text, name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("arch,tokens,reason", [
    ("llama", ("a", "<|embed_token|>", "<|rerank_token|>"), "'llama' model; expected qwen3"),
    ("qwen3", ("a", "b"), "the vocabulary has no <|embed_token|>"),
    ("qwen3", ("a", "<|embed_token|>", "<|rerank_token|>"), "carries no projector"),
])
def test_serve_refuses_a_file_that_is_not_a_reranker_at_start_up(tmp_path, arch, tokens, reason):
    """A real `serve` process: one line on stderr, exit 1, no traceback, nothing loaded."""
    model = _gguf(tmp_path / "model.gguf", arch=arch, tokens=tokens)
    done = subprocess.run([sys.executable, "-m", "reranker.cli.main", "serve", "-m", str(model),
                           "--port", str(_free_port())],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert reason in lines[0] and str(model) in lines[0]
