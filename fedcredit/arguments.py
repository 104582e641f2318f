"""Argument types the ``fedcredit`` commands share, so every command words its range errors alike.

A leaf module (standard library only): command modules in every package import it, and the
dispatcher (:mod:`fedcredit.cli`) imports the command modules — so nothing below the CLI imports
the CLI.
"""

from __future__ import annotations

import argparse
import math


def number(kind: type = float, *, minimum: float | None = None, maximum: float | None = None,
           open_minimum: bool = False, open_maximum: bool = False):
    """An argparse ``type``: a whole (``int``) or real (``float``) number within the bounds
    (``open_*``: the bound itself is excluded); NaN and ±inf are refused."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
        low_bad = minimum is not None and (value <= minimum if open_minimum else value < minimum)
        high_bad = maximum is not None and (value >= maximum if open_maximum else value > maximum)
        if low_bad or high_bad:
            raise argparse.ArgumentTypeError(f"must be {range_words(minimum, maximum, open_minimum, open_maximum)}, "
                                             f"got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def range_words(lo: float | None, hi: float | None, open_lo: bool = False, open_hi: bool = False) -> str:
    """The allowed range in words: ``"0 or more"``, ``"between 0 and 1 (exclusive)"``, ``"at most 5"`` …"""
    if lo == 0 and hi is None:
        return "a positive number" if open_lo else "0 or more"
    if lo is not None and hi is not None:
        return f"between {lo:g} and {hi:g}" + (" (exclusive)" if open_lo or open_hi else "")
    if lo is not None:
        return f"above {lo:g}" if open_lo else f"at least {lo:g}"
    return f"below {hi:g}" if open_hi else f"at most {hi:g}"


def add_package_and_table(p: argparse.ArgumentParser, data_help: str,
                          mapping_help: str = "the institution's column mapping (name or path)") -> None:
    """``--model DIR`` (a model package), ``--data FILE`` and ``--mapping``: the scored table of the
    institution's monitoring commands (monitor, backtest, drift release)."""
    p.add_argument("--model", required=True, metavar="DIR", help="model package directory (RUN_DIR/model)")
    p.add_argument("--data", required=True, metavar="FILE", help=data_help)
    p.add_argument("--mapping", help=mapping_help)


def add_fail_on(p: argparse.ArgumentParser, levels: tuple[str, ...], what: str) -> None:
    """``--fail-on LEVEL``: exit 3 when ``what`` reaches that level (for scheduled jobs;
    :func:`fedcredit.outcome.fail_on_exit_code`)."""
    p.add_argument("--fail-on", choices=levels, help=f"exit 3 when {what} is this or worse (for scheduled jobs)")
