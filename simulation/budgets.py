"""Per-institution privacy budgets of a simulated consortium (``fedcredit simulate --budgets FILE``).

In a deployment every institution sets its own lifetime budget in its node config
(``max-epsilon``). A simulation stands in for all of them; by default each virtual node gets the
same budget (``--epsilon``). A budgets file gives some or all institutions their own::

    # consortium budgets: each institution's lifetime ε for this dataset
    [max-epsilon]
    national-bank-1 = 8.0
    online-microlender-1 = 1.0

Institutions not listed get ``--epsilon``. The file becomes the run config's ``sim-budgets``
(:func:`configs.sim_budgets.parse_sim_budgets`), which each virtual node reads for its own id.
"""

from __future__ import annotations

import math
from pathlib import Path

from configs.errors import ConfigError, UserError
from configs.toml_reader import read_toml

TABLE = "max-epsilon"


def load_budgets(path: str | Path) -> dict[str, float]:
    """``{institution: ε}`` from a budgets file; a mistake is a :class:`UserError` naming the key."""
    p = Path(path)
    try:
        doc = read_toml(p, "--budgets")
    except ConfigError as exc:
        raise UserError(f"--budgets {exc}" if str(exc).startswith(str(p)) else str(exc)) from None
    extra = sorted(set(doc) - {TABLE})
    if extra:
        raise UserError(f"--budgets {p}: unknown key(s) {', '.join(extra)}; the file holds one table [{TABLE}] "
                        "of institution = ε")
    table = doc.get(TABLE)
    if not isinstance(table, dict) or not table:
        raise UserError(f"--budgets {p}: needs a table [{TABLE}] with at least one institution = ε")
    out = {}
    for name, eps in table.items():
        ok = isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and eps > 0
        if not ok:
            raise UserError(f"--budgets {p}: {TABLE}.{name} must be a positive number (the lifetime ε), got {eps!r}")
        if "," in name or "=" in name:
            raise UserError(f"--budgets {p}: {TABLE}.{name}: an institution id cannot contain ',' or '='")
        out[str(name)] = float(eps)
    return out


def check_budgets_name_institutions(budgets: dict[str, float], institutions: list[str], source: str) -> None:
    """Every institution a budgets file names must be one of the consortium's."""
    unknown = sorted(set(budgets) - set(institutions))
    if unknown:
        raise UserError(f"{source}: {TABLE}.{unknown[0]} is not an institution of this consortium "
                        f"(its institutions: {', '.join(institutions)})")
