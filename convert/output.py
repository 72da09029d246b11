"""Write outputs so that a failed or interrupted run leaves nothing behind.

Temporary files sit beside the output (same disk, so the final rename is atomic),
named `.OUTPUT.PID.RANDOM[.KIND].partial`. A run that is killed outright (SIGKILL,
the OOM killer, a power cut) cannot remove its own, so the next run writing the same
output removes those whose process is gone, and says so in a warning.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from convert.errors import ConversionError

logger = logging.getLogger(__name__)
_SUFFIX = ".partial"
# What a temporary file's name adds to its output's: ".", ".PID" (up to 7 digits),
# ".RANDOM" (8), a kind such as ".bf16" and ".partial".
_TEMPORARY_NAME_EXTRA = 1 + 8 + 9 + 5 + len(_SUFFIX)


def check_output_path(path: Path, force: bool) -> None:
    if path.is_dir():
        raise ConversionError(f"output {path} is a directory; give a file name")
    if path.is_symlink() and not path.exists() and not force:
        # exists() follows the link, the final rename does not: refused now, not after
        # the work as "written by another run meanwhile".
        raise ConversionError(f"output {path} is a symbolic link to a missing file; pass "
                              "--force to replace the link")
    if path.exists() and not force:
        raise ConversionError(f"output {path} already exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise ConversionError(f"output directory {path.parent} does not exist")
    # Checked before the work: the temporary file's own OSError named a hidden file only
    # once a whole conversion or evaluation had run.
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConversionError(f"output directory {path.parent} is not writable (read-only or "
                              "another user's); choose another output path")
    longest = _name_max(path.parent) - _TEMPORARY_NAME_EXTRA
    if len(os.fsencode(path.name)) > longest:
        raise ConversionError(f"output name {path.name[:40]}... is {len(os.fsencode(path.name))} "
                              f"bytes long; this filesystem allows {longest} for it (with its "
                              "temporary file's suffix): choose a shorter name")


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_not_an_input(output: Path, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an output that is one of the command's own inputs (by name, link or hard
    link): writing it would destroy what is being read, a model that took hours to make."""
    if not output.exists():
        return
    for source in inputs:
        if source is not None and Path(source).exists() and os.path.samefile(output, source):
            raise ConversionError(f"output {output} is the input {source}; writing it would "
                                  "destroy that input: choose another output path")


def _temporary_beside(path: Path, kind: str = "") -> Path:
    """A new empty file beside `path`, with the permissions a plain open() would give it."""
    for _ in range(100):
        candidate = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{kind}{_SUFFIX}"
        try:
            # 0o666 less the umask (or as a default ACL says), applied by the kernel as for
            # any new file; mkstemp's 0600 left converted models unreadable to other users.
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise ConversionError(f"could not create a temporary file beside {path}")


def _process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_partials(path: Path) -> list[Path]:
    """Remove the temporary files of runs writing `path` that were killed; return them.

    A file whose process still runs (a concurrent run, this process included) is kept.
    """
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]{{8}}(\.[\w-]+)?"
                         rf"{re.escape(_SUFFIX)}")
    removed = []
    for candidate in path.parent.iterdir():
        match = pattern.fullmatch(candidate.name)
        if match and not _process_running(int(match[1])):
            try:
                size = candidate.stat().st_size
                candidate.unlink()
            except FileNotFoundError:  # another run removed it first
                continue
            logger.warning("removed %s (%.1f MB), left by an interrupted run", candidate,
                           size / 1e6)
            removed.append(candidate)
    return removed


@contextlib.contextmanager
def atomic_output(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only on success."""
    path = Path(path)
    check_output_path(path, force)
    remove_stale_partials(path)
    tmp = _temporary_beside(path)
    try:
        yield tmp
        _move_into_place(tmp, path, force)
    except BaseException:  # KeyboardInterrupt included: never leave a partial file
        tmp.unlink(missing_ok=True)
        raise


def _move_into_place(tmp: Path, path: Path, force: bool) -> None:
    """Rename `tmp` onto `path`; without `force`, only if `path` still does not exist: a
    second run writing the same output meanwhile must not be replaced unseen."""
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if `path` exists, where a rename would replace it
    except FileExistsError:
        raise ConversionError(f"output {path} was written by another run meanwhile; pass "
                              "--force to overwrite it") from None
    except OSError:  # a filesystem without hard links: the existence check made earlier
        os.replace(tmp, path)
        return
    tmp.unlink()


@contextlib.contextmanager
def scratch_file(beside: Path, kind: str) -> Iterator[Path]:
    """A temporary file next to `beside` (same disk), removed afterwards in every case.

    `kind` (".f16", say) tells what it holds; it is named like `beside`'s own temporary
    file, so a killed run's scratch is removed with it by the next run.
    """
    path = _temporary_beside(Path(beside), kind)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
