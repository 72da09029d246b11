"""The project's own GGUF metadata reader, on files written by gguf-py."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from reranker.errors import ModelFileError
from reranker.gguf_metadata import StringArray, read_metadata

# An empty item, multi-byte UTF-8, and an item whose bytes hold the next item's
# length-prefixed encoding, so a raw byte search finds a false match first.
TRAP = "xx" + "\x03\x00\x00\x00\x00\x00\x00\x00abc"
ITEMS = ["!", "", "héllo wörld", "日本語", TRAP, "abc", "<|embed_token|>"]


def write_gguf(path, items):
    writer = gguf.GGUFWriter(str(path), "qwen3")
    writer.add_array("test.strings", items)
    writer.add_array("test.floats", [0.5, 1.5])
    writer.add_string("test.name", "a name")
    writer.add_tensor("t", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def strings(tmp_path) -> StringArray:
    meta = read_metadata(write_gguf(tmp_path / "m.gguf", ITEMS))
    assert meta.get("test.name") == "a name"
    assert meta.get("test.floats").tolist() == [0.5, 1.5]
    return meta.get("test.strings")


def test_string_array_reads_every_item(strings):
    assert isinstance(strings, StringArray)
    assert len(strings) == len(ITEMS)
    assert list(strings) == ITEMS
    assert strings[-1] == "<|embed_token|>"
    assert strings[1:3] == ITEMS[1:3]
    with pytest.raises(IndexError):
        strings[len(ITEMS)]


def test_string_array_finds_whole_items_only(strings):
    # "abc" occurs first inside TRAP's bytes, length prefix included.
    assert strings.index("abc") == ITEMS.index("abc")
    assert strings.index("") == 1
    assert "日本語" in strings and "<|embed_token|>" in strings
    assert "ab" not in strings and "<|rerank_token|>" not in strings
    with pytest.raises(ValueError, match="not in the array"):
        strings.index("missing")


def test_string_array_equality(strings, tmp_path):
    assert strings == ITEMS
    assert strings == read_metadata(write_gguf(tmp_path / "again.gguf", ITEMS)).get("test.strings")
    assert strings != ITEMS[:-1]
    assert strings != ITEMS[:-1] + ["other"]


def test_truncated_string_array_is_reported(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", ITEMS)
    data = path.read_bytes()
    cut = data.index("<|embed_token|>".encode()) + 3
    path.write_bytes(data[:cut])
    with pytest.raises(ModelFileError, match="truncated"):
        read_metadata(path)
