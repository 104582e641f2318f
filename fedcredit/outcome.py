"""What a ``fedcredit`` command hands back to the dispatcher (:mod:`fedcredit.cli`).

A command's ``run(args)`` returns an exit code, or an :class:`Outcome`: the exit code and the
summary that ``--json`` prints as the last line of standard output. The dispatcher does the
printing, so every command's JSON is printed the same way. A leaf module (standard library
only): command modules in every package import it without importing the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """A command's exit code and the summary ``--json`` prints (anything JSON can hold, NumPy
    values and paths included)."""

    summary: Any
    exit_code: int = 0


#: the exit code of a scheduled job's ``--fail-on`` (:func:`fail_on_exit_code`)
FAIL_ON_EXIT_CODE = 3


def fail_on_exit_code(level: str, fail_on: str | None, order: tuple[str, ...]) -> int:
    """:data:`FAIL_ON_EXIT_CODE` when ``level`` is ``fail_on`` or later in ``order`` (mildest first),
    else 0 — also for a level outside ``order`` (e.g. "unknown") and without ``--fail-on``."""
    if not fail_on or level not in order:
        return 0
    return FAIL_ON_EXIT_CODE if order.index(level) >= order.index(fail_on) else 0
