"""Fetch a ready model into a models folder that can be copied to an air-gapped machine.

Two routes: the original checkpoint, downloaded and converted on the spot, or a
published GGUF repo (one quantization plus `projector.safetensors`). Either way
each file's SHA-256 is recorded in the folder's `SHA256SUMS` (the format
`sha256sum -c` checks), so the copy can be verified on the other side.
"""
from __future__ import annotations

import contextlib
import filecmp
import hashlib
import logging
import shutil
from pathlib import Path, PurePosixPath

from convert.api import ConversionSummary, convert_checkpoint
from convert.errors import CheckpointError
from convert.hub import check_repo_id, check_source_given, hub_errors, hub_unreachable
from convert.output import atomic_output
from reranker.errors import ModelFileError
from reranker.file_lock import held_exclusively
from reranker.model_check import open_reranker_file
from reranker.model_format import PROJECTOR_SIDECAR
from reranker.reranker import unpaired_surrogate

CHECKSUMS_FILE = "SHA256SUMS"
logger = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def record_checksums(models_dir: Path, paths: list[Path]) -> Path:
    """Add or replace the entries of `paths` in models_dir/SHA256SUMS (atomically)."""
    sums_path = models_dir / CHECKSUMS_FILE
    entries: dict[str, str] = {}
    if sums_path.is_file():
        for line in sums_path.read_text().splitlines():
            digest, _, name = line.partition("  ")
            if digest and name:
                entries[name] = digest
    for path in paths:
        entries[path.relative_to(models_dir).as_posix()] = file_sha256(path)
    with atomic_output(sums_path, force=True) as tmp:
        tmp.write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(entries.items())))
    return sums_path


def one_writer_at_a_time(models_dir: Path):
    """Held while a pull writes into models_dir: SHA256SUMS is read, changed and written,
    and two pulls from one repo share its folder and projector (at once, one removed the
    other's projector when it rolled back). The folder itself is locked: no lock file in a
    folder that travels."""
    return held_exclusively(models_dir, on_wait=lambda: logger.warning(
        "waiting for another pull into %s to finish", models_dir))


def source_name(source: str) -> str:
    """What a model made from `source` is named after: a local directory by its own name
    ("." and ".." by the folder they mean, "dir/" without the slash), a Hub id by its
    repository's."""
    path = Path(source.rstrip("/"))
    return (path.resolve() if path.is_dir() else path).name or "model"


def pull_converted(repo_id: str, type_name: str, models_dir: Path, *, revision: str | None = None,
                   force: bool = False, progress=None, on_stage=None) -> ConversionSummary:
    """Download a checkpoint through the Hugging Face cache and convert it into models_dir."""
    models_dir.mkdir(parents=True, exist_ok=True)
    outfile = models_dir / f"{source_name(repo_id)}-{type_name.lower()}.gguf"
    summary = convert_checkpoint(repo_id, outfile, type_name, revision=revision, force=force,
                                 progress=progress, on_stage=on_stage)
    with one_writer_at_a_time(models_dir):
        record_checksums(models_dir, [outfile])
    return summary


def pull_published_gguf(repo_id: str, filename: str, models_dir: Path, *,
                        revision: str | None = None, force: bool = False) -> list[Path]:
    """Copy one GGUF and the projector of a published GGUF repo (a Hub repo id, or a local
    directory holding the two files) into models_dir/<repo>/.

    Both are checked as the runtime opens them before anything is copied; a failed copy
    takes back what this call wrote.
    """
    inside = PurePosixPath(filename)
    if inside.is_absolute() or ".." in inside.parts or not inside.name:
        raise CheckpointError(f"--file {filename!r} must name a file inside the repo (no "
                              "absolute path, no ..)")
    check_source_given(repo_id)
    local = Path(repo_id).expanduser()
    names = (filename, PROJECTOR_SIDECAR)
    if local.is_dir():
        if revision:
            raise CheckpointError(f"--revision applies to Hub repo ids, not to the local "
                                  f"path {local}")
        sources = [local / name for name in names]
        for source in sources:
            if not source.is_file():
                raise CheckpointError(f"{source} does not exist")
    else:
        from huggingface_hub import hf_hub_download

        check_repo_id(repo_id)
        unreachable = hub_unreachable()
        sources = []
        for name in names:  # both fetched before models/ gets a folder for them
            with hub_errors(f"{repo_id}/{name}", revision, unreachable):
                sources.append(Path(hf_hub_download(repo_id, name, revision=revision,
                                                    local_files_only=unreachable is not None)))
    try:  # a wrong or cut-short file must not become the checksummed default model
        open_reranker_file(sources[0], projector=sources[1])
    except ModelFileError as error:
        raise CheckpointError(f"{repo_id}: {error}") from None
    target_dir = models_dir / source_name(repo_id)
    for name in (target_dir.name, inside.name):
        if unpaired_surrogate(name) is not None:  # SHA256SUMS is UTF-8 text
            raise CheckpointError(f"{name.encode(errors='surrogateescape')!r} is not a UTF-8 "
                                  "name; rename it")
    with one_writer_at_a_time(models_dir):
        _copy_pair(sources, target_dir, inside.name, models_dir, repo_id, force)
    return [target_dir / inside.name, target_dir / PROJECTOR_SIDECAR]


def _copy_pair(sources: list[Path], target_dir: Path, model_name: str, models_dir: Path,
               repo_id: str, force: bool) -> None:
    """Copy a GGUF and its projector into target_dir and record both checksums; a failure
    takes back what this call wrote."""
    created = not target_dir.exists()
    target_dir.mkdir(parents=True, exist_ok=True)
    copied = [target_dir / model_name, target_dir / PROJECTOR_SIDECAR]
    # A second quantization from the same repo shares its projector: the one already
    # there is kept when it is the same file, so that pull needs no --force.
    projector_there = (copied[1].is_file() and not copied[1].is_symlink()
                       and filecmp.cmp(sources[1], copied[1], shallow=False))
    sharing = sorted(path.name for path in target_dir.glob("*.gguf") if path.name != model_name)
    if copied[1].exists() and not projector_there and sharing:
        # --force included: the models already beside it would be paired with another
        # projector unseen (their checksums still verify) and score wrongly.
        raise CheckpointError(f"{copied[1]} is the projector of {', '.join(sharing)} too, and "
                              f"{repo_id}'s differs: replacing it would pair those models with "
                              "another projector; remove them first, or pull into another "
                              "models folder ($RERANKER_MODELS_DIR)")
    to_copy = list(zip(sources, copied))[:1 if projector_there else 2]
    try:
        # All checked, copied beside their places, then all renamed: a failure or Ctrl-C
        # midway (with --force too) keeps the pair that was there, never half of each.
        with contextlib.ExitStack() as outputs:
            temporaries = [outputs.enter_context(atomic_output(target, force))
                           for _, target in to_copy]
            for (cached, _), tmp in zip(to_copy, temporaries):
                # A real copy, not the cache's symlink: the folder must travel on its own.
                shutil.copyfile(cached, tmp)
        record_checksums(models_dir, copied)
    except BaseException:
        if created:  # nothing of it was there before (other pulls wait their turn)
            for path in copied:
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                target_dir.rmdir()
        raise
