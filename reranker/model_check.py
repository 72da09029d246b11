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
from reranker.model_format import ARCHITECTURE, DOC_MARKER, QUERY_MARKER, Keys
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
