"""The synthetic consortium: lenders of different kinds whose borrowers default with a known PD.

Generative model (one borrower; everything vectorised over rows with NumPy)
--------------------------------------------------------------------------
Months are numbered as in the schema: month 1 is the last statement, month 6 the oldest; the
simulation runs forward in time from a month-7 starting state and finishes with month 0, the
month whose payment the label is about.

1. **Profile.** sex ~ Bernoulli(female_share); age = 18 + Gamma (mean ``age_mean``, sd
   ``age_sd``), whole years in [18, 90]; education ~ the archetype's shares; marital status
   depends on age (married ≈ 0.8·σ((age − 30)/4)).
2. **Latent creditworthiness** z ~ N(μ_a + g(profile), 1), where μ_a is the archetype's
   ``creditworthiness_mean`` and g adds mild group effects: female +0.20, education
   (+0.20 graduate school … −0.15 high school), married +0.05, and an age U-shape
   −min(0.4, 0.15·((age − 38)/10)²). These give the fairness checks something to show.
3. **Monthly financial health** h_t = z + e_t with e_t an AR(1) shock (ρ = 0.7, sd 0.7).
4. **Credit limit**: log L = log(limit_median) + 0.4·(z − μ_a) + education and age terms
   + N(0, limit_sd²), rounded to ``limit_step`` (the lender's own limit policy).
5. **Usage type** (inactive −2 / transactor −1 / revolver 0): a multinomial logit around the
   archetype's ``inactive_share`` and ``transactor_share``; better borrowers pay in full more
   often; each month an account switches type with probability 0.08.
6. **Repayment status** (serially correlated): a current account misses a payment
   (→ status 1) with probability σ(−3.4 − 1.3·h_t); a delinquent account with k months of delay
   cures (→ 0, or −1 when it pays everything) with probability σ(−0.4 + 0.9·h_t), otherwise
   stays at k after a partial payment (35 %) or grows to k + 1 (≤ 9): delays persist and grow.
7. **Bills** (statement balances): revolvers carry u_t·L with utilisation
   u_t = 1.08·σ(logit(utilisation_median) − 0.9·(z − μ_a) − 0.6·e_t + borrower and month
   noise), capped at 1.05 — weaker borrowers and stressed months use more of the limit;
   transactors a quarter of that; inactive accounts mostly 0 (now and then a small or a
   negative credit balance); delinquent accounts near or over the limit.
8. **Payments** in month t settle the bill of month t + 1: in full for −1 (and −2 with a
   balance), a fraction σ(−1.9 + 0.8·h_t + N(0, 0.8²)) for revolvers, mostly nothing when late.
9. **PD** of missing next month's payment (the label): a logistic link on observed drivers, the
   latent health of month 0 (h_0 = z + e_0) and an unobserved life event ε ~ N(0, 1):

   logit PD = −2.55 + 0.5·min(delay_1, 3) + 0.1·#late months 2..6 + 0.5·utilisation_1
              − 0.45·payment ratio_1 − 0.3·[inactive last month] − 0.3·h_0 + 0.35·ε

   (:data:`PD_COEF`, shared by all institutions). The label is Bernoulli(PD). Most of the PD
   is reflected in the observed columns, so a model on them gets close to, but below, the
   oracle AUC of the true PD (pooled: oracle ≈ 0.81, gradient boosting ≈ 0.79).

Archetypes differ only in their borrower mix (μ_a, ages, limits, usage), so the data are non-IID
in features and default rates while P(default | borrower) is one global function. The true PD is
written to ``truth/<institution>.csv`` next to the institution files — never as a column of them.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from configs.errors import UserError
from configs.schema import Schema, load_schema
from fedcredit.atomic_write import atomic_path, write_json_atomic
from simulation.archetypes import (
    EDUCATION_LEVELS,
    Archetype,
    PlannedInstitution,
    institution_plan,
    load_archetypes,
)

GENERATOR = "fedcredit-synth"
GENERATOR_VERSION = "1"

MONTHS = 6
MARITAL_LEVELS = ("married", "single", "other")
SEX_LEVELS = ("male", "female")

#: Coefficients of the global PD model (shared by all archetypes; see the module docstring).
PD_COEF = {
    "intercept": -2.55,
    "delay_1": 0.5,          # × min(months late last month, DELAY_CAP)
    "late_months": 0.1,      # × number of late months among months 2..6
    "utilisation_1": 0.5,    # × bill_1 / limit (clipped to [-0.1, 1.2])
    "payment_ratio_1": -0.45,  # × pay_1 / bill_2 (clipped to [0, 1]; 1 when nothing was owed)
    "inactive_1": -0.3,      # × [status last month = -2]
    "health_0": -0.3,        # × h_0 = z + e_0, the latent health of the label month
    "life_event": 0.35,      # × N(0, 1): an unobserved shock of the label month (job loss, illness)
}
DELAY_CAP = 3
HEALTH_RHO = 0.7
HEALTH_SD = 0.7
MAX_AMOUNT = 20_000_000
MIN_BILL = -5_000_000

# profile effects on the latent creditworthiness z (mild group differences)
_EDU_Z = np.array([0.20, 0.05, -0.15, -0.10])       # graduate, university, high school, other
_EDU_LIMIT = np.array([0.20, 0.05, -0.15, -0.10])    # on log(limit)
_FEMALE_Z = 0.20
_MARRIED_Z = 0.05


@dataclass
class InstitutionData:
    """A generated institution: its clean table (schema columns) and the true PD of each row."""

    id: str
    archetype: str
    table: pd.DataFrame
    true_pd: np.ndarray


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _categorical(rng: np.random.Generator, probs: np.ndarray, n: int) -> np.ndarray:
    """Indices drawn from fixed category probabilities (vectorised inverse CDF)."""
    cdf = np.cumsum(probs)
    cdf[-1] = 1.0
    return np.searchsorted(cdf, rng.random(n), side="right").clip(0, len(probs) - 1)


def simulate_borrowers(archetype: Archetype, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Simulate ``rows`` borrowers of ``archetype``: every schema feature, the true PD and the label.

    Returns a dict of NumPy arrays: ``sex`` (0 male, 1 female), ``age``, ``education`` and
    ``marital`` (indices into the schema's categories), ``credit_limit``, ``status`` / ``bill`` /
    ``pay`` (rows × 6, column 0 = month 1), ``true_pd`` and ``label`` (0/1), plus the latent ``z``.
    """
    a = archetype
    n = int(rows)
    mu = a.creditworthiness_mean

    # 1. profile
    female = rng.random(n) < a.female_share
    shape = ((a.age_mean - 18.0) / a.age_sd) ** 2
    scale = a.age_sd ** 2 / (a.age_mean - 18.0)
    age = np.clip(np.rint(18.0 + rng.gamma(shape, scale, n)), 18, 90)
    edu = _categorical(rng, np.array([a.education[k] for k in EDUCATION_LEVELS]), n)
    p_married = 0.8 * _sigmoid((age - 30.0) / 4.0)
    p_other = 0.015 + 0.04 * (age > 50)
    u = rng.random(n)
    marital = np.where(u < p_married, 0, np.where(u < p_married + p_other, 2, 1))

    # 2. latent creditworthiness
    age_z = -np.minimum(0.4, 0.15 * ((age - 38.0) / 10.0) ** 2)
    z = mu + _FEMALE_Z * female + _EDU_Z[edu] + _MARRIED_Z * (marital == 0) + age_z + rng.standard_normal(n)
    zc = z - mu

    # 3. monthly health shocks e_t (AR(1)), months 7 (index 6) .. 0 (index -1 → stored separately)
    innov = math.sqrt(1.0 - HEALTH_RHO ** 2) * HEALTH_SD
    e = np.empty((n, MONTHS + 1))
    e[:, MONTHS] = HEALTH_SD * rng.standard_normal(n)
    for t in range(MONTHS - 1, -1, -1):
        e[:, t] = HEALTH_RHO * e[:, t + 1] + innov * rng.standard_normal(n)
    e0 = HEALTH_RHO * e[:, 0] + innov * rng.standard_normal(n)
    h = z[:, None] + e

    # 4. credit limit
    loglim = (math.log(a.limit_median) + 0.4 * zc + _EDU_LIMIT[edu]
              + 0.12 * np.clip((age - 35.0) / 10.0, -1.5, 2.0) + a.limit_sd * rng.standard_normal(n))
    step = a.limit_step
    limit = np.clip(np.rint(np.exp(loglim) / step) * step, step, MAX_AMOUNT)

    # 5. usage type: -2 inactive, -1 transactor, 0 revolver
    revolver = 1.0 - a.inactive_share - a.transactor_share
    l_in = math.log(a.inactive_share / revolver)
    l_tr = math.log(a.transactor_share / revolver)

    def draw_usage(m: np.ndarray, zc_m: np.ndarray) -> np.ndarray:
        w_in = np.exp(l_in + 0.3 * zc_m)
        w_tr = np.exp(l_tr + 0.8 * zc_m)
        tot = 1.0 + w_in + w_tr
        r = rng.random(m.size) * tot
        return np.where(r < w_in, -2, np.where(r < w_in + w_tr, -1, 0))

    usage = draw_usage(np.arange(n), zc)

    # 6. repayment status, months 7 .. 1
    status = np.empty((n, MONTHS + 1), dtype=np.int64)
    late0 = rng.random(n) < _sigmoid(-3.0 - 1.2 * h[:, MONTHS])
    k0 = np.minimum(rng.geometric(0.55, n), 6)
    status[:, MONTHS] = np.where(late0, k0, usage)
    for t in range(MONTHS - 1, -1, -1):
        prev = status[:, t + 1]
        ht = h[:, t]
        switch = rng.random(n) < 0.08
        if switch.any():
            idx = np.flatnonzero(switch)
            usage[idx] = draw_usage(idx, zc[idx])
        current = prev <= 0
        miss = current & (rng.random(n) < _sigmoid(-3.4 - 1.3 * ht))
        late = ~current
        cure = late & (rng.random(n) < _sigmoid(-0.4 + 0.9 * ht))
        stay = late & ~cure & (rng.random(n) < 0.35)
        s = usage.copy()
        s[miss] = 1
        cured_to = np.where(rng.random(n) < 0.2, -1, 0)
        s[cure] = cured_to[cure]
        usage[cure] = np.maximum(usage[cure], -1)   # a cured account is in use
        s[stay] = prev[stay]
        grow = late & ~cure & ~stay
        s[grow] = np.minimum(prev[grow] + 1, 9)
        status[:, t] = s

    # 7. bills, months 7 .. 1
    util_logit = (_logit(a.utilisation_median) - 0.9 * zc[:, None] - 0.6 * e
                  + 0.7 * rng.standard_normal(n)[:, None] + 0.25 * rng.standard_normal((n, MONTHS + 1)))
    util = np.clip(_sigmoid(util_logit) * 1.08, 0.0, 1.05)
    L = limit[:, None]
    bill = util * L
    is_tr = status == -1
    bill[is_tr] *= 0.25
    inact = status == -2
    r = rng.random((n, MONTHS + 1))
    small = rng.random((n, MONTHS + 1))
    inact_bill = np.where(r < 0.72, 0.0, np.where(r < 0.96, 0.03 * small, -0.01 * small)) * L
    bill = np.where(inact, inact_bill, bill)
    neg_tr = is_tr & (r < 0.02)
    bill = np.where(neg_tr, -0.01 * small * L, bill)
    late_m = status >= 1
    late_util = np.maximum(util, 0.72 + 0.04 * status) * (1.0 + 0.015 * status)
    bill = np.where(late_m, late_util * L, bill)
    bill = np.clip(np.rint(bill), MIN_BILL, MAX_AMOUNT)

    # 8. payments in months 6 .. 1 settle the bill of the month before
    owed = np.maximum(bill[:, 1:], 0.0)
    st = status[:, :MONTHS]
    frac_rev = _sigmoid(-1.9 + 0.8 * h[:, :MONTHS] + 0.8 * rng.standard_normal((n, MONTHS)))
    r = rng.random((n, MONTHS))
    frac = np.select(
        [st == -1, st == -2, st == 0],
        [1.0 + 0.1 * (r < 0.03), (r < 0.85).astype(float), frac_rev],
        default=np.where(r < 0.7, 0.0, 0.05 * rng.random((n, MONTHS))),
    )
    pay = np.clip(np.rint(owed * frac), 0, MAX_AMOUNT)

    # 9. true PD and label
    bill1 = bill[:, 0]
    status = status[:, :MONTHS]
    bill = bill[:, :MONTHS]
    delay1 = np.clip(status[:, 0], 0, DELAY_CAP)
    n_late = (status[:, 1:] >= 1).sum(axis=1)
    util1 = np.clip(bill1 / limit, -0.1, 1.2)
    owed2 = owed[:, 0]
    pay_ratio = np.where(owed2 > 0, np.clip(pay[:, 0] / np.maximum(owed2, 1.0), 0.0, 1.0), 1.0)
    h0 = z + e0
    c = PD_COEF
    eta = (c["intercept"] + c["delay_1"] * delay1 + c["late_months"] * n_late
           + c["utilisation_1"] * util1 + c["payment_ratio_1"] * pay_ratio
           + c["inactive_1"] * (status[:, 0] == -2) + c["health_0"] * h0
           + c["life_event"] * rng.standard_normal(n))
    true_pd = _sigmoid(eta)
    label = (rng.random(n) < true_pd).astype(np.int64)
    return {
        "sex": female.astype(np.int64), "age": age.astype(np.int64), "education": edu,
        "marital": marital, "credit_limit": limit.astype(np.int64), "status": status,
        "bill": bill.astype(np.int64), "pay": pay.astype(np.int64), "true_pd": true_pd,
        "label": label, "z": z,
    }


