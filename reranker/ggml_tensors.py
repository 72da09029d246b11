"""The few ggml functions needed to read a tensor inside llama.cpp's eval callback.

llama-cpp-python binds llama.h but not ggml's tensor accessors; they are exported
by the libggml-base it ships next to libllama.
"""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np


@functools.lru_cache(maxsize=1)
def _ggml_base() -> ctypes.CDLL:
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("ggml-base.*"))
    if not candidates:
        raise OSError(f"libggml-base was not found in {lib_dir}")
    lib = ctypes.CDLL(str(candidates[0]))
    lib.ggml_get_name.argtypes = [ctypes.c_void_p]
    lib.ggml_get_name.restype = ctypes.c_char_p
    lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_nrows.argtypes = [ctypes.c_void_p]
    lib.ggml_nrows.restype = ctypes.c_int64
    lib.ggml_nelements.argtypes = [ctypes.c_void_p]
    lib.ggml_nelements.restype = ctypes.c_int64
    lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                            ctypes.c_size_t]
    lib.ggml_backend_tensor_get.restype = None
    return lib


def tensor_name(tensor: int) -> bytes:
    return _ggml_base().ggml_get_name(tensor)


def copy_f32_rows(tensor: int) -> np.ndarray:
    """A computed float32 tensor as a [rows, columns] array (copied out of ggml)."""
    lib = _ggml_base()
    rows, elements = lib.ggml_nrows(tensor), lib.ggml_nelements(tensor)
    nbytes = lib.ggml_nbytes(tensor)
    if rows == 0 or elements == 0:
        return np.empty((0, 0), dtype=np.float32)
    if nbytes != elements * 4:
        raise RuntimeError(f"expected a contiguous float32 tensor, got {nbytes} bytes "
                           f"for {elements} elements")
    out = np.empty((rows, elements // rows), dtype=np.float32)
    lib.ggml_backend_tensor_get(tensor, out.ctypes.data, 0, nbytes)
    return out
