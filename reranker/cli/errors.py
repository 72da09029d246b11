"""Library errors become one-line messages with a non-zero exit, never a traceback."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from reranker.errors import RerankerError


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    try:
        yield
    except (RerankerError, ValueError, TypeError, OSError) as e:
        raise click.ClickException(str(e)) from None