# --------------------------------------------------------------------------------------------
# schema compatibility and the clean table


def _required_columns(schema: Schema) -> None:
    """Check that ``schema`` has the columns this generator produces (consumer-credit v1 shape)."""
    need: dict[str, tuple[str, tuple[str, ...] | None]] = {
        "credit_limit": ("numeric", None), "sex": ("categorical", SEX_LEVELS),
        "education": ("categorical", EDUCATION_LEVELS), "marital_status": ("categorical", MARITAL_LEVELS),
        "age": ("numeric", None),
    }
    for m in range(1, MONTHS + 1):
        need[f"pay_status_{m}"] = ("ordinal", None)
        need[f"bill_amount_{m}"] = ("numeric", None)
        need[f"pay_amount_{m}"] = ("numeric", None)
    have = set(schema.feature_names)
    missing = [c for c in need if c not in have]
    extra = [c for c in schema.feature_names if c not in need]
    if missing or extra:
        raise UserError(
            f"the synthetic generator writes the consumer-credit columns; schema {schema.key} "
            f"({schema.source}) differs: missing {', '.join(missing) or 'none'}, "
            f"extra {', '.join(extra) or 'none'}. Use --schema consumer-credit-v1 or a schema with these columns."
        )
    for col, (kind, cats) in need.items():
        f = schema.feature(col)
        if f.kind != kind:
            raise UserError(f"schema {schema.key}: '{col}' is {f.kind}; the synthetic generator writes it as {kind}")
        if cats is not None and set(cats) - set(f.categories or ()):
            raise UserError(f"schema {schema.key}: '{col}' lacks the categories "
                            f"{', '.join(sorted(set(cats) - set(f.categories or ())))} that the generator writes")
    if schema.label.positive not in (1, "1") or schema.label.negative not in (0, "0"):
        raise UserError(f"schema {schema.key}: the generator writes the label as 1 (default) / 0")


