"""Stage-by-stage progress for commands whose work is a few long steps (monitor, backtest, compare).

:func:`stage_progress` shows a rich spinner with the current step and the elapsed time on
standard error (standard output stays free for results and the ``--json`` line); the spinner
disappears when the work ends, and nothing is drawn when standard error is not a terminal.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator


@contextlib.contextmanager
def stage_progress(command: str) -> Iterator[Callable[[str], None]]:
    """``with stage_progress("monitor") as stage: stage("reading …"); …``"""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(file=sys.stderr)
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(command, total=None)

        def stage(text: str) -> None:
            progress.update(task, description=f"{command}: {text}")

        yield stage
