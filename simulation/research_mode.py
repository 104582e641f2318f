"""Research mode: a simulated consortium with institutions below the DP-training minimum.

An institution's table needs 500 rows and 50 defaults for DP training (``fedcredit data
validate``'s default minimum, the consortium's). A researcher may lower that minimum for a
simulation — ``fedcredit simulate --min-rows N --min-positives P``, or the run-config keys
``min-rows`` / ``min-positives``; without DP (``--no-dp``) it does not apply at all. Then every
institution below the consortium minimum is

* **allowed with a loud warning**, listed with its rows and defaults, and recorded in
  ``metrics.json`` (``research_mode``) and in the model card's warnings;
* **refused** (exit 2, before anything is written) in a DP run when DP-SGD cannot meaningfully
  learn from it at its ε — when its noise would drown all of its defaults' signal:

  ρ = q · P · √T / σ  <  1

  with P the institution's training defaults, q = min(1, B / n) the Poisson sampling rate of
  its n training rows at batch size B, T = rounds × local epochs × ⌈n / B⌉ the DP-SGD steps of
  the run, and σ the noise multiplier its node plans for the run at its budget ε (the
  statistics release reserved, δ = the node's default 10^⌊log10(1/(10·rows))⌋). Each default's
  gradient is clipped to norm C and a batch holds q·P of them on average, so over the run the
  defaults contribute at most q·P·T·C in any direction; the Gaussian noise summed over the run
  has standard deviation σ·C·√T in every direction. With ρ < 1, even perfectly aligned, all of
  the institution's defaults together are weaker than one standard deviation of its noise: its
  updates would carry noise, not signal, into the federated model. The refusal gives the
  numbers and the smallest ε at which every institution passes (checked), or ``--no-dp``.

ρ ≥ 1 is necessary, not sufficient: docs/schemas.md shows what small institutions reach.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from configs.errors import UserError

#: the consortium's DP-training minimum (clients.validation.DEFAULT_MIN_ROWS / DEFAULT_MIN_POSITIVES)
CONSORTIUM_MIN_ROWS = 500
CONSORTIUM_MIN_POSITIVES = 50
#: the largest ε the refusal's advice searches
MAX_SUGGESTED_EPSILON = 1000.0


@dataclass(frozen=True)
class DPSignal:
    """The signal-to-noise of one institution's DP-SGD run (see the module docstring)."""

    epsilon: float
    delta: float
    train_rows: int
    train_defaults: int
    sample_rate: float
    steps: int
    noise_multiplier: float  # inf when no σ fits the budget
    why_infeasible: str = ""  # the planner's reason when no σ fits

    @property
    def rho(self) -> float:
        if not math.isfinite(self.noise_multiplier):
            return 0.0
        return self.sample_rate * self.train_defaults * math.sqrt(self.steps) / self.noise_multiplier

    def words(self) -> str:
        if not math.isfinite(self.noise_multiplier):
            return (f"{self.train_rows} training rows with {self.train_defaults} defaults; no DP-SGD noise fits "
                    f"{self.steps} steps at ε = {self.epsilon:g} (δ = {self.delta:g}): {self.why_infeasible}")
        signal = self.sample_rate * self.train_defaults * self.steps
        noise = self.noise_multiplier * math.sqrt(self.steps)
        return (f"{self.train_rows} training rows with {self.train_defaults} defaults; at ε = {self.epsilon:g} "
                f"(δ = {self.delta:g}) DP-SGD needs noise multiplier σ = {self.noise_multiplier:.3g} for {self.steps} "
                f"steps at sample rate q = {self.sample_rate:.3g}: the noise over the run (σ·√T = {noise:.3g} "
                f"clipping norms in every direction) exceeds the largest gradient all its defaults can contribute "
                f"(q·P·T = {signal:.3g} clipping norms), signal-to-noise ρ = {self.rho:.2f} < 1")


