"""Facts about the CPU under this process and the llama.cpp build driving it.

These decide which of llama.cpp's weight layouts is safe to load (see `cpu_path`)
and are what `reranker-cli doctor` prints for a bug report. Everything here is read,
nothing is changed: the CPU from /proc/cpuinfo, the build from ggml's own backend
registry (the extra buffer types it registered on this CPU, the features it was
compiled with) and the compiler from the shared library's ELF `.comment` section.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import struct
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from reranker.ggml_tensors import ggml_library

# The /proc/cpuinfo flags that decide which ggml kernels can run, in the order shown.
NOTABLE_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                 "amx_tile", "amx_int8", "amx_bf16")
AMX_BUFFER_TYPE = "AMX"
REPACK_BUFFER_TYPE = "CPU_REPACK"
_GGML_DEVICE_TYPE_CPU = 0  # enum ggml_backend_dev_type


@dataclass(frozen=True)
class CpuInfo:
    model: str
    logical_cpus: int
    usable_cpus: int  # those this process may run on
    flags: frozenset[str] = field(repr=False)

    @property
    def notable_flags(self) -> dict[str, bool]:
        return {flag: flag in self.flags for flag in NOTABLE_FLAGS}

    @property
    def has_amx(self) -> bool:
        return "amx_int8" in self.flags and "amx_tile" in self.flags


def read_cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """The CPU model and flags (empty flags where /proc/cpuinfo does not exist)."""
    model, flags = "", frozenset()
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86 / arm64
            flags = frozenset(value.split())
    logical = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = logical
    return CpuInfo(model or platform.processor() or platform.machine() or "unknown",
                   logical, usable, flags)


@dataclass(frozen=True)
class LlamaBuild:
    """The llama.cpp that llama-cpp-python loaded into this process."""
    llama_cpp_python: str
    library: Path  # the CPU backend's shared library
    compiler: str | None  # from the library's .comment section, when it records one
    cpu_features: dict[str, str]  # what the CPU backend was compiled with (AVX2, AMX_INT8, ...)
    extra_buffer_types: tuple[str, ...]  # registered on this CPU, in llama.cpp's order of choice
    system_info: str

    @property
    def has_amx_buffer(self) -> bool:
        return AMX_BUFFER_TYPE in self.extra_buffer_types

    @functools.cached_property
    def fingerprint(self) -> str:
        """Identifies this exact build of the CPU kernels (the bytes of the library)."""
        digest = hashlib.sha256()
        with open(self.library, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()[:16]


class _Feature(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_char_p)]


@functools.lru_cache(maxsize=1)
def read_llama_build() -> LlamaBuild:
    """Ask the loaded ggml which CPU features and extra buffer types it has (cached)."""
    import llama_cpp

    ggml = ctypes.CDLL(str(ggml_library("ggml")))
    base = ctypes.CDLL(str(ggml_library("ggml-base")))
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    ggml.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    base.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    base.ggml_backend_buft_name.restype = ctypes.c_char_p

    features: dict[str, str] = {}
    buffers: list[str] = []
    device = ggml.ggml_backend_dev_by_type(_GGML_DEVICE_TYPE_CPU)
    if device:
        registry = ggml.ggml_backend_dev_backend_reg(device)
        address = ggml.ggml_backend_reg_get_proc_address(registry, b"ggml_backend_get_features")
        if address:
            get_features = ctypes.CFUNCTYPE(ctypes.POINTER(_Feature), ctypes.c_void_p)(address)
            items = get_features(registry)
            i = 0
            while items and items[i].name:
                features[items[i].name.decode()] = (items[i].value or b"").decode()
                i += 1
        address = ggml.ggml_backend_reg_get_proc_address(registry,
                                                          b"ggml_backend_dev_get_extra_bufts")
        if address:
            get_bufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(address)
            types = get_bufts(device)
            i = 0
            while types and types[i]:
                buffers.append(base.ggml_backend_buft_name(types[i]).decode())
                i += 1
    try:
        cpu_library = ggml_library("ggml-cpu")
    except OSError:  # a build with the CPU backend inside libggml
        cpu_library = ggml_library("ggml")
    try:
        version = metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        version = getattr(llama_cpp, "__version__", "unknown")
    return LlamaBuild(llama_cpp_python=version, library=cpu_library,
                      compiler=elf_comment(cpu_library), cpu_features=features,
                      extra_buffer_types=tuple(buffers),
                      system_info=llama_cpp.llama_print_system_info().decode(errors="replace")
                      .strip())


def elf_comment(path: Path) -> str | None:
    """The compiler line(s) GCC and clang leave in an ELF file's `.comment` section.

    None for files that are not 64-bit little-endian ELF or have no such section.
    """
    try:
        with open(path, "rb") as file:
            header = file.read(64)
            if header[:6] != b"\x7fELF\x02\x01":
                return None
            section_offset, = struct.unpack_from("<Q", header, 0x28)
            entry_size, count, names_index = struct.unpack_from("<HHH", header, 0x3A)
            file.seek(section_offset)
            table = file.read(entry_size * count)
            sections = [struct.unpack_from("<IIQQQQ", table, i * entry_size)
                        for i in range(count)]
            names_at, names_size = sections[names_index][4], sections[names_index][5]
            file.seek(names_at)
            names = file.read(names_size)
            for name_offset, _type, _flags, _addr, offset, size in sections:
                name = names[name_offset:names.index(b"\0", name_offset)]
                if name == b".comment":
                    file.seek(offset)
                    lines = file.read(size).split(b"\0")
                    text = "; ".join(dict.fromkeys(x.decode(errors="replace")
                                                   for x in lines if x))
                    return text or None
    except (OSError, struct.error, ValueError, IndexError):
        return None
    return None
