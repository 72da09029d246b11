"""Lines of a dataset's text files, with the line a non-UTF-8 byte is on."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from reranker.evaluation.errors import DatasetError
from reranker.reranker import unpaired_surrogate


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Each line of a UTF-8 file with its number (from 1).

    A leading byte-order mark (Windows editors and PowerShell write one) is dropped: kept,
    it became part of the first line's id, and a run file lost its first row unseen.
    Bytes that are not UTF-8 are read as lone surrogates (surrogateescape) and named with
    their line here; a strict decoder failed on a whole chunk, naming no line.
    """
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as stream:
        for number, line in enumerate(stream, start=1):
            position = unpaired_surrogate(line)
            if position is not None:
                byte = ord(line[position]) - 0xDC00
                raise DatasetError.at(path, number, f"byte 0x{byte:02x} at character "
                                      f"{position + 1} is not UTF-8; save the file as UTF-8")
            yield number, line
