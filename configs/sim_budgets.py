"""The run config's ``sim-budgets`` text: each virtual node's lifetime ε in a simulation.

``"institution=ε,institution=ε"`` ↔ ``{institution: ε}``. The server validates it with the rest
of the run config (:mod:`server.settings`); simulation hands each virtual node its own entry
(:mod:`simulation.virtual_nodes`). Data only: no package above ``configs/`` is needed to read it.
"""

from __future__ import annotations

from configs.errors import ConfigError


def parse_sim_budgets(text: str) -> dict[str, float]:
    """Run config ``sim-budgets`` (simulation only): ``"institution=ε,institution=ε"`` →
    ``{institution: ε}``, each virtual node's lifetime budget where it differs from
    ``sim-max-epsilon``. ``""`` → ``{}``."""
    out: dict[str, float] = {}
    for item in (x.strip() for x in str(text).split(",")):
        if not item:
            continue
        name, sep, value = (part.strip() for part in item.partition("="))
        try:
            eps = float(value)
        except ValueError:
            eps = float("nan")
        if not sep or not name or not (0 < eps < float("inf")):
            raise ConfigError(f"run config: 'sim-budgets' takes institution=ε pairs separated by commas, ε > 0; "
                              f"got {item!r}")
        if name in out:
            raise ConfigError(f"run config: 'sim-budgets' names {name!r} twice")
        out[name] = eps
    return out


def format_sim_budgets(budgets: dict[str, float]) -> str:
    """The ``sim-budgets`` text of ``{institution: ε}`` (inverse of :func:`parse_sim_budgets`)."""
    return ",".join(f"{name}={float(eps)!r}" for name, eps in budgets.items())