def dp_signal(train_rows: int, train_defaults: int, total_rows: int, epsilon: float, batch_size: int,
              local_epochs: int, rounds: int) -> DPSignal:
    """What the institution's node would plan for the run, as :class:`DPSignal`."""
    from privacy.accountant import BudgetExceeded, PrivacyEvent
    from privacy.dp_release import STATISTICS_NOISE_MULTIPLIER
    from privacy.planning import default_delta, plan_noise, sample_rate_for, steps_per_epoch

    q = sample_rate_for(train_rows, batch_size)
    per_round = local_epochs * steps_per_epoch(train_rows, batch_size)
    delta = default_delta(total_rows)
    statistics = PrivacyEvent("statistics", STATISTICS_NOISE_MULTIPLIER, 1.0, 1)
    try:
        sigma = plan_noise(prior_events=[statistics], max_epsilon=epsilon, delta=delta, sample_rate=q,
                           steps_per_round=per_round, rounds=rounds).noise_multiplier
    except BudgetExceeded as exc:
        return DPSignal(float(epsilon), delta, train_rows, train_defaults, q, per_round * rounds, math.inf,
                        str(exc).split(";")[0])
    return DPSignal(float(epsilon), delta, train_rows, train_defaults, q, per_round * rounds, sigma)


@dataclass(frozen=True)
class SmallInstitution:
    """An institution below the consortium minimum."""

    id: str
    rows: int
    defaults: int
    train_rows: int
    train_defaults: int
    epsilon: float | None  # None: trained without DP

    def below(self) -> str:
        parts = []
        if self.rows < CONSORTIUM_MIN_ROWS:
            parts.append(f"{self.rows} rows (minimum {CONSORTIUM_MIN_ROWS})")
        if self.defaults < CONSORTIUM_MIN_POSITIVES:
            parts.append(f"{self.defaults} defaults (minimum {CONSORTIUM_MIN_POSITIVES})")
        return " and ".join(parts)


def small_institutions(nodes: dict, epsilon_of: dict[str, float | None]) -> list[SmallInstitution]:
    """The institutions of ``nodes`` (:class:`clients.node.NodeData` by id) below the consortium minimum."""
    out = []
    for inst, d in nodes.items():
        label = d.schema.label.name
        train, holdout = d.split.train, d.split.holdout
        train_defaults = int(train[label].sum())
        rows, defaults = len(train) + len(holdout), train_defaults + int(holdout[label].sum())
        if rows < CONSORTIUM_MIN_ROWS or defaults < CONSORTIUM_MIN_POSITIVES:
            out.append(SmallInstitution(inst, rows, defaults, len(train), train_defaults, epsilon_of.get(inst)))
    return out


def assess_research_mode(nodes: dict, settings, epsilon_of: dict[str, float | None]) -> dict[str, Any] | None:
    """The run's research-mode record (None when every institution meets the consortium minimum).

    ``settings`` are the run's :class:`server.settings.RunSettings`; ``epsilon_of`` each
    institution's budget (None without DP). Raises :class:`UserError` when a DP institution's
    ρ < 1 (see the module docstring), naming the ε that would do and ``--no-dp``.
    """
    small = small_institutions(nodes, epsilon_of)
    if not small:
        return None
    signals: dict[str, DPSignal] = {}
    for s in small:
        if s.epsilon is not None:
            signals[s.id] = _signal(s, s.epsilon, settings)
    drowned = [s for s in small if s.id in signals and signals[s.id].rho < 1]
    if drowned:
        raise UserError(_refusal(drowned, signals, settings))
    lines = [f"{s.id}: {s.below()}" + (f"; DP signal-to-noise ρ = {signals[s.id].rho:.1f} at ε = {s.epsilon:g}"
                                        if s.id in signals else "; trained without DP") for s in small]
    summary = (f"RESEARCH MODE: {len(small)} institution{'s' if len(small) != 1 else ''} below the consortium's "
               f"DP-training minimum of {CONSORTIUM_MIN_ROWS} rows and {CONSORTIUM_MIN_POSITIVES} defaults "
               f"(run minimum: {settings.min_rows} rows, {settings.min_positives} defaults) — "
               + "; ".join(lines) + ". Their figures are research results, not evidence that such institutions "
               "can train a useful private model.")
    return {"summary": summary, "min_rows": settings.min_rows, "min_positives": settings.min_positives,
            "consortium_min_rows": CONSORTIUM_MIN_ROWS, "consortium_min_positives": CONSORTIUM_MIN_POSITIVES,
            "institutions": {s.id: {**asdict(s), "below": s.below(),
                                    "dp": ({**asdict(signals[s.id]), "rho": signals[s.id].rho}
                                           if s.id in signals else None)} for s in small}}


