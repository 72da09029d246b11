"""Progress bars on stderr, so stdout stays clean for tables and JSON."""
from __future__ import annotations

import sys

import click


class ProgressBars:
    """A bar opened at the first update of a label and replaced when the label changes
    (one bar per conversion stage, or per model of a comparison).

    Where stderr is not a terminal (a log file, a pipe, CI) a bar cannot redraw: click
    printed its bare label ("tensors") there. A line with the count is written instead,
    once the label's work ends."""

    def __init__(self) -> None:
        self._bar = None
        self._label: str | None = None
        self._done = self._total = 0

    def update(self, label: str, total: int) -> None:
        """One more item of `total` done under `label`."""
        if label != self._label:
            self.close()
            self._label, self._done = label, 0
            if _is_terminal(sys.stderr):
                self._bar = click.progressbar(length=total, label=label, file=sys.stderr)
                self._bar.__enter__()
        self._done, self._total = self._done + 1, total
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
        elif self._label is not None:
            click.echo(f"{self._label}: {self._done}/{self._total}", err=True)
        self._label = None


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
