"""Small GGUF files written by gguf-py's own writer, for tests of metadata readers."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

from reranker.model_format import backbone_tensor_names


def write_gguf(path: Path, arch: str, add_content: Callable[[gguf.GGUFWriter], None], *,
               placeholder: bool = True) -> Path:
    """A GGUF of architecture `arch` with the keys and tensors `add_content` adds, and
    (`placeholder`) one tiny tensor "t"."""
    writer = gguf.GGUFWriter(str(path), arch)
    add_content(writer)
    if placeholder:
        writer.add_tensor("t", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def add_backbone(writer: gguf.GGUFWriter, layers: int = 1, block_count: int | None = None) -> None:
    """A block count (`layers` unless given) and every tensor of `layers` layers the runtime's
    model check asks for, each a few zeros (nothing here is loaded by llama.cpp)."""
    writer.add_block_count(layers if block_count is None else block_count)
    for name in backbone_tensor_names(layers):
        writer.add_tensor(name, np.zeros(4, dtype=np.float32))
