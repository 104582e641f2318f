"""One line per step of the run in the ServerApp's log — what ``flwr log`` and ``flwr run --stream`` show.

Flower forwards everything the ServerApp process writes to the SuperLink, so the operator can
follow a run from the Flower CLI without reading ``progress.jsonl`` on the SuperLink host. Each
line starts with ``fedcredit`` and a UTC time::

    fedcredit 12:03:04Z round 3/5 | trained 3 of 4: bank-a, bank-b, lender-c | refused: lender-d
      (budget-exhausted: …) | rejected: none | dropped: none | ε spent 0.81–1.20 |
      AUC 0.742 ± 0.031, KS 0.381 ± 0.045 | 4.2 s

(one line; ``±`` is the noise's standard deviation of figures from DP-noised evaluation
releases, :mod:`server.metric_noise`). Lines are logged through Flower's logger at INFO.
"""

from __future__ import annotations

from datetime import datetime, timezone
from logging import INFO

DETAIL_CHARS = 120  # a refusal's or rejection's detail is cut to this many characters


def emit(line: str) -> None:
    """Log ``line`` through Flower's logger (shown by ``flwr log`` / ``flwr run --stream``)."""
    from flwr.common.logger import log

    log(INFO, "%s", line)


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%H:%M:%SZ")


def _short(text) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= DETAIL_CHARS else text[:DETAIL_CHARS - 1] + "…"


def _why(value) -> str:
    if isinstance(value, dict):
        reason, detail = value.get("reason", ""), value.get("detail", "")
        return _short(f"{reason}: {detail}" if detail else reason)
    return _short(value)


def outcomes(label: str, by_institution: dict | None) -> str:
    """``"refused: bank-a (budget-exhausted: …), lender-c (…)"`` or ``"refused: none"``."""
    if not by_institution:
        return f"{label}: none"
    return f"{label}: " + ", ".join(f"{who} ({_why(why)})" for who, why in by_institution.items())


def figure(name: str, figures: dict, key: str, digits: int = 3) -> str | None:
    """``"AUC 0.742 ± 0.031"`` (± only for a figure from noised releases); None when absent."""
    value = figures.get(key)
    if value is None:
        return None
    sd = figures.get(f"{key}_sd")
    return f"{name} {value:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def epsilon_range(record: dict) -> str:
    """The range of the participants' lifetime ε after the round (training and evaluation releases)."""
    spent = {who: p.get("epsilon_spent") for who, p in (record.get("privacy") or {}).items()}
    spent.update(record.get("privacy_after_evaluation") or {})
    values = [float(v) for v in spent.values() if v is not None]
    if not values:
        return "ε spent: not reported (no DP)"
    low, high = min(values), max(values)
    return f"ε spent {low:.2f}" if high - low < 0.005 else f"ε spent {low:.2f}–{high:.2f}"


def round_line(record: dict, rounds_planned: int) -> str:
    """The log line of a finished (or stopped) training round and its evaluation."""
    participants = record.get("participants") or []
    parts = [f"fedcredit {_stamp()} round {record.get('round')}/{rounds_planned}",
             f"trained {len(participants)} of {len(record.get('sampled') or [])}: {', '.join(participants) or '—'}",
             outcomes("refused", {**(record.get("refused") or {}),
                                  **{f"{w} (evaluation)": v for w, v in (record.get("evaluation_refused") or {}).items()}}),
             outcomes("rejected", {**(record.get("rejected") or {}),
                                   **{f"{w} (evaluation)": v for w, v in (record.get("evaluation_rejected") or {}).items()}}),
             outcomes("dropped", {**(record.get("dropped") or {}),
                                  **{f"{w} (evaluation)": v for w, v in (record.get("evaluation_failed") or {}).items()}}),
             epsilon_range(record)]
    if record.get("stopped"):
        parts.append(f"run stops: {record['stopped']}")
    parts.append(f"evaluated with {record['evaluation_in']}" if record.get("evaluation_in") else figures(record))
    if record.get("wall_s") is not None:
        parts.append(f"{record['wall_s']:.1f} s")
    return " | ".join(parts)


def figures(record: dict) -> str:
    """``"AUC 0.742 ± 0.031, KS 0.381 ± 0.045"``, or ``"not evaluated"``."""
    g = record.get("global") or {}
    shown = [f for f in (figure("AUC", g, "auc"), figure("KS", g, "ks")) if f]
    return ", ".join(shown) if shown else "not evaluated"


def evaluation_line(record: dict, rounds_planned: int) -> str:
    """The log line of a round's evaluation that came after the round's own line (it went with the
    next round's train messages, :mod:`server.folded_evaluation`)."""
    evaluated = record.get("institutions") or {}
    return " | ".join([
        f"fedcredit {_stamp()} round {record.get('round')}/{rounds_planned} evaluation",
        f"evaluated by {len(evaluated)}: {', '.join(evaluated) or '—'}",
        outcomes("refused", record.get("evaluation_refused")), outcomes("rejected", record.get("evaluation_rejected")),
        outcomes("dropped", record.get("evaluation_failed")), epsilon_range(record), figures(record)])


def statistics_line(statistics: dict) -> str:
    """The log line of the federated feature statistics."""
    contributors = statistics.get("contributors") or []
    return " | ".join([f"fedcredit {_stamp()} statistics", f"{len(contributors)} answered: "
                       f"{', '.join(contributors) or '—'}", outcomes("refused", statistics.get("refused")),
                       outcomes("rejected", statistics.get("rejected")), outcomes("dropped", statistics.get("dropped"))])


def end_line(summary: dict) -> str:
    """The log line of the run's end: status, rounds, the final figures, where the results are."""
    final = summary.get("final") or {}
    shown = [f for f in (figure("AUC", final, "auc"), figure("KS", final, "ks")) if f]
    parts = [f"fedcredit {_stamp()} run {summary.get('run_id')} {summary.get('status')}"
             + (f" ({summary['stop_reason']}: {_short(summary.get('stop_detail', ''))})"
                if summary.get("stop_reason") else ""),
             f"{summary.get('rounds_completed')}/{summary.get('rounds_planned')} rounds",
             "final " + (", ".join(shown) if shown else "figures: none released"),
             f"run directory {summary.get('run_dir')}"]
    if summary.get("ledger_head"):
        parts.append(f"ledger head {summary['ledger_head'][:16]}…")
    if summary.get("wall_s") is not None:
        parts.append(f"{summary['wall_s']:.0f} s")
    return " | ".join(parts)
