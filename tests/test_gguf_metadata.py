"""The project's own GGUF metadata reader, on files written by gguf-py."""
from __future__ import annotations

import os
import threading

import gguf
import numpy as np
import pytest

from gguf_files import write_gguf
from reranker.errors import ModelFileError
from reranker.gguf_metadata import StringArray, read_metadata

# An empty item, multi-byte UTF-8, and an item whose bytes hold the next item's
# length-prefixed encoding, so a raw byte search finds a false match first.
TRAP = "xx" + "\x03\x00\x00\x00\x00\x00\x00\x00abc"
ITEMS = ["!", "", "héllo wörld", "日本語", TRAP, "abc", "<|embed_token|>"]


def write_strings_gguf(path, items):
    def add(writer):
        writer.add_array("test.strings", items)
        writer.add_array("test.floats", [0.5, 1.5])
        writer.add_string("test.name", "a name")
    return write_gguf(path, "qwen3", add)


@pytest.fixture
def strings(tmp_path) -> StringArray:
    meta = read_metadata(write_strings_gguf(tmp_path / "m.gguf", ITEMS))
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
    assert strings == read_metadata(write_strings_gguf(tmp_path / "again.gguf", ITEMS)).get("test.strings")
    assert strings != ITEMS[:-1]
    assert strings != ITEMS[:-1] + ["other"]


def test_truncated_string_array_is_reported(tmp_path):
    path = write_strings_gguf(tmp_path / "m.gguf", ITEMS)
    data = path.read_bytes()
    cut = data.index("<|embed_token|>".encode()) + 3
    path.write_bytes(data[:cut])
    with pytest.raises(ModelFileError, match="truncated"):
        read_metadata(path)


# A value of every scalar type gguf-py writes, chosen at the edge of its range.
SCALARS = {
    gguf.GGUFValueType.UINT8: 255, gguf.GGUFValueType.INT8: -128,
    gguf.GGUFValueType.UINT16: 65535, gguf.GGUFValueType.INT16: -32768,
    gguf.GGUFValueType.UINT32: 2**32 - 1, gguf.GGUFValueType.INT32: -2**31,
    gguf.GGUFValueType.UINT64: 2**64 - 1, gguf.GGUFValueType.INT64: -2**63,
    gguf.GGUFValueType.FLOAT32: 0.25, gguf.GGUFValueType.FLOAT64: 1e300,
    gguf.GGUFValueType.BOOL: True,
}


def test_every_value_type_gguf_py_writes_reads_back(tmp_path):
    assert set(SCALARS) | {gguf.GGUFValueType.STRING, gguf.GGUFValueType.ARRAY} == \
        set(gguf.GGUFValueType)  # a type added to gguf-py needs a case here
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "qwen3")
    for vtype, value in SCALARS.items():
        writer.add_key_value(f"test.{vtype.name}", value, vtype)
        writer.add_key_value(f"test.{vtype.name}.array", [value, value], gguf.GGUFValueType.ARRAY,
                             sub_type=vtype)
    writer.add_string("test.string", "naïve")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    meta = read_metadata(tmp_path / "m.gguf")
    for vtype, value in SCALARS.items():
        got = meta.get(f"test.{vtype.name}")
        assert got == value and type(got) is type(value), (vtype, got)
        assert meta.get(f"test.{vtype.name}.array").tolist() == [value, value], vtype
    assert meta.get("test.string") == "naïve"


def test_an_unknown_value_type_is_named(tmp_path):
    path = write_strings_gguf(tmp_path / "m.gguf", ITEMS)
    data = bytearray(path.read_bytes())
    # test.name's type code (STRING, 8) sits just after its key: make it 13, unknown.
    at = data.index(b"test.name") + len(b"test.name")
    assert data[at] == gguf.GGUFValueType.STRING
    data[at] = 13
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="unknown GGUF value type 13"):
        read_metadata(path)


def test_a_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    """Opening a FIFO blocks until something writes to it: `inspect` on one hung."""
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    outcome = []

    def read():
        try:
            read_metadata(fifo)
        except ModelFileError as error:
            outcome.append(str(error))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():
        with open(fifo, "wb"):  # lets the stuck reader go on, to a failure of its own
            pass
    assert outcome and "is not a regular file (a pipe, socket or device)" in outcome[0]


def test_a_big_endian_file_is_named_as_such(tmp_path):
    path = tmp_path / "big.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen3", endianess=gguf.GGUFEndian.BIG)
    writer.add_tensor("t", np.zeros(4, dtype=np.float32))
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file,
                  writer.write_tensors_to_file, writer.close):
        write()
    with pytest.raises(ModelFileError, match="is a big-endian GGUF"):
        read_metadata(path)
