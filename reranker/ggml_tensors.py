"""The few ggml functions needed to read a tensor inside llama.cpp's eval callback.

llama-cpp-python binds llama.h but not ggml's tensor accessors; they are exported
by the libggml-base it ships next to libllama.
"""
from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import numpy as np


def llama_library_dir() -> Path:
    """Where llama-cpp-python loads llama.cpp from: $LLAMA_CPP_LIB_PATH (a build of one's
    own, as llama-cpp-python itself honours it) or the libraries it ships."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override:
        return Path(override)
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def ggml_library(stem: str) -> Path:
    """The shared library `stem` ("ggml", "ggml-base", "ggml-cpu"...) next to libllama."""
    lib_dir = llama_library_dir()
    found = sorted(lib_dir.glob(f"lib{stem}.*")) + sorted(lib_dir.glob(f"{stem}.*"))
    if not found:
        raise OSError(f"{stem} was not found in {lib_dir}")
    return found[0]


@functools.lru_cache(maxsize=1)
def _ggml_base() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(ggml_library("ggml-base")))
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
