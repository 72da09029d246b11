"""The backbone's weights read from a GGUF file into PyTorch tensors of one dtype.

The same file llama.cpp loads: f32, f16 and bf16 tensors are copied straight into the
target dtype; quantized ones (q8_0, and any type gguf-py's `dequantize` knows) are
dequantized a slice of rows at a time, so loading in bf16 never holds a float32 copy
of more than one slice. The token embedding (151936 rows, a quarter of the model) is
kept as the file stores it and only the rows a prompt uses are dequantized.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from reranker.errors import ModelFileError
from reranker.gguf_metadata import GGUFMetadata, TensorInfo

# Rows dequantized at once: 4096 rows of 1024 floats is a 16 MB float32 scratch.
_ROWS_PER_SLICE = 4096
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_DIRECT = {GGMLQuantizationType.F32: (np.float32, torch.float32),
           GGMLQuantizationType.F16: (np.float16, torch.float16),
           GGMLQuantizationType.BF16: (np.uint16, torch.bfloat16)}


class UnsupportedTensorTypeError(ModelFileError):
    """A tensor type the torch engine cannot dequantize."""


@dataclass(frozen=True)
class QuantizedRows:
    """A 2-D tensor kept in its file type; rows are dequantized on demand."""
    raw: np.ndarray  # [rows, bytes per row], uint8
    qtype: GGMLQuantizationType
    columns: int

    def rows(self, index: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        values = _dequantize_rows(self.raw[index], self.qtype).reshape(len(index), self.columns)
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(dtype)


@dataclass(frozen=True)
class Q8Matrix:
    """A q8_0 matrix kept as the file stores it: int8 values, one scale per 32 of them.

    A quarter of float32's memory and half of float16's, and exact: `widened` gives
    the q8_0 values (scale x int8, exact in float32), as gguf-py's dequantizer does.
    """
    values: torch.Tensor  # [rows, columns], int8
    scales: torch.Tensor  # [rows, columns / 32, 1], float32
    dtype = torch.int8

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    def widened(self, dtype: torch.dtype) -> torch.Tensor:
        rows, columns = self.values.shape
        blocks = self.values.view(rows, -1, 32).to(dtype)
        return blocks.mul_(self.scales.to(dtype)).view(rows, columns)


class GGUFWeights:
    """Reads named tensors of one GGUF file (whose metadata was already read and checked)."""

    def __init__(self, metadata: GGUFMetadata):
        self.metadata = metadata
        self.path: Path = metadata.path
        self._infos = {t.name: t for t in metadata.tensors}

    def __contains__(self, name: str) -> bool:
        return name in self._infos

    def _info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise ModelFileError(f"{self.path} has no tensor {name}; it is not a complete "
                                 "qwen3 backbone") from None

    def _raw(self, info: TensorInfo) -> tuple[np.ndarray, GGMLQuantizationType]:
        """The tensor's bytes, copied into memory, as [rows, bytes per row]."""
        qtype = _known_type(info, self.path)
        rows = math.prod(info.shape[1:]) if len(info.shape) > 1 else 1
        data = np.fromfile(self.path, dtype=np.uint8, count=info.nbytes,
                           offset=self.metadata.data_offset + info.offset)
        if data.size != info.nbytes:
            raise ModelFileError(f"{self.path}: tensor {info.name} is cut short")
        return data.reshape(rows, -1), qtype

    def tensor(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """Tensor `name` in `dtype`, checked to have `shape` (PyTorch order, outermost first).

        Asked for float16, a tensor with values float16 cannot hold (past 65504: an f32
        tensor, or a quantized block with a large scale) comes back in float32 instead of
        as infinities.
        """
        info = self._info(name)
        if tuple(reversed(info.shape)) != shape:
            raise ModelFileError(f"{self.path}: tensor {name} has shape "
                                 f"{list(reversed(info.shape))}, expected {list(shape)}")
        raw, qtype = self._raw(info)
        if qtype in _DIRECT:
            numpy_type, torch_type = _DIRECT[qtype]
            direct = torch.from_numpy(raw.view(numpy_type).reshape(shape)).view(torch_type)
            if dtype == torch.float16 and qtype != GGMLQuantizationType.F16:
                wide = direct.float() if qtype == GGMLQuantizationType.BF16 else direct
                if not _fits_float16(wide.numpy()):
                    dtype = torch.float32
            return direct.to(dtype)
        out = torch.empty((raw.shape[0], info.shape[0]), dtype=dtype)
        for start in range(0, raw.shape[0], _ROWS_PER_SLICE):
            block = _dequantize(raw[start:start + _ROWS_PER_SLICE], qtype, info, self.path)
            if dtype == torch.float16 and not _fits_float16(block):
                return self.tensor(name, torch.float32, shape)
            out[start:start + block.shape[0]] = torch.from_numpy(block)
        return out.reshape(shape)

    def q8_matrix(self, name: str, shape: tuple[int, int]) -> Q8Matrix | None:
        """A [rows, columns] tensor kept as stored if it is q8_0; None for another type."""
        info = self._info(name)
        if info.ggml_type != GGMLQuantizationType.Q8_0:
            return None
        if tuple(reversed(info.shape)) != shape:
            raise ModelFileError(f"{self.path}: tensor {name} has shape "
                                 f"{list(reversed(info.shape))}, expected {list(shape)}")
        raw, _ = self._raw(info)
        scales, values = _q8_0_blocks(raw)
        return Q8Matrix(torch.from_numpy(np.ascontiguousarray(values).reshape(shape)),
                        torch.from_numpy(scales))

    def quantized_rows(self, name: str, shape: tuple[int, int]) -> QuantizedRows:
        """A [rows, columns] tensor kept in its file type, for row lookups."""
        info = self._info(name)
        if tuple(reversed(info.shape)) != shape:
            raise ModelFileError(f"{self.path}: tensor {name} has shape "
                                 f"{list(reversed(info.shape))}, expected {list(shape)}")
        raw, qtype = self._raw(info)
        _dequantize(raw[:1], qtype, info, self.path)  # an unsupported type fails at load
        return QuantizedRows(raw, qtype, shape[1])


def _fits_float16(values: np.ndarray) -> bool:
    """Whether float16 holds every value (NaN never fits). In numpy on the calling thread:
    see `_dequantize_q8_0`; max and min make no temporary array."""
    return bool(values.max() <= _FLOAT16_MAX and values.min() >= -_FLOAT16_MAX)


def _known_type(info: TensorInfo, path: Path) -> GGMLQuantizationType:
    try:
        qtype = GGMLQuantizationType(info.ggml_type)
    except ValueError:
        raise UnsupportedTensorTypeError(
            f"{path}: tensor {info.name} has ggml type {info.ggml_type}, which this gguf "
            "package does not know; use the llama.cpp engine, or convert the model again "
            "with --type q8_0, f16 or bf16") from None
    if info.nbytes is None or qtype not in GGML_QUANT_SIZES:
        raise UnsupportedTensorTypeError(f"{path}: tensor {info.name} has type {qtype.name}, "
                                         "whose size is unknown")
    return qtype


def _dequantize_q8_0(raw: np.ndarray) -> np.ndarray:
    """q8_0 rows ([rows, blocks x 34 bytes]: a float16 scale, then 32 int8) as float32.

    The same values as gguf-py's dequantizer (scale x int8, exact in float32) in one
    vectorized pass: load 4.5 -> 3.3 s for the real-size file, where gguf-py's grouping
    was half the load. Kept in numpy on the calling thread: the same with torch's
    threaded kernels left 470 MB more resident (freed temporaries held in other
    threads' malloc arenas).
    """
    scales, values = _q8_0_blocks(raw)
    widened = values.astype(np.float32)
    widened *= scales
    return widened.reshape(raw.shape[0], -1)


def _q8_0_blocks(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """q8_0 rows split into float32 scales [rows, blocks, 1] and int8 values [rows, blocks,
    32] (a view of `raw`): each 34-byte block is a float16 scale, then 32 int8."""
    blocks = raw.reshape(raw.shape[0], -1, 34)
    scales = blocks[..., :2].copy().view(np.float16).astype(np.float32)
    return scales, blocks[..., 2:].view(np.int8)


def _dequantize_rows(raw: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    if qtype == GGMLQuantizationType.Q8_0:
        return _dequantize_q8_0(raw)
    return dequantize(raw, qtype)


def _dequantize(raw: np.ndarray, qtype: GGMLQuantizationType, info: TensorInfo,
                path: Path) -> np.ndarray:
    try:
        values = _dequantize_rows(raw, qtype)
    except NotImplementedError:
        raise UnsupportedTensorTypeError(
            f"{path}: tensor {info.name} is {qtype.name}, which the torch engine cannot "
            "dequantize (gguf-py has no dequantizer for it); use the llama.cpp engine, or "
            "convert the model again with --type q8_0, f16 or bf16") from None
    return values.reshape(raw.shape[0], info.shape[0])
