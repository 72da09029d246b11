"""Write outputs so that a failed or interrupted run leaves nothing behind."""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from convert.errors import ConversionError


def check_output_path(path: Path, force: bool) -> None:
    if path.is_dir():
        raise ConversionError(f"output {path} is a directory; give a file name ending in .gguf")
    if path.exists() and not force:
        raise ConversionError(f"output {path} already exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise ConversionError(f"output directory {path.parent} does not exist")


@contextlib.contextmanager
def atomic_output(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only on success."""
    path = Path(path)
    check_output_path(path, force)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: never leave a partial file
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def scratch_file(beside: Path, suffix: str) -> Iterator[Path]:
    """A temporary file next to `beside` (same disk), removed afterwards in every case."""
    fd, name = tempfile.mkstemp(dir=Path(beside).parent, prefix=f".{Path(beside).name}.",
                                suffix=suffix)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)