def to_clean_table(sim: dict[str, np.ndarray], schema: Schema, id_prefix: str) -> pd.DataFrame:
    """The schema's clean table (exactly ``schema.columns``) from simulated arrays.

    Numeric values are clipped into the schema's declared ranges; categorical values are the
    schema's category strings.
    """
    n = len(sim["label"])
    cols: dict[str, Any] = {}
    if schema.id_column:
        width = max(6, len(str(n)))
        cols[schema.id_column] = pd.Series(np.arange(1, n + 1)).astype(str).str.zfill(width).radd(f"{id_prefix}-").to_numpy()
    cols["credit_limit"] = sim["credit_limit"]
    cols["sex"] = pd.Categorical.from_codes(sim["sex"], categories=list(SEX_LEVELS))
    cols["education"] = pd.Categorical.from_codes(sim["education"], categories=list(EDUCATION_LEVELS))
    cols["marital_status"] = pd.Categorical.from_codes(sim["marital"], categories=list(MARITAL_LEVELS))
    cols["age"] = sim["age"]
    for m in range(1, MONTHS + 1):
        cols[f"pay_status_{m}"] = sim["status"][:, m - 1]
    for m in range(1, MONTHS + 1):
        cols[f"bill_amount_{m}"] = sim["bill"][:, m - 1]
    for m in range(1, MONTHS + 1):
        cols[f"pay_amount_{m}"] = sim["pay"][:, m - 1]
    for f in schema.features:
        if f.kind in ("numeric", "ordinal"):
            lo, hi = f.range  # type: ignore[misc]
            cols[f.name] = np.clip(cols[f.name], math.ceil(lo), math.floor(hi)).astype(np.int64)
    label = np.where(sim["label"] == 1, schema.label.positive, schema.label.negative)
    cols[schema.label.name] = label
    df = pd.DataFrame(cols)
    for f in schema.features:
        if f.kind == "categorical":
            df[f.name] = df[f.name].astype(str)
    return df[schema.columns]


