"""Finding processes by their command line, for tests that check what is left running."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def pids_whose_command(matches) -> set[int]:
    """The processes on this machine whose command line (NUL-separated bytes) `matches`."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as file:
                    if matches(file.read()):
                        pids.add(int(entry))
            except OSError:  # gone meanwhile
                pass
    return pids


def quantizer_pids(parent: int) -> set[int]:
    """The children of `parent` running llama.cpp's quantizer (convert/quantize.py's)."""
    return {pid for pid in pids_whose_command(lambda command: b"convert.quantize" in command)
            if _parent_of(pid) == parent}


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            # "pid (command) state ppid ...": the command may hold spaces and parentheses
            return int(file.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):  # gone meanwhile
        return None


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, dead but not reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def run_python(script: str, *args, path_first: Path | None = None) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter on this checkout: a crash there (a segfault, an
    abort) is an exit code to assert on instead of the end of the test session.
    `path_first`: a folder whose packages take the place of installed ones."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(filter(None, [path_first and str(path_first), root,
                                         os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", script, *map(str, args)],
                          env={**os.environ, "PYTHONPATH": path}, capture_output=True,
                          text=True, timeout=300)
