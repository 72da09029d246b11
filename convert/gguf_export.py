"""Write a checkpoint as a qwen3 GGUF that stock llama.cpp loads, projector in metadata."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from reranker import __version__
from convert.checkpoint import Checkpoint
from convert.errors import CheckpointError
from convert.file_types import FileType
from reranker.safetensors_file import load_float32
from convert.vocab import Vocabulary
from reranker.model_format import (ARCHITECTURE, DOC_MARKER, PROJECTOR_TENSORS, QUERY_MARKER,
                                   Keys)

# (done, total, tensor name), called after each tensor is written.
ProgressCallback = Callable[[int, int, str], None]


@dataclass(frozen=True)
class SourceInfo:
    """Where the weights came from, recorded for audits of air-gapped deployments."""
    name: str  # Hub repo id or local directory
    revision: str | None
    sha256: str


def _tensor_type(shape: tuple[int, ...], target: FileType) -> GGMLQuantizationType:
    # Norms stay F32 in every file type, as llama.cpp expects.
    if len(shape) == 1:
        return GGMLQuantizationType.F32
    assert target.direct is not None
    block, _ = gguf.GGML_QUANT_SIZES[target.direct]
    if shape[-1] % block:
        raise ValueError(f"row size ({shape[-1]}) is not a multiple of the {target.name} "
                         f"block size ({block})")
    return target.direct


def _nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block) * type_size


def _add_metadata(writer: GGUFWriter, ckpt: Checkpoint, vocab: Vocabulary, target: FileType,
                  source: SourceInfo) -> None:
    s = ckpt.shape
    writer.add_name(ckpt.config.get("_name_or_path") or "jina-reranker-v3")
    writer.add_file_type(int(target.ftype))
    if target.direct not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16,
                             GGMLQuantizationType.BF16):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(s.context_length)
    writer.add_embedding_length(s.hidden_size)
    writer.add_block_count(s.layers)
    writer.add_feed_forward_length(s.intermediate_size)
    writer.add_head_count(s.heads)
    writer.add_head_count_kv(s.kv_heads)
    # llama.cpp would assume hidden/heads (64) without these; the model uses 128.
    writer.add_key_length(s.head_dim)
    writer.add_value_length(s.head_dim)
    writer.add_rope_freq_base(s.rope_theta)
    writer.add_layer_norm_rms_eps(s.rms_norm_eps)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    if "eos" in vocab.special_ids:
        writer.add_eos_token_id(vocab.special_ids["eos"])
    if "pad" in vocab.special_ids:
        writer.add_pad_token_id(vocab.special_ids["pad"])
    if "bos" in vocab.special_ids:
        writer.add_bos_token_id(vocab.special_ids["bos"])
    writer.add_add_bos_token(False)

    writer.add_string(Keys.DOC_MARKER, DOC_MARKER)
    writer.add_string(Keys.QUERY_MARKER, QUERY_MARKER)
    for name, weight_key, shape_key in zip(PROJECTOR_TENSORS, Keys.PROJECTOR_WEIGHTS,
                                           Keys.PROJECTOR_SHAPES):
        weight = load_float32(ckpt.tensors[name])
        if not np.isfinite(weight).all():  # the runtime refuses it: every score would be NaN
            raise CheckpointError(f"{ckpt.tensors[name].file}: tensor {name} holds NaN or "
                                  "infinite values; the checkpoint is damaged, download it again")
        writer.add_array(shape_key, [int(d) for d in weight.shape])
        writer.add_array(weight_key, weight.reshape(-1).tolist())
    writer.add_string(Keys.SOURCE, source.name)
    if source.revision:
        writer.add_string(Keys.SOURCE_REVISION, source.revision)
    writer.add_string(Keys.SOURCE_SHA256, source.sha256)
    writer.add_string(Keys.SOURCE_DTYPE, ckpt.source_dtype.lower())
    writer.add_string(Keys.CONVERTER_VERSION, __version__)


def write_gguf(ckpt: Checkpoint, vocab: Vocabulary, target: FileType, path,
               source: SourceInfo, progress: ProgressCallback | None = None) -> int:
    """Stream every backbone tensor into `path` in `target`'s type; returns the tensor count.

    Tensors are read, converted and written one at a time, so peak memory is about
    one float32 copy of the largest tensor (the embedding), not of the model.
    """
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, ckpt.shape.layers)
    plan: list[tuple[str, str, GGMLQuantizationType]] = []
    for hf_name, entry in ckpt.tensors.items():
        if hf_name in PROJECTOR_TENSORS:
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for tensor {hf_name}")
        try:
            qtype = _tensor_type(entry.shape, target)
        except ValueError as e:
            raise ValueError(f"tensor {hf_name}: {e}") from None
        plan.append((hf_name, gguf_name, qtype))

    writer = GGUFWriter(path, ARCHITECTURE)
    try:
        _add_metadata(writer, ckpt, vocab, target, source)
        for hf_name, gguf_name, qtype in plan:
            shape = ckpt.tensors[hf_name].shape
            writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), _nbytes(shape, qtype),
                                   raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for done, (hf_name, gguf_name, qtype) in enumerate(plan, start=1):
            data = load_float32(ckpt.tensors[hf_name])
            if qtype != GGMLQuantizationType.F32:
                data = gguf.quants.quantize(data, qtype)
            writer.write_tensor_data(data)
            del data
            if progress:
                progress(done, len(plan), gguf_name)
    finally:
        writer.close()
    return len(plan)