def generate_institution(archetype: Archetype, rows: int, rng: np.random.Generator,
                         schema: Schema | None = None, *, id_prefix: str | None = None,
                         ) -> tuple[pd.DataFrame, np.ndarray]:
    """Generate one institution: its clean table (``schema.columns``) and each row's true PD.

    ``rng`` is consumed; the same generator state gives the same rows. Borrower ids are
    ``<id_prefix>-000001``, ... (default prefix: the archetype's ``code``).
    """
    schema = schema or load_schema()
    _required_columns(schema)
    if rows < 1:
        raise UserError(f"rows must be at least 1, got {rows}")
    sim = simulate_borrowers(archetype, rows, rng)
    return to_clean_table(sim, schema, id_prefix or archetype.code), sim["true_pd"]


def consortium_member(index: int, institutions: int, scale: float, seed: int,
                      schema: Schema | None = None) -> tuple[str, pd.DataFrame, np.ndarray]:
    """Institution ``index`` of the consortium ``generate_consortium`` would write: (id, table, true PD).

    The same rows as the file ``data synth`` writes for it, generated in memory — what a
    virtual node of a synthetic simulation trains on.
    """
    from simulation.archetypes import institution_plan, load_archetypes

    p = institution_plan(institutions, scale, load_archetypes())[index]
    table, true_pd = generate_institution(p.archetype, p.rows, institution_rng(seed, p.index), schema,
                                          id_prefix=f"{p.archetype.code}{p.copy}")
    return p.id, table, true_pd


