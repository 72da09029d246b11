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

from reranker.api_contract import RequestError, RerankRequest, parse_request
from reranker.json_text import parse_json


class InputError(click.ClickException):
    """Unusable input; `kind` and `field` as in the server's error body."""

    def __init__(self, message: str, kind: str = "invalid_request", field: str | None = None):
        super().__init__(message)
        self.kind, self.field = kind, field

    def at(self, where: str) -> InputError:
        """The same error, its message prefixed with where it is (file:line)."""
        return InputError(f"{where}: {self.message}", self.kind, self.field)

    @classmethod
    def refusing(cls, error: RequestError) -> InputError:
        return cls(error.message, error.kind, error.field)

    def body(self) -> dict:
        """As the server answers: {"error": {"type", "message", "field"}}, field if known."""
        return RequestError(self.message, self.kind, self.field).body()


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


def _decode(raw: bytes, offset: int) -> str:
    """The line's text without its line end; `offset`: where the line starts in its input."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at byte offset "
                         f"{offset + e.start}); convert it to UTF-8", kind="invalid_json") from None
    return text.removesuffix("\n").removesuffix("\r")


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes, int]]:
    """(line number, bytes, byte offset in the input) of each line.

    A leading UTF-8 byte-order mark, as Windows editors write, is dropped: left in, it
    hid the first line's "{" and turned JSON Lines into plain text.
    """
    offset = 0
    for number, raw in enumerate(stream, start=1):
        start = len(codecs.BOM_UTF8) if number == 1 and raw.startswith(codecs.BOM_UTF8) else 0
        yield number, raw[start:], offset + start
        offset += len(raw)


def read_lines(stream: IO[bytes], source_name: str) -> Iterator[tuple[int, str]]:
    """(line number, text without its line end) of each line, decoded as UTF-8."""
    for number, raw, offset in _lines(stream):
        try:
            text = _decode(raw, offset)
        except InputError as e:
            raise e.at(f"{source_name}:{number}") from None
        yield number, text


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
            record = parse_json(line)
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
        return isinstance(parse_json(line), dict)
    except json.JSONDecodeError:
        return False


def parse_request_line(line: str) -> RerankRequest:
    """One batch request, as the server reads its body (reranker.api_contract); raises
    InputError naming the field."""
    try:
        record = parse_json(line)
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e.msg})", kind="invalid_json") from None
    try:
        return parse_request(record)
    except RequestError as e:
        raise InputError.refusing(e) from None


def batch_requests(stream: IO[bytes]) -> Iterator[tuple[int, RerankRequest | InputError]]:
    """Each non-blank line's number and its request, or the InputError saying why it is
    not one: a bad line does not stop the lines after it."""
    for number, raw, offset in _lines(stream):
        try:
            line = _decode(raw, offset)
            request = parse_request_line(line) if line.strip() else None
        except InputError as e:
            request = e
        if request is not None:
            yield number, request


def read_batch(stream: IO[bytes], source_name: str) -> list[RerankRequest]:
    """Every request of a batch file; the first bad line stops with its error."""
    requests = []
    for number, request in batch_requests(stream):
        if isinstance(request, InputError):
            raise request.at(f"{source_name}:{number}")
        requests.append(request)
    return requests
