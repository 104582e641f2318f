"""Institution archetypes of the synthetic consortium, read from ``configs/archetypes.toml``.

An archetype is a kind of lender — national bank, regional bank, credit-card issuer,
consumer-finance company, online micro-lender — described by its size at scale 1.0, its borrower
mix (age, sex, education, latent creditworthiness), its credit-limit policy and how its borrowers
use the product. The meaning of every key is documented at the top of the TOML file;
:func:`load_archetypes` validates a file and names the offending key on any mistake.

:func:`institution_plan` turns a number of institutions and a scale into the concrete list of
institutions (id, archetype, rows): for N ≠ 5 it cycles through the archetypes, the k-th copy of
an archetype getting a deterministic size factor from :data:`SIZE_VARIATION`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configs.errors import UserError
from configs.toml_reader import Table, read_toml

ARCHETYPES_FILE = Path(__file__).resolve().parent.parent / "configs" / "archetypes.toml"

EDUCATION_LEVELS = ("graduate school", "university", "high school", "other")

#: Size factor of the k-th copy (k = 1, 2, ...) of an archetype when N institutions cycle
#: through the archetypes. The first copy has the archetype's own size.
SIZE_VARIATION = (1.0, 0.8, 1.25, 0.65, 1.1, 0.9, 1.4, 0.7)

#: Smallest institution the generator writes: DP-SGD training needs a few hundred rows and
#: enough defaults. An institution needs at least MIN_ROWS rows and MIN_EXPECTED_DEFAULTS
#: expected defaults (about 50 defaults plus two standard deviations of sampling noise).
MIN_ROWS = 500
MIN_DEFAULTS = 50
MIN_EXPECTED_DEFAULTS = 65

_KEYS = ["id", "code", "description", "rows", "target_default_rate", "default_rate_tolerance",
         "creditworthiness_mean", "limit_median", "limit_sd", "limit_step", "age_mean", "age_sd",
         "female_share", "education", "inactive_share", "transactor_share", "utilisation_median"]


@dataclass(frozen=True)
class Archetype:
    """One kind of lender (see ``configs/archetypes.toml`` for the meaning of each field)."""

    id: str
    code: str
    description: str
    rows: int
    target_default_rate: float
    default_rate_tolerance: float
    creditworthiness_mean: float
    limit_median: float
    limit_sd: float
    limit_step: int
    age_mean: float
    age_sd: float
    female_share: float
    education: dict[str, float] = field(default_factory=dict)
    inactive_share: float = 0.1
    transactor_share: float = 0.2
    utilisation_median: float = 0.5

    def min_rows(self) -> int:
        """Fewest rows an institution of this archetype may have (≥ 500 rows, ≥ 65 expected defaults)."""
        return max(MIN_ROWS, math.ceil(MIN_EXPECTED_DEFAULTS / self.target_default_rate))

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(self).items()}


@dataclass(frozen=True)
class PlannedInstitution:
    """One institution of a synthetic consortium before it is generated."""

    id: str
    archetype: Archetype
    copy: int          # 1 for the first institution of this archetype, 2 for the second, ...
    index: int         # position in the consortium (0-based); selects the random stream
    size_factor: float
    rows: int


def load_archetypes(path: str | Path | None = None) -> list[Archetype]:
    """Load and validate an archetypes file (default: the shipped ``configs/archetypes.toml``)."""
    path = Path(path) if path is not None else ARCHETYPES_FILE
    root = Table(read_toml(path, "archetypes"), path, "")
    root.reject_unknown(["archetype"])
    raw = root.data.get("archetype")
    if not isinstance(raw, list) or not raw or not all(isinstance(t, dict) for t in raw):
        raise root.fail("archetype", "expected one or more [[archetype]] tables")
    out: list[Archetype] = []
    seen: dict[str, int] = {}
    for i, data in enumerate(raw):
        a = _parse(Table(data, path, f"archetype[{i}]"))
        if a.id in seen:
            raise root.fail(f"archetype[{i}].id", f"duplicate archetype id '{a.id}' (also archetype[{seen[a.id]}])")
        seen[a.id] = i
        out.append(a)
    return out


def _parse(t: Table) -> Archetype:
    t.reject_unknown(_KEYS)
    aid = t.get("id", str)
    if not re.fullmatch(r"[a-z][a-z0-9-]*[a-z]", aid):
        raise t.fail("id", f"'{aid}': use lower-case letters, digits and dashes, starting and ending with a letter")
    t = Table(t.data, t.file, f"{t.path} ('{aid}')")
    code = t.get("code", str)
    if not re.fullmatch(r"[A-Za-z0-9]{1,6}", code):
        raise t.fail("code", f"'{code}': 1 to 6 letters or digits")

    def number(key: str, lo: float, hi: float, *, open_lo: bool = False) -> float:
        v = t.get(key, float)
        if not math.isfinite(v) or v > hi or v < lo or (open_lo and v == lo):
            bound = f"({lo}, {hi}]" if open_lo else f"[{lo}, {hi}]"
            raise t.fail(key, f"{v!r} is outside {bound}")
        return v

    rows = t.get("rows", int)
    if rows < MIN_ROWS:
        raise t.fail("rows", f"{rows} rows at scale 1.0 is below the minimum of {MIN_ROWS}")
    target = number("target_default_rate", 0.0, 0.9, open_lo=True)
    tol = number("default_rate_tolerance", 0.0, 0.5, open_lo=True)
    mu = number("creditworthiness_mean", -5.0, 5.0)
    limit_median = number("limit_median", 0.0, 20_000_000.0, open_lo=True)
    limit_sd = number("limit_sd", 0.0, 3.0)
    limit_step = t.get("limit_step", int)
    if not 1 <= limit_step <= limit_median:
        raise t.fail("limit_step", f"{limit_step} must be between 1 and limit_median ({limit_median:g})")
    age_mean = number("age_mean", 19.0, 80.0)
    age_sd = number("age_sd", 0.0, 30.0, open_lo=True)
    female = number("female_share", 0.0, 1.0)
    edu_t = t.sub("education")
    edu_t.reject_unknown(EDUCATION_LEVELS)
    education = {}
    for level in EDUCATION_LEVELS:
        v = edu_t.get(level, float, 0.0)
        if not (math.isfinite(v) and v >= 0):
            raise edu_t.fail(level, f"share must be ≥ 0, got {v!r}")
        education[level] = v
    total = sum(education.values())
    if abs(total - 1.0) > 1e-6:
        raise t.fail("education", f"shares sum to {total:g}; they must sum to 1")
    inactive = number("inactive_share", 0.0, 0.9, open_lo=True)
    transactor = number("transactor_share", 0.0, 0.9, open_lo=True)
    if inactive + transactor >= 0.95:
        raise t.fail("transactor_share", "inactive_share + transactor_share must leave room for revolvers (< 0.95)")
    util = number("utilisation_median", 0.0, 1.0, open_lo=True)
    if util >= 1.0:
        raise t.fail("utilisation_median", "must be below 1")
    return Archetype(id=aid, code=code, description=t.get("description", str), rows=rows,
                     target_default_rate=target, default_rate_tolerance=tol,
                     creditworthiness_mean=mu, limit_median=limit_median, limit_sd=limit_sd,
                     limit_step=limit_step, age_mean=age_mean, age_sd=age_sd, female_share=female,
                     education=education, inactive_share=inactive, transactor_share=transactor,
                     utilisation_median=util)


def list_archetypes(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The archetypes with all their parameters, as plain dictionaries (for reports and --help)."""
    return [a.to_dict() for a in load_archetypes(path)]