def institution_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of institution ``index`` of a consortium with ``seed``.

    Independent of the number of institutions: ``national-bank-1`` is the same whether the
    consortium has 5 institutions or 20.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


# --------------------------------------------------------------------------------------------
# metrics


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann–Whitney) formula, ties counted half. NaN for one class."""
    y = np.asarray(y).astype(bool)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = pd.Series(np.asarray(score, dtype=float)).rank(method="average").to_numpy()
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


# --------------------------------------------------------------------------------------------
# writing files


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    """Write a table as CSV (header, comma, '\\n', quotes only where needed) via pyarrow.

    Deterministic: the same table gives the same bytes.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = pa.Table.from_pandas(df, preserve_index=False)
    with atomic_path(path) as tmp:
        pacsv.write_csv(table, tmp, write_options=pacsv.WriteOptions(quoting_style="needed"))


#: generators whose previous output ``--force`` may remove (files listed in their manifest only)
OWN_GENERATORS = (GENERATOR, "fedcredit-partition")


def prepare_out_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty output directory unless ``force``; with it, remove a previous output.

    Only files that a manifest of a fedcredit generator in ``out`` lists are removed.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory; choose another path")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UserError(f"--out {out} exists and is not empty; choose a new directory or pass --force "
                            f"to replace the fedcredit files in it")
        _remove_previous(out)


def _remove_previous(out: Path) -> None:
    """With --force: delete the files a previous synth run listed in its manifest (nothing else)."""
    manifest = out / "manifest.json"
    if not manifest.is_file():
        return
    try:
        old = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(old, dict) or old.get("generator") not in OWN_GENERATORS:
        return
    for inst in old.get("institutions", []):
        for key in ("file", "truth_file"):
            rel = inst.get(key) if isinstance(inst, dict) else None
            if isinstance(rel, str) and ".." not in Path(rel).parts and not Path(rel).is_absolute():
                (out / rel).unlink(missing_ok=True)
    truth = out / "truth"
    if truth.is_dir() and not any(truth.iterdir()):
        truth.rmdir()
    manifest.unlink(missing_ok=True)


