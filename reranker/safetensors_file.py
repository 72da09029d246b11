"""Read safetensors files with numpy alone (bfloat16 included), memory-mapped.

The `safetensors` package's numpy loader cannot represent bfloat16, and torch
is not a conversion-time dependency, so the format (an 8-byte header length, a
JSON header, raw little-endian data) is read here directly.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reranker.errors import ModelFileError

_ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset in the file
    nbytes: int


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Parse and validate one file's header; data is not read."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{path}: truncated safetensors file ({size} bytes)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > min(size - 8, _MAX_HEADER_BYTES):
                raise ModelFileError(
                    f"{path}: header length {header_len} does not fit a {size}-byte file "
                    "(truncated or not safetensors)")
            header = json.loads(f.read(header_len))
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read: {e.strerror or e}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: header is not a JSON object")
    data_start = 8 + header_len
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = info.get("dtype")
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
        except (AttributeError, KeyError, TypeError, ValueError):
            raise ModelFileError(f"{path}: header entry for {name} is malformed") from None
        # int() would read "123" and 256.9 as sizes; a negative begin points into the header.
        if not all(_is_count(d) for d in shape):
            raise ModelFileError(f"{path}: tensor {name} has shape {json.dumps(shape)}; "
                                 "expected non-negative integers (the file is damaged)")
        if not (_is_count(begin) and _is_count(end)) or end < begin:
            raise ModelFileError(f"{path}: tensor {name} has data_offsets "
                                 f"{json.dumps(info['data_offsets'])}; expected two "
                                 "non-negative integers, begin <= end (the file is damaged)")
        if dtype not in _ITEMSIZE:
            raise ModelFileError(
                f"{path}: tensor {name} has dtype {dtype}; expected one of "
                f"{', '.join(sorted(_ITEMSIZE))}")
        expected = int(np.prod(shape, dtype=np.int64)) * _ITEMSIZE[dtype]
        if end - begin != expected:
            raise ModelFileError(
                f"{path}: tensor {name} holds {end - begin} bytes; shape {list(shape)} "
                f"in {dtype} needs {expected}")
        if data_start + end > size:
            raise ModelFileError(
                f"{path}: tensor {name} ends at byte {data_start + end} but the file has "
                f"{size} bytes (truncated download?)")
        entries[name] = TensorEntry(name, dtype, shape, path, data_start + begin, expected)
    _check_no_overlap(path, entries)
    return entries


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_no_overlap(path: Path, entries: dict[str, TensorEntry]) -> None:
    # Two tensors sharing bytes would each be read as valid weights of the other.
    previous = None
    for entry in sorted(entries.values(), key=lambda e: (e.start, e.nbytes)):
        if previous is not None and entry.start < previous.start + previous.nbytes:
            raise ModelFileError(f"{path}: tensors {previous.name} and {entry.name} share bytes "
                                 "(their data_offsets overlap; the file is damaged)")
        previous = entry


def load_float32(entry: TensorEntry) -> np.ndarray:
    """The tensor as float32 (bf16 and f16 widened exactly)."""
    raw = np.memmap(entry.file, dtype=np.uint8, mode="r", offset=entry.start,
                    shape=(entry.nbytes,))
    if entry.dtype == "F32":
        values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    elif entry.dtype == "F16":
        values = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    else:  # BF16 is the top half of a float32
        values = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    return values.reshape(entry.shape)
