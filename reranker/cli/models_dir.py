"""Where models live by default, and how `--model` names are resolved."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import click

from convert.output import atomic_output

DEFAULT_MODEL_NAME = "jina-reranker-v3-q8_0"
DEFAULT_HUB_REPO = "jinaai/jina-reranker-v3"
MODELS_DIR_ENV = "RERANKER_MODELS_DIR"
# In the models folder: the model to use without --model (a path relative to the
# folder). `pull` writes it; it travels with the folder to an air-gapped machine.
DEFAULT_RECORD = "DEFAULT_MODEL"
MODEL_HELP = ("GGUF file, directory, or name of a model in models/ (default: the model "
              "`pull` fetched last, else the only one in models/, else "
              f"{DEFAULT_MODEL_NAME}.gguf among several).")


def models_dir() -> Path:
    """$RERANKER_MODELS_DIR, else ./models."""
    return Path(os.environ.get(MODELS_DIR_ENV) or "models")


@contextlib.contextmanager
def models_dir_for_output() -> Iterator[Path]:
    """The models folder, created if need be for a command's output, and removed again if
    the command fails while it is still empty (a failed first pull left an empty folder).
    A file in its place is an error, not a traceback."""
    folder = models_dir()
    if folder.exists() and not folder.is_dir():
        raise click.ClickException(f"the models folder {folder} (${MODELS_DIR_ENV}, else "
                                   "./models) is a file; point it at a directory")
    existed = folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):  # not empty: something was written, keep it
                folder.rmdir()
        raise


def record_default_model(model: Path) -> Path:
    """Make `model`, a file in the models folder, the one used without --model."""
    folder = models_dir()
    with atomic_output(folder / DEFAULT_RECORD, force=True) as tmp:
        tmp.write_text(model.relative_to(folder).as_posix() + "\n", encoding="utf-8")
    return folder / DEFAULT_RECORD


def _recorded_default(folder: Path) -> Path | None:
    """The model the record names, if the record and that file are there."""
    try:
        name = (folder / DEFAULT_RECORD).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    # A model deleted since it was pulled: the other rules choose among what is left.
    return folder / name if name and (folder / name).is_file() else None


def _models_in(folder: Path) -> list[Path]:
    """GGUF files in the folder and one level down (where `pull --file` puts them)."""
    found = [*sorted(folder.glob("*.gguf")), *sorted(folder.glob("*/*.gguf"))]
    return [p for p in found if not p.name.startswith(".") and p.is_file()]


def default_model() -> Path:
    """The model `pull` recorded last, else the only GGUF in the models folder, else the
    one with the default name among several; otherwise an error listing the choices."""
    folder = models_dir()
    recorded = _recorded_default(folder)
    if recorded is not None:
        return recorded
    found = _models_in(folder)
    if len(found) == 1:
        return found[0]
    if folder / f"{DEFAULT_MODEL_NAME}.gguf" in found:
        return folder / f"{DEFAULT_MODEL_NAME}.gguf"
    if not found:
        raise click.ClickException(
            f"no model given and {folder}/ holds none. On a connected machine run "
            f"`reranker-cli pull` (downloads {DEFAULT_HUB_REPO} and converts it), or convert "
            "a local checkpoint with `reranker-cli convert DIR`; then pass --model or copy "
            "the file there.")
    names = ", ".join(p.relative_to(folder).as_posix() for p in found)
    raise click.ClickException(
        f"no model given and {folder}/ holds {len(found)} models ({names}); pass --model "
        f"with one of them, or write its name into {folder / DEFAULT_RECORD}")


def resolve_model(name: str | None) -> Path:
    """A GGUF path, a directory, or the name of a model under the models folder."""
    if name is None:
        return default_model()
    if name == "":  # pathlib reads it as ".": an unset $MODEL would pick whatever is here
        raise click.ClickException("the model is empty; give a GGUF path or a model name, or "
                                   "leave it out for the default model")
    path = Path(name).expanduser()
    if path.exists():
        return path
    for candidate in (models_dir() / name, models_dir() / f"{name}.gguf"):
        if candidate.exists():
            return candidate
    raise click.ClickException(
        f"model {name!r} is neither a file nor a directory, nor a model in {models_dir()}/ "
        "(see `reranker-cli inspect` and `reranker-cli pull`)")