def generate_consortium(out_dir: str | Path | None, *, institutions: int = 5, scale: float = 1.0,
                        seed: int = 0, schema: Schema | str | None = None,
                        archetypes: list[Archetype] | str | Path | None = None, force: bool = False,
                        progress: Callable[[PlannedInstitution, int], None] | None = None,
                        ) -> dict[str, Any]:
    """Generate a consortium and write it to ``out_dir``; return the manifest.

    Files: ``<institution-id>.csv`` (clean schema columns), ``truth/<institution-id>.csv``
    (borrower id, true PD), ``manifest.json``. With ``out_dir=None`` nothing is written and the
    manifest carries the tables under the private key ``"_data"`` (list of
    :class:`InstitutionData`) — handy in tests and benchmarks.

    ``progress(planned, done)`` is called after each institution is written.
    """
    schema_obj = schema if isinstance(schema, Schema) else load_schema(schema)
    _required_columns(schema_obj)
    arch = archetypes if isinstance(archetypes, list) else load_archetypes(archetypes)
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed!r}")
    plan = institution_plan(institutions, scale, arch)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        prepare_out_dir(out, force)
        (out / "truth").mkdir(parents=True, exist_ok=True)

    entries = []
    all_y: list[np.ndarray] = []
    all_pd: list[np.ndarray] = []
    data: list[InstitutionData] = []
    label = schema_obj.label.name
    for done, p in enumerate(plan, start=1):
        rng = institution_rng(seed, p.index)
        sim = simulate_borrowers(p.archetype, p.rows, rng)
        prefix = f"{p.archetype.code}{p.copy}"
        table = to_clean_table(sim, schema_obj, prefix)
        pd_true = sim["true_pd"]
        y = sim["label"]
        entry = {
            "id": p.id,
            "archetype": p.archetype.id,
            "rows": int(p.rows),
            "defaults": int(y.sum()),
            "default_rate": round(float(y.mean()), 6),
            "target_default_rate": p.archetype.target_default_rate,
            "mean_true_pd": round(float(pd_true.mean()), 6),
            "oracle_auc": round(auc(y, pd_true), 6),
            "file": f"{p.id}.csv",
            "truth_file": f"truth/{p.id}.csv",
        }
        if out is not None:
            write_csv(table, out / entry["file"])
            truth = pd.DataFrame({schema_obj.id_column or "row": table[schema_obj.id_column].to_numpy()
                                  if schema_obj.id_column else np.arange(len(table)),
                                  "true_pd": np.round(pd_true, 8)})
            write_csv(truth, out / entry["truth_file"])
        else:
            data.append(InstitutionData(p.id, p.archetype.id, table, pd_true))
        entries.append(entry)
        all_y.append(y)
        all_pd.append(pd_true)
        if progress is not None:
            progress(p, done)
        del table, sim
    y_all = np.concatenate(all_y)
    pd_all = np.concatenate(all_pd)
    manifest: dict[str, Any] = {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "schema": schema_obj.key,
        "schema_fingerprint": schema_obj.fingerprint(),
        "seed": seed,
        "scale": scale,
        "institutions": entries,
        "rows": int(y_all.size),
        "defaults": int(y_all.sum()),
        "default_rate": round(float(y_all.mean()), 6),
        "oracle_auc": round(auc(y_all, pd_all), 6),
        "archetypes": {a.id: a.to_dict() for a in arch},
        "label": label,
        "note": "truth/ holds each borrower's true PD; never feed it (or manifest figures) to a model",
    }
    if out is not None:
        write_json_atomic(out / "manifest.json", manifest)
    else:
        manifest["_data"] = data
    return manifest


def calibrate_creditworthiness(archetype: Archetype, *, rows: int = 200_000, seed: int = 12345,
                               tol: float = 1e-4) -> float:
    """The ``creditworthiness_mean`` at which the archetype's mean true PD equals its target.

    Bisection on μ with common random numbers (a fixed seed), ``rows`` simulated borrowers per
    step. Use it after changing an archetype and paste the result into the archetypes file.
    """
    from dataclasses import replace

    def mean_pd(mu: float) -> float:
        sim = simulate_borrowers(replace(archetype, creditworthiness_mean=mu), rows, np.random.default_rng(seed))
        return float(sim["true_pd"].mean())

    lo, hi = -4.0, 4.0
    target = archetype.target_default_rate
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if mean_pd(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < tol:
            break
    return round(0.5 * (lo + hi), 4)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