#: the validation problems that only say a table is below the run's minimum
BELOW_MINIMUM = ("too-few-rows", "too-few-positives")


def load_nodes(run_config: dict, n_nodes: int, load_all) -> dict:
    """Every virtual node's data via ``load_all(run_config, n)``; when tables are refused only for
    being below the run's minimum, one error for all of them with the options that admit them all
    (``--min-rows``/``--min-positives`` of the smallest) — advice that works in one step."""
    from clients.raw_table import DataValidationError

    try:
        return load_all(run_config, n_nodes)
    except DataValidationError as first:
        if not first.problems or any(p.code not in BELOW_MINIMUM for p in first.problems):
            raise
    try:
        relaxed = load_all({**run_config, "min-rows": 0, "min-positives": 0}, n_nodes)
    except DataValidationError:
        raise first from None  # another institution has another problem: its report says which
    short: dict[str, dict[str, int]] = {}
    minimum = {"too-few-rows": int(run_config.get("min-rows", CONSORTIUM_MIN_ROWS)),
               "too-few-positives": int(run_config.get("min-positives", CONSORTIUM_MIN_POSITIVES))}
    for inst, data in relaxed.items():
        label = data.schema.label.name
        rows = data.split.n_train + len(data.split.holdout)
        positives = int(data.split.train[label].sum() + data.split.holdout[label].sum())
        if rows < minimum["too-few-rows"] or positives < minimum["too-few-positives"]:
            short[inst] = {"rows": rows, "defaults": positives}
    rows_needed = min(v["rows"] for v in short.values())
    defaults_needed = min(v["defaults"] for v in short.values())
    options = []
    if rows_needed < minimum["too-few-rows"]:
        options.append(f"--min-rows {rows_needed}")
    if defaults_needed < minimum["too-few-positives"]:
        options.append(f"--min-positives {defaults_needed}")
    listed = ", ".join(f"{k} ({v['rows']} rows, {v['defaults']} defaults)" for k, v in short.items())
    raise UserError(f"{len(short)} institution table{'s are' if len(short) != 1 else ' is'} below the DP-training "
                    f"minimum of {minimum['too-few-rows']} rows and {minimum['too-few-positives']} defaults: {listed}. "
                    f"Add rows, or simulate them in research mode: {' '.join(options)} (a loud warning, recorded in "
                    f"the run; refused where DP-SGD's noise would drown their defaults)")


def _signal(s: SmallInstitution, epsilon: float, settings) -> DPSignal:
    return dp_signal(s.train_rows, s.train_defaults, s.rows, epsilon, settings.batch_size, settings.local_epochs,
                     settings.num_server_rounds)


def _refusal(drowned: list[SmallInstitution], signals: dict[str, DPSignal], settings) -> str:
    """Why, with the numbers, and what would work (an ε found to pass for every refused institution)."""
    why = "; ".join(f"{s.id}: {signals[s.id].words()}" for s in drowned)
    need = _epsilon_needed(drowned, settings)
    fix = (f"Raise their budget to ε {need:g} or more (--epsilon {need:g}, or their entries in --budgets), give "
           f"them more rows and defaults, or train without DP (--no-dp)" if need is not None else
           "Give these institutions more rows and defaults, or train without DP (--no-dp)")
    return (f"refused: DP-SGD cannot meaningfully learn from {len(drowned)} institution"
            f"{'s' if len(drowned) != 1 else ''} at the chosen ε — {why}. Their updates would add noise, not "
            f"signal, to the federated model (simulation/research_mode.py explains ρ). {fix}.")


def _epsilon_needed(drowned: list[SmallInstitution], settings) -> float | None:
    """The smallest ε (two significant digits, rounded up) at which every refused institution has ρ ≥ 1."""
    def passes(eps: float) -> bool:
        return all(_signal(s, eps, settings).rho >= 1 for s in drowned)

    hi = max(s.epsilon or 1.0 for s in drowned)
    while not passes(hi):
        hi *= 2
        if hi > MAX_SUGGESTED_EPSILON:
            return None
    lo = hi / 2
    for _ in range(8):  # bisection on log ε: hi is within 9 % of the least ε that passes
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if passes(mid) else (mid, hi)
    digits = 1 - int(math.floor(math.log10(hi)))
    suggestion = math.ceil(hi * 10 ** digits) / 10 ** digits
    return suggestion if passes(suggestion) else hi
