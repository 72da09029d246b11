"""One writer at a time: an exclusive flock held while a block runs, between processes."""
from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def held_exclusively(path: Path, *, create: bool = False,
                     on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path` (a lock file, made if `create`, or a folder, which
    leaves no lock file behind) while the block runs; `on_wait()` is called once if another
    holder makes this one wait.

    Opened read-only, since flock needs no more: another user can take a lock file this
    user made. Where the lock cannot be had at all (no permission, a file system without
    flock) the block runs without it rather than not at all."""
    try:
        handle = os.open(path, os.O_RDONLY | (os.O_CREAT if create else 0), 0o666)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(handle)
