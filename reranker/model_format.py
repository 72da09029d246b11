"""The contract between the converter and the runtime: what a model file holds.

A converted model is one qwen3 GGUF that stock llama.cpp loads. llama.cpp refuses
tensors its architecture does not use, but ignores metadata keys it does not
know, so the projector (two small matrices, ~3 MB in float32) travels as float32
metadata arrays under the keys below. One file is one deployable model, and
llama.cpp's quantizer copies all metadata, so requantizing carries the projector.

Jina's published GGUF layout (a backbone GGUF with `projector.safetensors` beside
it) is read too; see `reranker.projector`.
"""
from __future__ import annotations

from gguf import LlamaFileType

ARCHITECTURE = "qwen3"
DOC_MARKER = "<|embed_token|>"
QUERY_MARKER = "<|rerank_token|>"
PROJECTOR_SIDECAR = "projector.safetensors"
PROJECTOR_TENSORS = ("projector.0.weight", "projector.2.weight")
# The backbone's tensors, which llama.cpp's qwen3 loader requires (it refuses a file that
# lacks one or holds any other); `output.weight` may be left out, since Qwen3-0.6B ties it
# to the token embeddings.
BACKBONE_TENSORS = ("token_embd.weight", "output_norm.weight")
OPTIONAL_OUTPUT_TENSOR = "output.weight"
LAYER_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm",
                 "attn_k_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")


def backbone_tensor_names(layers: int) -> list[str]:
    """Every tensor name a qwen3 GGUF of `layers` layers must hold."""
    return [*BACKBONE_TENSORS,
            *(f"blk.{i}.{part}.weight" for i in range(layers) for part in LAYER_TENSORS)]


# Unquantized file types: what llama.cpp's quantizer should start from, and where
# exact arithmetic is the point of choosing them.
FLOAT_FILE_TYPES = frozenset({LlamaFileType.ALL_F32, LlamaFileType.MOSTLY_F16,
                              LlamaFileType.MOSTLY_BF16})


class Keys:
    """GGUF metadata keys this project writes, beside llama.cpp's own."""

    PREFIX = "jina_reranker."
    DOC_MARKER = PREFIX + "doc_marker"
    QUERY_MARKER = PREFIX + "query_marker"
    # Row-major float32 weights and their [out, in] shapes, one pair per layer.
    PROJECTOR_WEIGHTS = (PREFIX + "projector.0.weight", PREFIX + "projector.2.weight")
    PROJECTOR_SHAPES = (PREFIX + "projector.0.shape", PREFIX + "projector.2.shape")
    SOURCE = PREFIX + "source"  # local path or Hub repo id
    SOURCE_REVISION = PREFIX + "source.revision"
    SOURCE_SHA256 = PREFIX + "source.sha256"  # of the weight files, in name order
    SOURCE_DTYPE = PREFIX + "source.dtype"
    CONVERTER_VERSION = PREFIX + "converter.version"
    # Stock llama.cpp keys read back by `inspect` and the runtime.
    ARCHITECTURE = "general.architecture"
    NAME = "general.name"
    FILE_TYPE = "general.file_type"
    TOKENS = "tokenizer.ggml.tokens"
