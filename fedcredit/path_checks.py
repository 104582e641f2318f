"""Checks of the paths a command is given, made before any work starts.

A command that would find out at its very end that it cannot write its output (a missing
directory, a directory where a file is expected, no write permission, a format it cannot write)
has wasted the work and, worse, ends in a traceback. These small named checks, in the manner of
``sklearn/utils/validation.py``, raise :class:`configs.errors.UserError` (exit code 2) with one
message naming the option, the path and the fix. Standard library only: every command module
may import it without importing the CLI.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from configs.errors import UserError


def _suffix_words(suffixes: Iterable[str]) -> str:
    items = list(suffixes)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_file(path: str | Path, option: str = "--out", suffixes: Iterable[str] | None = None,
                      create_parent: bool = False) -> Path:
    """``path`` can be written as a file: not a directory, of one of ``suffixes`` (lower case,
    with the dot), in a directory that exists (or, with ``create_parent``, can be created) and
    that this user may write to. Returns the path."""
    p = Path(path).expanduser()
    if suffixes is not None and p.suffix.lower() not in set(suffixes):
        raise UserError(f"{option} {path}: cannot write a {p.suffix or 'file without a suffix'}; name the file "
                        f"with {_suffix_words(list(suffixes))}")
    if p.is_dir():
        raise UserError(f"{option} {path}: is a directory; give the path of a file (in it, or elsewhere)")
    parent = p.parent
    if not parent.exists():
        if not create_parent:
            raise UserError(f"{option} {path}: the directory {parent} does not exist; create it first "
                            f"(mkdir -p {parent}) or choose another path")
        base = _nearest_existing(parent)
        if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
            raise UserError(f"{option} {path}: the directory {parent} cannot be created ({base} is not a writable "
                            "directory); choose another path")
        return p
    if not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is not a directory; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"{option} {path}: no permission to write there; choose another path")
    return p


def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """``path`` is, or can be created as, a directory this user may write to. Returns the path."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{option} {path}: exists and is not a directory; give a directory (it is created when "
                        "missing)")
    base = p if p.exists() else _nearest_existing(p)
    if not base.is_dir():
        raise UserError(f"{option} {path}: cannot be created, {base} is not a directory; choose another path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: no permission to write in {base}; choose another path")
    return p


def check_input_file(path: str | Path, option: str, suffixes: Iterable[str] | None = None,
                     what: str = "file") -> Path:
    """``path`` is an existing, readable file (of one of ``suffixes``, when given). Returns it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{option} {path}: no such {what}")
    if p.is_dir():
        raise UserError(f"{option} {path}: is a directory; give the {what} itself")
    if suffixes is not None and p.suffix.lower() not in set(suffixes):
        raise UserError(f"{option} {path}: not a {what} ({p.suffix or 'no suffix'}); expected "
                        f"{_suffix_words(list(suffixes))}")
    if not os.access(p, os.R_OK):
        raise UserError(f"{option} {path}: no permission to read it")
    return p
