"""Progress bars on stderr, so stdout stays clean for tables and JSON."""
from __future__ import annotations

import sys

import click


class ProgressBars:
    """A bar opened at the first update of a label and replaced when the label changes
    (one bar per conversion stage, or per model of a comparison)."""

    def __init__(self) -> None:
        self._bar = None
        self._label: str | None = None

    def update(self, label: str, total: int) -> None:
        """One more item of `total` done under `label`."""
        if self._bar is None or label != self._label:
            self.close()
            self._label = label
            self._bar = click.progressbar(length=total, label=label, file=sys.stderr)
            self._bar.__enter__()
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
