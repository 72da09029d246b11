"""Whether a GGUF is a jina-reranker-v3 model: decided here, for every caller.

A reranker file is a qwen3 GGUF whose vocabulary holds both marker tokens, with a
projector: embedded in its metadata (`reranker-cli convert`), passed explicitly, or
beside it as `projector.safetensors` or `<stem>.projector.safetensors` (Jina's
published layout, `reranker.projector.find_projector`). `Reranker` opens its model
through `open_reranker_file`, `serve` calls it before starting any worker, `inspect`
reports its answer and `quantize` its metadata half, so none of them can disagree.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reranker.errors import ModelFileError
from reranker.gguf_metadata import GGUFMetadata, read_metadata
from reranker.model_format import (ARCHITECTURE, DOC_MARKER, OPTIONAL_OUTPUT_TENSOR,
                                   QUERY_MARKER, Keys, backbone_tensor_names)
from reranker.projector import Projector, find_projector


@dataclass(frozen=True)
class RerankerFile:
    path: Path
    metadata: GGUFMetadata
    projector: Projector


def check_reranker_metadata(meta: GGUFMetadata) -> None:
    """Raise ModelFileError unless the metadata is a qwen3 model with both marker tokens."""
    arch = meta.get(Keys.ARCHITECTURE)
    if arch != ARCHITECTURE:
        raise ModelFileError(f"{meta.path} is a {arch!r} model; expected {ARCHITECTURE} "
                             "(a jina-reranker-v3 GGUF)")
    tokens = meta.get(Keys.TOKENS) or []
    for marker in (DOC_MARKER, QUERY_MARKER):
        if marker not in tokens:
            raise ModelFileError(f"{meta.path}: the vocabulary has no {marker}; "
                                 "this is not a jina-reranker-v3 model")
    _check_tensor_table(meta)


def _check_tensor_table(meta: GGUFMetadata) -> None:
    """The tensors llama.cpp will look for, as the metadata describes the model: it refuses
    a file that lacks one, holds any other, or has a tensor type it does not know, and
    `inspect` must not call such a file loadable (nor `quantize` copy it)."""
    layers = meta.get(f"{ARCHITECTURE}.block_count")
    if layers is None:
        raise ModelFileError(f"{meta.path} has no {ARCHITECTURE}.block_count (the file is "
                             "damaged or was written wrongly)")
    present = {tensor.name for tensor in meta.tensors}
    expected = backbone_tensor_names(layers)
    missing = [name for name in expected if name not in present]
    if missing:
        raise ModelFileError(f"{meta.path} lacks {len(missing)} of the tensors of a {layers}-layer "
                             f"model (the first: {missing[0]}); the file is incomplete or "
                             "damaged: convert or download it again")
    extra = sorted(present - set(expected) - {OPTIONAL_OUTPUT_TENSOR})
    if extra:
        layer = _layer_of(extra[0])
        where = (f"beyond its {ARCHITECTURE}.block_count of {layers} layers"
                 if layer is not None and layer >= layers else "which a qwen3 model has not")
        raise ModelFileError(f"{meta.path} holds {extra[0]}, {where} (the file is damaged "
                             "or was written wrongly)")
    for tensor in meta.tensors:
        if tensor.nbytes is None:
            raise ModelFileError(f"{meta.path}: tensor {tensor.name} has type id "
                                 f"{tensor.ggml_type}, which this llama.cpp does not know (a "
                                 "damaged file, or one made for a newer llama.cpp)")


def _layer_of(name: str) -> int | None:
    prefix, _, rest = name.partition(".")
    layer = rest.partition(".")[0]
    return int(layer) if prefix == "blk" and layer.isascii() and layer.isdigit() else None


def open_reranker_file(path: str | Path, projector: str | Path | None = None,
                       metadata: GGUFMetadata | None = None) -> RerankerFile:
    """The file's metadata and projector, or ModelFileError saying why it is not a reranker.

    Reads metadata and the projector only (milliseconds), never the weights.
    """
    path = Path(path)
    meta = metadata if metadata is not None else read_metadata(path)
    check_reranker_metadata(meta)
    return RerankerFile(path, meta, find_projector(path, meta, projector))


def reranker_file_problem(path: str | Path, metadata: GGUFMetadata | None = None) -> str | None:
    """Why the runtime would refuse this file, or None if it would open it."""
    try:
        open_reranker_file(path, metadata=metadata)
    except ModelFileError as error:
        return str(error)
    return None
