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
