"""Reading documents and batch requests from files or stdin.

Input is read as bytes and decoded here, strictly as UTF-8, so that a byte which is
not UTF-8 is reported with the input's name, line and byte offset: decoding in the
file object raised a traceback from deep in the reader, and stdin (decoded with
surrogates for such bytes) passed text on that failed later in the tokenizer.
"""
from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from typing import IO

import click


class InputError(click.ClickException):
    """Unusable input; `kind` and `field` as in the server's error body."""

    def __init__(self, message: str, kind: str = "invalid_request", field: str | None = None):
        super().__init__(message)
        self.kind, self.field = kind, field


def unicode_problem(text: str) -> str | None:
    """Why `text` is not Unicode text the tokenizer can take, or None if it is."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        surrogate = ord(text[e.start])
    try:
        # Python keeps bytes it could not decode (in argv, say) as surrogates.
        text.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeDecodeError as e:
        return f"is not UTF-8 (byte 0x{e.object[e.start]:02x} at byte offset {e.start})"
    except UnicodeEncodeError:
        pass
    return f"holds a lone surrogate (\\u{surrogate:04x}), which is not text"


def check_text(text: str, where: str, field: str | None = None) -> str:
    problem = unicode_problem(text)
    if problem is not None:
        raise InputError(f"{where} {problem}; pass UTF-8 text", field=field)
    return text


def input_name(stream: IO[bytes]) -> str:
    """How messages name an input: its path, or <stdin> (which may have no name)."""
    return str(getattr(stream, "name", "<stdin>"))


def read_lines(stream: IO[bytes], source_name: str) -> Iterator[tuple[int, str]]:
    """(line number, text without its line end) of each line, decoded as UTF-8.

    A leading UTF-8 byte-order mark, as some Windows editors write, is dropped: left in,
    it would hide the first line's "{" and turn JSON Lines into plain text.
    """
    offset = 0
    for number, raw in enumerate(stream, start=1):
        start = len(codecs.BOM_UTF8) if offset == 0 and raw.startswith(codecs.BOM_UTF8) else 0
        try:
            text = raw[start:].decode("utf-8")
        except UnicodeDecodeError as e:
            bad = start + e.start
            raise InputError(f"{source_name}:{number}: not UTF-8 text (byte 0x{raw[bad]:02x} at "
                             f"byte offset {offset + bad}); convert it to UTF-8",
                             kind="invalid_json") from None
        offset += len(raw)
        yield number, text.removesuffix("\n").removesuffix("\r")


def read_documents(stream: IO[bytes], source_name: str) -> list[str]:
    """One document per line, or JSON Lines whose objects carry a "text" field.

    The format is JSON Lines when the first non-blank line is a JSON object; blank
    lines are skipped in both forms.
    """
    content = [(number, line) for number, line in read_lines(stream, source_name)
               if line.strip()]
    if not content:
        return []
    if not _is_json_object(content[0][1]):
        return [line for _, line in content]
    documents = []
    for number, line in content:
        where = f"{source_name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise click.ClickException(f"{where}: not valid JSON ({e.msg})") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise click.ClickException(f'{where}: expected an object with a string "text" field')
        documents.append(check_text(text, f'{where}: "text"'))
    return documents


def _is_json_object(line: str) -> bool:
    if not line.lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def read_batch(stream: IO[bytes], source_name: str) -> list[dict]:
    """Batch requests: JSON Lines of {"query", "documents", optional "top_n", "instruction"}."""
    requests = []
    for number, line in read_lines(stream, source_name):
        if not line.strip():
            continue
        where = f"{source_name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise click.ClickException(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("query"), str):
            raise click.ClickException(f'{where}: expected an object with a string "query"')
        check_text(record["query"], f'{where}: "query"')
        docs = record.get("documents")
        if not isinstance(docs, list):
            raise click.ClickException(f'{where}: expected a "documents" list')
        texts = []
        for i, doc in enumerate(docs):
            text = doc.get("text") if isinstance(doc, dict) else doc
            if not isinstance(text, str):
                raise click.ClickException(f"{where}: documents[{i}] must be a string or "
                                           'an object with a string "text"')
            texts.append(check_text(text, f"{where}: documents[{i}]"))
        top_n = record.get("top_n")
        if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 0):
            raise click.ClickException(f'{where}: "top_n" must be a non-negative integer')
        instruction = record.get("instruction")
        if instruction is not None and not isinstance(instruction, str):
            raise click.ClickException(f'{where}: "instruction" must be a string')
        if instruction is not None:
            check_text(instruction, f'{where}: "instruction"')
        requests.append({"query": record["query"], "documents": texts, "top_n": top_n,
                         "instruction": instruction, "line": number})
    return requests