def institution_plan(institutions: int, scale: float, archetypes: list[Archetype]) -> list[PlannedInstitution]:
    """Ids, archetypes and row counts of a consortium of ``institutions`` at ``scale``.

    Institution ``i`` (0-based) has archetype ``i mod len(archetypes)``; its copy number
    ``k = i // len(archetypes) + 1`` names it (``national-bank-1``, ``national-bank-2``, ...) and
    sizes it: ``rows = round(archetype.rows · scale · SIZE_VARIATION[(k - 1) mod 8])``.

    Raises :class:`UserError` when ``institutions < 1``, ``scale ≤ 0``, or an institution would
    fall below its minimum size (naming it and the smallest scale that works).
    """
    if institutions < 1:
        raise UserError(f"--institutions must be at least 1, got {institutions}")
    if not (math.isfinite(scale) and scale > 0):
        raise UserError(f"--scale must be a positive number, got {scale!r}")
    plan = []
    for i in range(institutions):
        a = archetypes[i % len(archetypes)]
        k = i // len(archetypes) + 1
        factor = SIZE_VARIATION[(k - 1) % len(SIZE_VARIATION)]
        rows = int(round(a.rows * scale * factor))
        plan.append(PlannedInstitution(id=f"{a.id}-{k}", archetype=a, copy=k, index=i,
                                       size_factor=factor, rows=rows))
    too_small = [p for p in plan if p.rows < p.archetype.min_rows()]
    if too_small:
        need = max(p.archetype.min_rows() / (p.archetype.rows * p.size_factor) for p in plan)
        need = math.ceil(need * 1000) / 1000
        worst = min(too_small, key=lambda p: p.rows / p.archetype.min_rows())
        names = ", ".join(f"{p.id} ({p.rows} rows, needs {p.archetype.min_rows()})" for p in too_small[:4])
        more = f" and {len(too_small) - 4} more" if len(too_small) > 4 else ""
        raise UserError(
            f"--scale {scale:g} makes institutions too small for DP training: {names}{more}. "
            f"Each institution needs at least {MIN_ROWS} rows and about {MIN_EXPECTED_DEFAULTS} expected "
            f"defaults (so that it has ≥ {MIN_DEFAULTS}); the smallest, {worst.id}, reaches that at "
            f"--scale {need:g}. Use --scale {need:g} or more."
        )
    return plan
