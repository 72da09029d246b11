"""What a model file is: read from its metadata alone, without loading weights."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from gguf import GGMLQuantizationType, LlamaFileType

from reranker.gguf_metadata import read_metadata
from reranker.model_check import reranker_file_problem
from reranker.model_format import DOC_MARKER, QUERY_MARKER, Keys
from reranker.projector import find_sidecar, projector_from_metadata


def _enum_name(enum, value) -> str:
    try:
        return enum(value).name.removeprefix("MOSTLY_").lower()
    except ValueError:
        return str(value)


def file_type_name(ftype: int) -> str:
    """A llama_ftype as the CLI's --type names it (f32, q8_0, q4_k_m...)."""
    return "f32" if ftype == LlamaFileType.ALL_F32 else _enum_name(LlamaFileType, ftype)


def describe_model(path: str | Path) -> dict:
    path = Path(path)
    meta = read_metadata(path)
    arch = meta.get(Keys.ARCHITECTURE)
    tokens = meta.get(Keys.TOKENS) or []
    markers = {}
    for marker in (DOC_MARKER, QUERY_MARKER):
        markers[marker] = tokens.index(marker) if marker in tokens else None
    projector = projector_from_metadata(meta)
    sidecar = find_sidecar(path)  # the file the runtime would load, if it has to
    if projector is not None:
        projector_info = {"where": "embedded in the GGUF metadata",
                          "shapes": [list(projector.first.shape), list(projector.second.shape)]}
    elif sidecar is not None:
        projector_info = {"where": str(sidecar), "shapes": None}
    else:
        projector_info = None
    types = Counter(_enum_name(GGMLQuantizationType, t.ggml_type) for t in meta.tensors)
    return {
        "file": str(path),
        "size_bytes": path.stat().st_size,
        "architecture": arch,
        "name": meta.get(Keys.NAME),
        "file_type": file_type_name(meta.get(Keys.FILE_TYPE, 0)),
        "tensor_count": len(meta.tensors),
        "tensor_types": dict(types.most_common()),
        "layers": meta.get(f"{arch}.block_count"),
        "hidden_size": meta.get(f"{arch}.embedding_length"),
        "context_length": meta.get(f"{arch}.context_length"),
        "vocab_size": len(tokens),
        "markers": markers,
        "projector": projector_info,
        "source": meta.get(Keys.SOURCE),
        "source_revision": meta.get(Keys.SOURCE_REVISION),
        "source_sha256": meta.get(Keys.SOURCE_SHA256),
        "converter_version": meta.get(Keys.CONVERTER_VERSION),
        # The runtime's own verdict (None: it would load this file), not a second opinion.
        "problem": reranker_file_problem(path, meta),
    }
