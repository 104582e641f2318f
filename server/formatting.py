"""How the model card and the run report write numbers (one place, so both say the same).

A missing figure is ``—``. A figure released through a DP mechanism carries the standard
deviation of its noise, written ``x ± sd`` (for rates: percentage points). These are the
Jinja2 filters ``num``, ``g`` and ``pct`` of :mod:`server.templating`.
"""

from __future__ import annotations

from typing import Any

MISSING = "—"


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def num(x: Any, digits: int = 4, sd: Any = None) -> str:
    """A number with ``digits`` decimals (whole numbers with thousands separators, very small ones
    in exponent form, booleans as yes/no, strings as they are), with ``± sd`` when given one."""
    if _is_number(sd) and x is not None:
        return f"{num(x, digits)} ± {num(sd, digits)}"
    if x is None:
        return MISSING
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    v = float(x)
    if v != 0 and abs(v) < 1e-4:
        return f"{v:.1e}"
    return f"{v:.{digits}f}"


def general(x: Any) -> str:
    """A number in its shortest form (``%g``): budgets, δ, cut-offs."""
    return MISSING if x is None else f"{float(x):g}"


def percent(x: Any, sd: Any = None) -> str:
    """A rate (0–1) as a percentage with one decimal, with ``± sd`` in percentage points when given
    one; a string (e.g. ``"not released"``) as it is."""
    if x is None:
        return MISSING
    if isinstance(x, str):
        return x
    if _is_number(sd):
        return f"{100 * float(x):.1f} ± {100 * float(sd):.1f} %"
    return f"{100 * float(x):.1f} %"
