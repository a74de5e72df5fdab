"""The terminal's progress bar: the same columns for every long command."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(console: Console | None, *extra: ProgressColumn, transient: bool = False, disable: bool = False) -> Progress:
    """description, bar, done/total, `extra` columns, elapsed, remaining (on `console`, else stdout)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *extra,
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=transient, disable=disable)
