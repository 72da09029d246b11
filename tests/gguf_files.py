"""Small GGUF files written by gguf-py's own writer, for tests of metadata readers."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np


def write_gguf(path: Path, arch: str, add_content: Callable[[gguf.GGUFWriter], None]) -> Path:
    """A GGUF of architecture `arch` with the keys and tensors `add_content` adds, and
    one tiny tensor "t"."""
    writer = gguf.GGUFWriter(str(path), arch)
    add_content(writer)
    writer.add_tensor("t", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
