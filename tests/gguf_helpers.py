"""Reading converted GGUF files back with gguf-py, for the converter tests."""
from __future__ import annotations

import gguf
import numpy as np


def gguf_tensors(path) -> dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType]]:
    """name -> (values dequantized to float32 in [out, in] shape, stored type)."""
    reader = gguf.GGUFReader(path)
    out = {}
    for tensor in reader.tensors:
        shape = tuple(int(d) for d in reversed(tensor.shape))
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        out[tensor.name] = (np.asarray(values, dtype=np.float32).reshape(shape), tensor.tensor_type)
    return out
