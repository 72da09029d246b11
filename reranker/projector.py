"""The reranker's two-layer projector (Linear, ReLU, Linear; no bias), in numpy."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reranker.errors import ModelFileError
from reranker.gguf_metadata import GGUFMetadata
from reranker.model_format import PROJECTOR_SIDECAR, PROJECTOR_TENSORS, Keys
from reranker.safetensors_file import load_float32, read_header


@dataclass(frozen=True)
class Projector:
    first: np.ndarray  # [inner, hidden]
    second: np.ndarray  # [out, inner]
    source: str

    def __post_init__(self):
        if self.first.ndim != 2 or self.second.ndim != 2 or self.second.shape[1] != self.first.shape[0]:
            raise ModelFileError(
                f"{self.source}: projector shapes {list(self.first.shape)} and "
                f"{list(self.second.shape)} do not chain (expected [inner, hidden], [out, inner])")
        for name, matrix in (("first", self.first), ("second", self.second)):
            if not np.isfinite(matrix).all():  # every score would come out 0 (or NaN)
                raise ModelFileError(f"{self.source}: the projector's {name} matrix holds NaN "
                                     "or infinite values (the file is damaged); convert or "
                                     "download it again")

    @property
    def input_size(self) -> int:
        return self.first.shape[1]

    def check_hidden_size(self, hidden_size: int) -> None:
        if self.input_size != hidden_size:
            raise ModelFileError(f"{self.source}: the projector takes {self.input_size}-wide "
                                 f"states but the model's hidden size is {hidden_size}")

    def __call__(self, hidden: np.ndarray) -> np.ndarray:
        inner = np.maximum(hidden.astype(np.float32) @ self.first.T, 0.0)
        return inner @ self.second.T


def carries_projector(meta: GGUFMetadata) -> bool:
    """Whether the GGUF's metadata holds a projector (as `reranker-cli convert` writes it)."""
    return Keys.PROJECTOR_WEIGHTS[0] in meta.values


def projector_from_metadata(meta: GGUFMetadata) -> Projector | None:
    """The projector a converted GGUF carries, or None when it has none."""
    if not carries_projector(meta):
        return None
    matrices = []
    for weight_key, shape_key in zip(Keys.PROJECTOR_WEIGHTS, Keys.PROJECTOR_SHAPES):
        weights, shape = meta.get(weight_key), meta.get(shape_key)
        if weights is None or shape is None or len(shape) != 2:
            raise ModelFileError(f"{meta.path}: projector metadata {weight_key} is incomplete")
        rows, cols = (int(d) for d in shape)
        if weights.size != rows * cols:
            raise ModelFileError(f"{meta.path}: {weight_key} holds {weights.size} values; "
                                 f"shape {[rows, cols]} needs {rows * cols}")
        matrices.append(np.asarray(weights, dtype=np.float32).reshape(rows, cols))
    return Projector(matrices[0], matrices[1], str(meta.path))


def projector_from_safetensors(path: str | Path) -> Projector:
    """Jina's published `projector.safetensors` (tensors projector.0/2.weight)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"projector file {path} does not exist")
    entries = read_header(path)
    missing = [n for n in PROJECTOR_TENSORS if n not in entries]
    if missing:
        raise ModelFileError(f"{path}: tensor {missing[0]} is missing; expected "
                             f"{' and '.join(PROJECTOR_TENSORS)}")
    first, second = (load_float32(entries[n]) for n in PROJECTOR_TENSORS)
    return Projector(first, second, str(path))


def find_projector(model_path: Path, meta: GGUFMetadata,
                   explicit: str | Path | None = None) -> Projector:
    """An explicit file, else the GGUF's own metadata, else a sidecar next to the model."""
    if explicit is not None:
        return projector_from_safetensors(explicit)
    embedded = projector_from_metadata(meta)
    if embedded is not None:
        return embedded
    sidecar = find_sidecar(model_path)
    if sidecar is not None:
        return projector_from_safetensors(sidecar)
    candidates = sidecar_candidates(model_path)
    raise ModelFileError(
        f"{model_path} carries no projector and none was found at "
        f"{' or '.join(str(c) for c in candidates)}; convert the model with "
        "`reranker-cli convert` or pass the projector file")


def sidecar_candidates(model_path: Path) -> list[Path]:
    """Where a projector file beside a backbone GGUF is looked for, in order."""
    return [model_path.parent / PROJECTOR_SIDECAR,
            model_path.with_name(model_path.stem + "." + PROJECTOR_SIDECAR)]


def find_sidecar(model_path: Path) -> Path | None:
    """The first projector file beside the model that exists, if any."""
    return next((c for c in sidecar_candidates(model_path) if c.is_file()), None)
