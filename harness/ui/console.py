"""The console that prints results: as wide as the terminal, or unwrapped when stdout is a file
(a batch log gets whole table rows, not rows folded at 80 columns)."""

from __future__ import annotations

import sys

from rich.console import Console


def output_console() -> Console:
    tty = sys.stdout.isatty()
    return Console(width=None if tty else 100_000, soft_wrap=not tty, highlight=False)
