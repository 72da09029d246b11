"""Read a GGUF file's metadata and tensor table without loading any weights.

gguf-py's GGUFReader turns every element of an array into its own numpy view,
which takes seconds for the projector's ~800k floats; this reader maps the file
and turns numeric arrays into one numpy array each, so reading a model's
metadata costs milliseconds.
"""
from __future__ import annotations

import math
import mmap
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import (GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType,
                  GGUFValueType)

from reranker.errors import ModelFileError
from reranker.model_format import Keys

_MAGIC = b"GGUF"
# Little-endian numpy dtypes of the scalar value types (GGUFValueType is an IntEnum,
# so the raw type codes read from a file look these up directly).
_SCALAR = {GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
           GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
           GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "<u1", GGUFValueType.UINT64: "<u8",
           GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8"}
# llama.cpp aborts the whole process (GGML_ASSERT) on a block count outside 1..512.
MAX_LAYERS = 512


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # as llama.cpp lists it: innermost dimension first
    ggml_type: int
    offset: int = 0  # of its data, from the start of the tensor data section

    @property
    def nbytes(self) -> int | None:
        """Bytes of its data; None for a type gguf-py does not know."""
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(self.ggml_type)]
        except (ValueError, KeyError):
            return None
        if not self.shape:
            return 0
        return math.prod(self.shape[1:]) * -(-self.shape[0] // block) * type_size


@dataclass
class GGUFMetadata:
    path: Path
    version: int
    values: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0  # where the tensor data section starts in the file (aligned)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


class StringArray(Sequence):
    """A GGUF string array kept as its raw bytes and decoded one item at a time.

    The vocabulary and the merges are 151k strings each: as Python lists they held
    ~33 MB for the life of a model, to answer "is this marker in the vocabulary".
    """

    def __init__(self, raw: bytes, starts: np.ndarray):
        self._raw = raw  # each item: u64 length, then that many UTF-8 bytes
        self._starts = starts  # offset of each item's length prefix in raw

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        start = int(self._starts[index])
        (length,) = struct.unpack_from("<Q", self._raw, start)
        return self._raw[start + 8:start + 8 + length].decode("utf-8", errors="replace")

    def index(self, value, start: int = 0, stop: int | None = None) -> int:
        """First index of `value`, found by searching the raw bytes (no decoding)."""
        if isinstance(value, str):
            encoded = value.encode("utf-8")
            needle = struct.pack("<Q", len(encoded)) + encoded
            offset = self._raw.find(needle)
            while offset >= 0:  # a match must begin exactly at an item
                i = int(np.searchsorted(self._starts, offset))
                if i < len(self._starts) and self._starts[i] == offset:
                    if start <= i and (stop is None or i < stop):
                        return i
                offset = self._raw.find(needle, offset + 1)
        raise ValueError(f"{value!r} is not in the array")

    def __contains__(self, value) -> bool:
        try:
            self.index(value)
        except ValueError:
            return False
        return True

    def __eq__(self, other) -> bool:
        if isinstance(other, StringArray):
            return self._raw == other._raw
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"StringArray({len(self)} items)"


class _Cursor:
    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise ModelFileError(f"{self.path}: truncated GGUF metadata")
        # Slicing an mmap copies, so nothing keeps the mapping open afterwards.
        chunk = self.buf[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return bytes(self.take(self.scalar("<Q"))).decode("utf-8", errors="replace")

    def strings(self, count: int) -> StringArray:
        first = self.pos
        starts = np.empty(count, dtype=np.int64)
        for i in range(count):
            starts[i] = self.pos - first
            length = self.scalar("<Q")
            self.pos += length  # the item's bytes are read when it is asked for
        if self.pos > len(self.buf):
            raise ModelFileError(f"{self.path}: truncated GGUF metadata")
        return StringArray(bytes(self.buf[first:self.pos]), starts)

    def value(self, vtype: int):
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            item_type, count = self.scalar("<I"), self.scalar("<Q")
            if item_type == GGUFValueType.STRING:
                return self.strings(count)
            if item_type not in _SCALAR:
                raise ModelFileError(f"{self.path}: unknown GGUF array type {item_type}")
            dtype = np.dtype(_SCALAR[item_type])
            return np.frombuffer(self.take(dtype.itemsize * count), dtype=dtype)
        if vtype not in _SCALAR:
            raise ModelFileError(f"{self.path}: unknown GGUF value type {vtype}")
        dtype = np.dtype(_SCALAR[vtype])
        value = np.frombuffer(self.take(dtype.itemsize), dtype=dtype)[0].item()
        return bool(value) if vtype == GGUFValueType.BOOL else value


def read_metadata(path: str | Path) -> GGUFMetadata:
    """Parse the header, every key/value and the tensor table of a GGUF file.

    Also refuses a file whose tensor data runs past its end (cut short), whose layer
    count, width or context length is zero, or whose keys read by the runtime hold the
    wrong kind of value: llama.cpp fails on the first with no reason given, aborts the
    process or loads a model that cannot score on the second, and the runtime raised
    tracebacks on the third.
    """
    path = Path(path)
    try:
        # Opening a FIFO waits for a writer: forever, for a command asked to inspect one.
        if path.exists() and not path.is_dir() and not path.is_file():
            raise ModelFileError(f"{path} is not a regular file (a pipe, socket or device); "
                                 "give the path of a GGUF file")
        with open(path, "rb") as f:
            if path.stat().st_size < 24:
                raise ModelFileError(f"{path}: too small to be a GGUF file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return _parse(mapped, path)
    except FileNotFoundError as e:
        raise ModelFileError(f"model file {path} does not exist") from e
    except IsADirectoryError as e:
        raise ModelFileError(f"{path} is a directory, not a GGUF file") from e
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read: {e.strerror or e}") from e


def _parse(buf, path: Path) -> GGUFMetadata:
    cursor = _Cursor(buf, path)
    if bytes(cursor.take(4)) != _MAGIC:
        raise ModelFileError(f"{path} is not a GGUF file (bad magic bytes)")
    version = cursor.scalar("<I")
    if version not in (2, 3) and int.from_bytes(version.to_bytes(4, "little"), "big") in (2, 3):
        raise ModelFileError(f"{path} is a big-endian GGUF, which llama.cpp reads only on "
                             "big-endian machines; convert the model again here")
    if version not in (2, 3):
        raise ModelFileError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    n_tensors, n_kv = cursor.scalar("<Q"), cursor.scalar("<Q")
    meta = GGUFMetadata(path, version)
    try:
        for _ in range(n_kv):
            key = cursor.string()
            meta.values[key] = cursor.value(cursor.scalar("<I"))
        for _ in range(n_tensors):
            name = cursor.string()
            dims = tuple(cursor.scalar("<Q") for _ in range(cursor.scalar("<I")))
            ggml_type = cursor.scalar("<I")
            meta.tensors.append(TensorInfo(name, dims, ggml_type, cursor.scalar("<Q")))
    except (struct.error, ValueError, MemoryError) as e:
        raise ModelFileError(f"{path}: corrupt GGUF metadata ({e})") from e
    meta.data_offset = _check_tensor_data(meta, cursor.pos, len(buf))
    _check_sizes(meta)
    _check_value_types(meta)
    return meta


def _check_tensor_data(meta: GGUFMetadata, metadata_end: int, file_size: int) -> int:
    """The tensor data must lie within the file: a cut-short copy or download is refused
    here, by name, instead of by llama.cpp at load (or never, by a metadata-only reader).
    Returns where the tensor data section starts."""
    alignment = meta.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment < 1:
        raise ModelFileError(f"{meta.path}: corrupt GGUF metadata (general.alignment is "
                             f"{alignment!r})")
    data_start = -(-metadata_end // alignment) * alignment
    extents = [t.offset + t.nbytes for t in meta.tensors if t.nbytes is not None]
    if not extents:
        return data_start
    needed = data_start + max(extents)
    if needed > file_size:
        raise ModelFileError(
            f"{meta.path} is truncated: its tensors need {needed} bytes but the file has "
            f"{file_size} (an interrupted download or copy?); copy, pull or convert it again")
    return data_start


def _check_value_types(meta: GGUFMetadata) -> None:
    """Keys the runtime reads must hold the kind of value it reads (a vocabulary of strings,
    numeric projector arrays): else a damaged file fails deep inside, with a traceback."""
    expected = {Keys.ARCHITECTURE: (str, "a string"), Keys.TOKENS: (StringArray, "strings")}
    for key in Keys.PROJECTOR_WEIGHTS + Keys.PROJECTOR_SHAPES:
        expected[key] = (np.ndarray, "numbers")
    for key, (kind, description) in expected.items():
        value = meta.get(key)
        if value is not None and not isinstance(value, kind):
            raise ModelFileError(f"{meta.path}: {key} holds {type(value).__name__}, not "
                                 f"{description} (the file is damaged or was written wrongly)")


def _check_sizes(meta: GGUFMetadata) -> None:
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return
    for name in ("block_count", "embedding_length", "context_length", "feed_forward_length",
                 "attention.head_count", "attention.head_count_kv", "attention.key_length",
                 "attention.value_length"):
        key = f"{arch}.{name}"
        value = meta.get(key)
        if value is None:
            continue  # not every GGUF is a language model; llama.cpp refuses a missing key
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 \
                or (name == "block_count" and value > MAX_LAYERS):
            wanted = (f"from 1 to {MAX_LAYERS}, llama.cpp's limit" if name == "block_count"
                      else "a positive integer")
            raise ModelFileError(f"{meta.path}: {key} is {value!r}; it must be {wanted} (the "
                                 "file is damaged or was written wrongly)")
    heads = meta.get(f"{arch}.attention.head_count")
    kv_heads = meta.get(f"{arch}.attention.head_count_kv")
    if heads is not None and kv_heads is not None and heads % kv_heads:
        raise ModelFileError(f"{meta.path}: {arch}.attention.head_count ({heads}) is not a "
                             f"multiple of {arch}.attention.head_count_kv ({kv_heads}) (the file "
                             "is damaged or was written wrongly)")
    # llama.cpp asserts on these (GGML_ASSERT(eps >= 0.0f) aborts the process on a NaN).
    for name in ("attention.layer_norm_rms_epsilon", "rope.freq_base"):
        key = f"{arch}.{name}"
        value = meta.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise ModelFileError(f"{meta.path}: {key} is {value!r}; it must be a positive "
                                 "finite number (the file is damaged or was written wrongly)")
