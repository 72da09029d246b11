"""One JSON text (a line of a JSON Lines file), read so that every failure is one error.

Python's parser recurses once per nesting level: `[[[[...` a hundred thousand deep
raised RecursionError, which the readers did not expect, and a whole batch stopped with
a traceback instead of answering that one line with its error.
"""
from __future__ import annotations

import json
from typing import Any


def parse_json(text: str) -> Any:
    """`json.loads(text)`; raises json.JSONDecodeError for any text it cannot read."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("arrays or objects nested too deeply to read", text,
                                   0) from None
