"""Where models live by default, and how `--model` names are resolved."""
from __future__ import annotations

import os
from pathlib import Path

import click

DEFAULT_MODEL_NAME = "jina-reranker-v3-q8_0"
DEFAULT_HUB_REPO = "jinaai/jina-reranker-v3"
MODELS_DIR_ENV = "RERANKER_MODELS_DIR"


def models_dir() -> Path:
    """$RERANKER_MODELS_DIR, else ./models."""
    return Path(os.environ.get(MODELS_DIR_ENV) or "models")


def resolve_model(name: str | None) -> Path:
    """A GGUF path, a directory, or the name of a model under the models folder."""
    if name is None:
        candidate = models_dir() / f"{DEFAULT_MODEL_NAME}.gguf"
        if candidate.exists():
            return candidate
        raise click.ClickException(
            f"no model given and the default model {candidate} is not there. On a connected "
            f"machine run `reranker-cli pull` (downloads {DEFAULT_HUB_REPO} and converts it), "
            "or convert a local checkpoint with `reranker-cli convert DIR`; then pass "
            "--model or copy the file there.")
    path = Path(name).expanduser()
    if path.exists():
        return path
    for candidate in (models_dir() / name, models_dir() / f"{name}.gguf"):
        if candidate.exists():
            return candidate
    raise click.ClickException(
        f"model {name!r} is neither a file nor a directory, nor a model in {models_dir()}/ "
        "(see `reranker-cli inspect` and `reranker-cli pull`)")
