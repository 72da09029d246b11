"""Reading documents and batch requests from files or stdin."""
from __future__ import annotations

import json
from typing import IO

import click


def read_documents(stream: IO[str], source_name: str) -> list[str]:
    """One document per line, or JSON Lines whose objects carry a "text" field.

    The format is JSON Lines when the first non-blank line is a JSON object; blank
    lines are skipped in both forms.
    """
    lines = [line.rstrip("\n").rstrip("\r") for line in stream]
    content = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not content:
        return []
    if not _is_json_object(content[0][1]):
        return [line for _, line in content]
    documents = []
    for number, line in content:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise click.ClickException(f"{source_name}:{number}: not valid JSON ({e.msg})") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise click.ClickException(f'{source_name}:{number}: expected an object with a '
                                       f'string "text" field')
        documents.append(text)
    return documents


def _is_json_object(line: str) -> bool:
    if not line.lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def read_batch(stream: IO[str], source_name: str) -> list[dict]:
    """Batch requests: JSON Lines of {"query", "documents", optional "top_n", "instruction"}."""
    requests = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        where = f"{source_name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise click.ClickException(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("query"), str):
            raise click.ClickException(f'{where}: expected an object with a string "query"')
        docs = record.get("documents")
        if not isinstance(docs, list):
            raise click.ClickException(f'{where}: expected a "documents" list')
        texts = []
        for i, doc in enumerate(docs):
            text = doc.get("text") if isinstance(doc, dict) else doc
            if not isinstance(text, str):
                raise click.ClickException(f"{where}: documents[{i}] must be a string or "
                                           'an object with a string "text"')
            texts.append(text)
        top_n = record.get("top_n")
        if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 0):
            raise click.ClickException(f'{where}: "top_n" must be a non-negative integer')
        instruction = record.get("instruction")
        if instruction is not None and not isinstance(instruction, str):
            raise click.ClickException(f'{where}: "instruction" must be a string')
        requests.append({"query": record["query"], "documents": texts, "top_n": top_n,
                         "instruction": instruction, "line": number})
    return requests
