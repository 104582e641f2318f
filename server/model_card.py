"""The model card of a run: what the model is for, what it was trained on, how good, how private.

:func:`build_model_card` reads a finished run directory — ``metrics.json`` (written by the
ServerApp, completed by ``fedcredit simulate`` with ``baselines``, ``data`` and ``summary``),
the model package's ``model.json`` and, in simulation, the institutions' privacy state under
``node-state/`` — and returns the card as plain JSON data. :func:`render_markdown` turns it into
``model_card.md``; :func:`write_model_card` writes both files. The report
(:mod:`server.report`) renders the same data as HTML.

What the card states, and where each figure comes from
-------------------------------------------------------
* **Training data per institution** — rows used for training (the ``num-examples`` every node
  reports; public by convention), holdout rows and the default rate *only where it may leave
  the node*: in simulation (``metrics.json`` holds ``data`` with the exact figures) or where
  the institution chose ``release-eval = exact``. With a noised or switched-off evaluation
  release the card says "not released".
* **Privacy** — ε spent, δ, budget as each node reported them with its last release in this run
  (lifetime figures: all releases of that dataset, all runs). Where the node's privacy state is
  reachable (simulation: ``RUN_DIR/node-state/<institution>``), ε is recomputed from the state
  with :func:`privacy.accountant.read_state` and the two are compared; the card records both
  and whether they agree.
* **Metrics** — the global (pooled-holdout) AUC/KS/Gini/Brier of the federated model, each
  institution's holdout figures, and, after ``fedcredit simulate``, the local-only and
  centralised baselines on the same splits.
* **Fairness** — demographic-parity and equal-opportunity differences and per-group rates at
  the cut-off, from the federated group counts (:mod:`models.fairness`).
* **Audit** — the head hash of the signed ledger (``ledger_head``) when the run kept one, and
  whether ``RUN_DIR/ledger.jsonl`` verifies (:func:`ledger_verification`): every entry's hash
  and signature under the key its run-start entry names, that key being the one metrics.json
  names, and metrics.json's head on the chain. A ledger that does not verify is a warning on
  the card and in the report. (Self-consistency only: whoever can rewrite the run directory can
  re-sign a new ledger; the nodes' stored heads and the operator's published key catch that —
  ``fedcredit ledger verify``.)
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from configs.errors import UserError

CARD_FORMAT = "fedcredit-model-card/1"
EPSILON_TOLERANCE = 1e-6  # |ε reported − ε from state| above this is a mismatch


def load_metrics(run_dir: str | Path) -> dict:
    """``RUN_DIR/metrics.json`` as a dict; a missing or unreadable file is a :class:`UserError`."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise UserError(f"{path}: not found — give the directory of a finished run "
                        "(it holds metrics.json, model/, checkpoints/)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); the run did not finish writing it") from None


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _update_checks_sentence(t: dict) -> str:
    """What the server checked of each update (server/update_checks.py) and its norm settings."""
    if t.get("secure_aggregation"):
        return ("Updates were combined by secure aggregation (SecAgg+): the server saw only their sum, so it "
                "checked no individual update.")
    norm = (f"an L2 distance from the global model of at most {_f(t['max_update_norm'], 3)}"
            if t.get("max_update_norm") else "no norm bound (max-update-norm = 0)")
    clip = (f"; each update's delta clipped to norm {_f(t['clip_update_norm'], 3)} before aggregation"
            if t.get("clip_update_norm") else "")
    return f"Every update was checked for shape, dtype and finite values, with {norm}{clip}."


def institutions_of(metrics: dict) -> list[str]:
    """Every institution the run knows of: the simulation's order, else sorted by name."""
    if metrics.get("data"):
        return list(metrics["data"])
    st = metrics.get("statistics") or {}
    names = set(st.get("contributors") or []) | set(st.get("node_metrics") or {}) | set(st.get("refused") or {})
    names |= set(metrics.get("institutions") or {})
    return sorted(names)


def is_simulation(metrics: dict) -> bool:
    """True for runs completed by ``fedcredit simulate`` (``data`` present) or with a simulated state root."""
    return bool(metrics.get("data")) or bool((metrics.get("settings") or {}).get("state-root"))


# --------------------------------------------------------------------------- privacy
def reported_privacy(metrics: dict, inst: str) -> dict:
    """The privacy fields the node reported last (training round, else its statistics answer or
    refusal — a ``budget-exhausted`` refusal carries the node's ε spent and budget)."""
    p = dict(((metrics.get("institutions") or {}).get(inst) or {}).get("privacy") or {})
    if _num(p.get("epsilon_spent")) is None:
        st = ((metrics.get("statistics") or {}).get("node_metrics") or {}).get(inst) or {}
        for k in ("epsilon-spent", "epsilon-budget", "delta", "accountant"):
            if k in st and k.replace("-", "_") not in p:
                p[k.replace("-", "_")] = st[k]
    return p


def state_dir_of(run_dir: Path, metrics: dict, inst: str) -> Path:
    """Where a simulated institution kept its privacy state: the run's state root, else RUN_DIR/node-state."""
    root = (metrics.get("settings") or {}).get("state-root") or ""
    candidates = ([Path(root) / inst] if root else []) + [run_dir / "node-state" / inst]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def read_institution_state(state_dir: Path, fingerprint: str | None) -> dict:
    """The institution's privacy state summary (read-only) or ``{"error"/"note": …}``.

    Uses :func:`privacy.accountant.read_state` (ε recomputed from the stored events with the
    stored accountant); without that module it reads the raw JSON files and says that ε could
    not be recomputed.
    """
    if not (state_dir / "privacy").is_dir():
        return {"note": f"no privacy state at {state_dir}"}
    try:
        from privacy.accountant import read_state
    except ImportError:
        files = sorted(p for p in (state_dir / "privacy").glob("*.json") if p.name != "index.json")
        raw = []
        for p in files:
            try:
                raw.append(json.loads(p.read_text()))
            except (OSError, json.JSONDecodeError) as exc:
                return {"error": f"{p}: unreadable ({exc})"}
        pick = [r for r in raw if r.get("fingerprint") == fingerprint] or (raw if len(raw) == 1 else [])
        if not pick:
            return {"note": f"{len(raw)} raw state file(s) at {state_dir}; none matches the training data"}
        r = pick[0]
        return {"path": str(state_dir), "fingerprint": r.get("fingerprint"), "delta": r.get("delta"),
                "max_epsilon": r.get("max_epsilon"), "accountant": r.get("accountant"),
                "events": len(r.get("events") or []), "epsilon_spent": None,
                "note": "privacy.accountant is not installed: ε could not be recomputed from the raw state"}
    try:
        entries = read_state(state_dir)
    except Exception as exc:  # a damaged state is reported on the card, not hidden
        return {"error": str(exc)}
    pick = [e for e in entries if fingerprint and e.get("fingerprint") == fingerprint]
    if not pick:
        pick = entries if len(entries) == 1 else []
    if not pick:
        return {"note": f"{len(entries)} dataset state(s) at {state_dir}; none matches the training data"}
    e = pick[0]
    return {"path": str(state_dir), "fingerprint": e["fingerprint"], "delta": e["delta"],
            "max_epsilon": e["max_epsilon"], "accountant": e["accountant"], "events": len(e["events"]),
            "epsilon_spent": e["epsilon_spent"], "epsilon_remaining": e["epsilon_remaining"]}


def privacy_section(run_dir: Path, metrics: dict, institutions: list[str]) -> dict:
    settings = metrics.get("settings") or {}
    dp = bool(settings.get("dp", True))
    simulation = is_simulation(metrics)
    rows = {}
    for inst in institutions:
        rep = reported_privacy(metrics, inst)
        row: dict[str, Any] = {
            "epsilon_spent": _num(rep.get("epsilon_spent")),
            "epsilon_budget": _num(rep.get("epsilon_budget")),
            "delta": _num(rep.get("delta")),
            "accountant": rep.get("accountant"),
            "noise_multiplier": _num(rep.get("noise_multiplier")),
            "sample_rate": _num(rep.get("sample_rate")),
            "steps_last_round": _num(rep.get("steps")),
            "source": "node-reported (metrics.json)" if rep else "not reported",
        }
        if simulation:
            fp = ((metrics.get("data") or {}).get(inst) or {}).get("fingerprint")
            st = read_institution_state(state_dir_of(run_dir, metrics, inst), fp)
            row["state"] = st
            if st.get("epsilon_spent") is not None:
                if row["accountant"] is None:
                    row["accountant"] = st.get("accountant")
                for key, skey in (("epsilon_budget", "max_epsilon"), ("delta", "delta")):
                    if row[key] is None:
                        row[key] = _num(st.get(skey))
                if row["epsilon_spent"] is None:
                    row["epsilon_spent"] = st["epsilon_spent"]
                    row["source"] = "node privacy state"
                    row["state_matches"] = True
                else:
                    row["state_matches"] = abs(row["epsilon_spent"] - st["epsilon_spent"]) <= EPSILON_TOLERANCE
        rows[inst] = row
    return {"dp": dp, "unit": "one borrower record of one institution (record-level, add/remove adjacency)",
            "mechanism": "DP-SGD (Poisson sampling, per-example clipping, Gaussian noise) and Gaussian-noised "
                         "feature statistics, composed in each institution's lifetime accountant",
            "clipping_norm": _num(settings.get("clipping-norm")) if dp else None,
            "target_epsilon_requested": _num(settings.get("target-epsilon")) or None,
            "institutions": rows}


# ------------------------------------------------------------------------------ data
def data_section(metrics: dict, institutions: list[str]) -> dict:
    sim_data = metrics.get("data") or {}
    stats = (metrics.get("statistics") or {}).get("node_metrics") or {}
    final = metrics.get("institutions") or {}
    rows = {}
    for inst in institutions:
        ev = (final.get(inst) or {}).get("eval") or {}
        release = ev.get("release") or ("off" if inst in final else "unknown")
        d = sim_data.get(inst)
        train_rows = (d or {}).get("rows_train")
        if train_rows is None:
            train_rows = _num((stats.get(inst) or {}).get("num-examples")) or _num(
                ((final.get(inst) or {}).get("privacy") or {}).get("num_examples"))
        row: dict[str, Any] = {"rows_train": int(train_rows) if train_rows is not None else None,
                               "evaluation_release": release}
        if d is not None:
            row.update({"rows_holdout": d.get("rows_holdout"), "rows": d.get("rows"),
                        "default_rate": _num(d.get("default_rate")),
                        "default_rate_source": "exact (simulation: the data stays on this machine)"})
        elif release == "exact" and _num(ev.get("default_rate")) is not None:
            row.update({"rows_holdout": int(ev.get("n") or 0), "default_rate": _num(ev["default_rate"]),
                        "default_rate_source": "holdout, released exactly by the institution (release-eval = exact)"})
        else:
            row.update({"rows_holdout": None, "default_rate": "not released",
                        "default_rate_source": f"evaluation release is '{release}': the institution does not "
                                               "release its exact default rate"})
        rows[inst] = row
    return {"institutions": rows,
            "source": ("synthetic consortium (simulation.synthetic archetypes)"
                       if not (metrics.get("settings") or {}).get("data-dir") and is_simulation(metrics)
                       else "institutions' own tables, validated against the schema")}


# ---------------------------------------------------------------------------- metrics
def metrics_section(metrics: dict, institutions: list[str]) -> dict:
    base = metrics.get("baselines") or {}
    local = base.get("local_only") or {}
    central = base.get("centralised") or {}
    final = metrics.get("institutions") or {}
    gain = metrics.get("member_gain") or {}
    rows = {}
    for inst in institutions:
        ev = (final.get(inst) or {}).get("eval") or {}
        g = (gain.get("institutions") or {}).get(inst) or {}
        rows[inst] = {
            "federated": {k: _num(ev.get(k)) for k in ("auc", "ks", "gini", "brier", "mean_pd")
                          for k in (k, k + "_sd") if k in ev},
            "release": ev.get("release"),
            "local_only_auc": _num((local.get(inst) or {}).get("auc")),
            "centralised_auc": _num((central.get("institutions") or {}).get(inst)),
            "personalized_auc": _num(g.get("auc_personalized")),
            "chosen_model": g.get("chosen_model"),
            "gain_from_joining": _num(g.get("gain_from_joining")),
        }
    g = metrics.get("final") or {}
    return {
        "global": {k: _num(v) for k, v in g.items()} if g else None,
        "noise_share": _num((metrics.get("evaluation_noise") or {}).get("noise_share")),
        "baselines_available": bool(base),
        "centralised_pooled_auc": _num(central.get("pooled_auc")),
        "local_only_mean_auc": _num(base.get("local_only_mean_auc")),
        "local_only_dp": base.get("dp_local_only"),
        "members_worse_than_local_only": gain.get("members_worse_than_local_only"),
        "gain_tolerance": gain.get("gain_tolerance"),
        "chosen_pooled_auc": _num(gain.get("auc_personalized_pooled")),
        "institutions": rows,
        "note": ("global figures are computed exactly (to 1/8000 logit-bin resolution) from the pooled "
                 "holdout score histograms of the institutions, not averaged"),
    }


# ----------------------------------------------------------------------------- text
def intended_use(metrics: dict, schema_key: str, dp: bool, synthetic: bool) -> dict:
    limits = [
        "Decision support only: a PD and reason codes inform a credit officer; no applicant may be declined "
        "by this model without human review and the institution's own credit policy.",
        f"Population: applicants and borrowers of revolving consumer credit (credit cards, credit lines) "
        f"described by schema {schema_key}, at institutions like those that trained it. Not for other products "
        "(mortgages, auto, business lending), other countries or segments absent from the training data.",
        "Time: trained on the institutions' data as of this run. Default behaviour drifts with the economy "
        "and with each institution's policy; monitor the score distribution and default rates and retrain "
        "or recalibrate before the model is used outside the period its data covers.",
        "Calibration: the PD is calibrated to the consortium's pooled holdouts, not to each institution's "
        "portfolio; an institution should check mean PD against its own default rate before using PDs for "
        "pricing or provisioning.",
        "Protected attributes (sex, age) are not model inputs; they are used only to measure fairness. "
        "Other inputs can still act as proxies — see the fairness results.",
    ]
    if dp:
        limits.append(
            "Differential privacy protects each borrower record of each institution with that institution's "
            "(ε, δ) below — a statement about what the model and every other release reveal about one record, "
            "over the lifetime of the institution's dataset. It does not hide institution-level facts (e.g. "
            "a portfolio's overall default rate can influence the model), does not make the model fair, and "
            "costs accuracy, most for small institutions.")
    else:
        limits.append(
            "This run was trained WITHOUT differential privacy (research setting): the model's parameters "
            "carry no formal privacy guarantee for the borrowers whose data trained it. Do not publish it "
            "outside the consortium.")
    if is_simulation(metrics):
        limits.append("Evaluation figures were released exactly (simulation). In deployment institutions "
                      "release noised or no evaluation, and these figures are not available in this form.")
    if synthetic:
        limits.append("Trained on SYNTHETIC data: for research and testing only, never for real credit decisions.")
    return {
        "purpose": "Estimate the probability of default (PD) on the next payment of a consumer-credit "
                   "applicant or borrower, as a score (points) and an approve/decline suggestion at the "
                   "consortium's cut-off, with adverse-action reason codes.",
        "users": "Credit-risk analysts and underwriters at the consortium's member institutions; model-risk, "
                 "audit and compliance reviewers.",
        "limitations": limits,
    }


def build_model_card(run_dir: str | Path) -> dict:
    """The card of the run in ``run_dir`` as JSON-ready data (see the module docstring)."""
    run_dir = Path(run_dir).resolve()
    metrics = load_metrics(run_dir)
    settings = metrics.get("settings") or {}
    model_meta: dict = {}
    mj = run_dir / "model" / "model.json"
    if mj.is_file():
        try:
            model_meta = json.loads(mj.read_text())
        except json.JSONDecodeError:
            model_meta = {}
    schema_key = metrics.get("schema") or model_meta.get("schema_key") or settings.get("schema") or "unknown"
    schema_info: dict[str, Any] = {"key": schema_key, "fingerprint": model_meta.get("schema_fingerprint")}
    try:
        from configs.schema import load_schema

        sch = load_schema(run_dir / "model" / "schema.toml" if (run_dir / "model" / "schema.toml").is_file()
                          else settings.get("schema") or None)
        schema_info.update({"name": sch.name, "version": sch.version, "description": sch.description,
                            "label": sch.label.description,
                            "model_features": [f.name for f in sch.model_features()],
                            "protected_features": [f.name for f in sch.protected_features]})
    except Exception as exc:  # the card still says what it can
        schema_info["note"] = f"schema not readable: {exc}"

    institutions = institutions_of(metrics)
    dp = bool(settings.get("dp", True))
    synthetic = is_simulation(metrics) and not settings.get("data-dir")
    spec = model_meta.get("spec") or {}
    fairness = metrics.get("fairness")
    ledger = metrics.get("ledger") or {}
    verification = ledger_verification(run_dir, metrics)
    card = {
        "format": CARD_FORMAT,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": {
            "run_id": metrics.get("run_id"), "run_dir": str(run_dir),
            "mode": "simulation" if is_simulation(metrics) else "flwr run / deployment",
            "status": metrics.get("status"), "stop_reason": metrics.get("stop_reason") or "",
            "stop_detail": metrics.get("stop_detail") or "",
            "rounds_completed": metrics.get("rounds_completed"), "rounds_planned": metrics.get("rounds_planned"),
        },
        "model": {
            "architecture": spec.get("architecture", settings.get("model")),
            "hidden_layers": spec.get("hidden"), "n_inputs": spec.get("n_inputs"),
            "output": "logit of the probability of default (PD) on the next payment",
            "weights_sha256": model_meta.get("weights_sha256"),
            "score_scale": model_meta.get("score_scale"), "cutoff_pd": model_meta.get("cutoff_pd",
                                                                                       settings.get("cutoff-pd")),
            "package": str(run_dir / "model") if mj.is_file() else None,
        },
        "schema": schema_info,
        "intended_use": intended_use(metrics, schema_key, dp, synthetic),
        "training": {
            "strategy": settings.get("strategy"), "aggregation": settings.get("aggregation"),
            "rounds": metrics.get("rounds_completed"), "local_epochs": settings.get("local-epochs"),
            "batch_size": settings.get("batch-size"), "learning_rate": settings.get("learning-rate"),
            "optimizer": settings.get("optimizer"), "seed": settings.get("seed"), "dp": dp,
            "max_update_norm": _num(settings.get("max-update-norm")) or None,
            "clip_update_norm": _num(settings.get("clip-update-norm")) or None,
            "secure_aggregation": bool(settings.get("secure-aggregation")),
        },
        "data": data_section(metrics, institutions),
        "privacy": privacy_section(run_dir, metrics, institutions),
        "metrics": metrics_section(metrics, institutions),
        "fairness": {"cutoff_pd": model_meta.get("cutoff_pd", settings.get("cutoff-pd")), "attributes": fairness}
        if fairness else None,
        "ledger": {"head": metrics.get("ledger_head"), "path": ledger.get("path"), "key_id": ledger.get("key_id"),
                   "entries": ledger.get("entries"), "verification": verification}
        if metrics.get("ledger_head") or verification is not None else None,
    }
    card["research_mode"] = metrics.get("research_mode")  # simulation.research_mode: below the DP minimum
    card["warnings"] = card_warnings(card)
    return card


def ledger_verification(run_dir: str | Path, metrics: dict) -> dict | None:
    """Verify ``RUN_DIR/ledger.jsonl`` against what metrics.json says of it.

    None when the run kept no ledger (no file, no ``ledger_head``); else ``{"ok", "path",
    "entries", "valid", "first_bad_index", "reason", "head", "key_id", "note"}``. ``ok`` is True
    when every entry verifies under the key of its run-start entry, that key is metrics.json's
    ``ledger.key_id`` (when given) and metrics.json's ``ledger_head`` is on the chain. ``note``
    says when the ledger goes on past that head (the run directory was used again).
    """
    from server.ledger import LEDGER_FILE, LedgerError, verify_ledger

    path = Path(run_dir) / LEDGER_FILE
    head = metrics.get("ledger_head")
    if not path.is_file():
        if not head:
            return None
        return {"ok": False, "path": str(path), "entries": 0, "valid": 0, "first_bad_index": None,
                "reason": f"metrics.json names ledger head {str(head)[:16]}…, but there is no {LEDGER_FILE} "
                          "in the run directory", "head": None, "key_id": None, "note": ""}
    try:
        res = verify_ledger(path, head=[{"head": head, "source": "metrics.json"}] if head else None)
    except LedgerError as exc:
        return {"ok": False, "path": str(path), "entries": 0, "valid": 0, "first_bad_index": None,
                "reason": str(exc), "head": None, "key_id": None, "note": ""}
    ok, reason = res.ok, res.reason
    if res.first_bad_index is not None and not reason.startswith("entry "):
        reason = f"entry {res.first_bad_index}{f' ({res.bad_kind})' if res.bad_kind else ''}: {reason}"
    named = (metrics.get("ledger") or {}).get("key_id")
    if ok and named and res.key_id != named:
        ok, reason = False, (f"the ledger is signed by key {res.key_id}, but metrics.json names key {named}: "
                             "it was re-signed by another key")
    note = ""
    if ok and head and res.head != head:
        after = next((len(res.chain) - 1 - e["index"] for e in res.chain if e["hash"] == head), 0)
        note = (f"the ledger has {after} entr{'y' if after == 1 else 'ies'} after the head in metrics.json "
                "(the run directory was used again after this metrics.json was written)")
    return {"ok": ok, "path": str(path), "entries": res.entries, "valid": res.valid,
            "first_bad_index": res.first_bad_index, "reason": reason, "head": res.head, "key_id": res.key_id,
            "note": note}


def ledger_warning(verification: dict | None) -> str:
    """The card's warning for a ledger that does not verify ('' when it does, or there is none)."""
    if not verification or verification.get("ok"):
        return ""
    return (f"The audit ledger does not verify: {verification.get('reason') or 'unknown reason'} "
            f"({verification.get('path')}). Do not rely on this run's records until it is explained; "
            "check with 'fedcredit ledger verify'.")


def overall_approval(fairness_attributes: dict | None) -> tuple[float | None, float | None]:
    """(approval rate of all holdout applicants at the cut-off, its noise sd or None), from the
    first attribute's groups; the sd combines the groups' (Σ (n_g/N)² sd_g²)^½ — noised counts only."""
    for a in (fairness_attributes or {}).values():
        groups = [g for g in a.get("groups", []) if g.get("approval_rate") is not None]
        n = sum(g["n"] for g in groups)
        if n > 0:
            sds = [g.get("approval_rate_sd") for g in groups]
            sd = (sum((g["n"] / n * s) ** 2 for g, s in zip(groups, sds)) ** 0.5
                  if all(isinstance(s, (int, float)) for s in sds) else None)
            return sum(g["n"] * g["approval_rate"] for g in groups) / n, sd
    return None, None


def noise_can_explain(low: float, high: float, low_sd: float | None, high_sd: float | None,
                      factor: float = 1.0) -> bool:
    """Whether ``low < factor · high`` could hold for values within 2 noise sd of the figures —
    i.e. the DP noise alone could have made ``low`` look at least ``factor · high``. Figures
    without an sd (exact releases) are taken as they are."""
    return (low - 2 * (low_sd or 0.0)) <= factor * (high + 2 * (high_sd or 0.0))


#: noise sd of the pooled row count over that count from which noised evaluation figures are flagged
NOISE_DOMINATED_SHARE = 0.25


def card_warnings(card: dict) -> list[str]:
    """Things a reader of the card must not miss (stopped run, miscalibration, ε mismatch, …)."""
    out = []
    run = card["run"]
    verification = (card.get("ledger") or {}).get("verification")
    if ledger_warning(verification):
        out.append(ledger_warning(verification))
    elif verification and verification.get("note"):
        out.append(f"Audit ledger: {verification['note']}.")
    if run.get("status") != "completed":
        out.append(f"The run did not complete: {run.get('stop_reason') or run.get('status')} — "
                   f"{run.get('stop_detail') or 'no detail'} ({run.get('rounds_completed')} of "
                   f"{run.get('rounds_planned')} rounds).")
    if not card["privacy"]["dp"]:
        out.append("Trained without differential privacy: no privacy guarantee for the training borrowers.")
    if card.get("research_mode"):
        out.append(card["research_mode"]["summary"])
    for inst, r in card["privacy"]["institutions"].items():
        st = r.get("state") or {}
        if "error" in st:
            out.append(f"{inst}: the privacy state could not be read: {st['error']}")
        elif r.get("state_matches") is False:
            out.append(f"{inst}: ε reported by the node ({r['epsilon_spent']:.6g}) differs from ε recomputed from "
                       f"its privacy state ({st['epsilon_spent']:.6g}).")
    # no warning that the evaluation noise alone can explain: a figure from noised releases counts
    # only when it stays beyond the threshold 2 noise sd away from where it was measured
    g = card["metrics"].get("global") or {}
    mean_pd, dr = g.get("mean_pd"), g.get("default_rate")
    mpd_sd, dr_sd = g.get("mean_pd_sd"), g.get("default_rate_sd")
    if mean_pd and dr and not 0.8 <= mean_pd / dr <= 1.25 and not (
            noise_can_explain(mean_pd, dr, mpd_sd, dr_sd, 1.25) and noise_can_explain(0.8 * dr, mean_pd, dr_sd, mpd_sd)):
        out.append(f"Miscalibrated: mean PD {_pct(mean_pd, mpd_sd)} against an observed default rate of "
                   f"{_pct(dr, dr_sd)} on the pooled holdouts. The ranking (AUC) is unaffected, but PDs must be "
                   "recalibrated before they are used as probabilities or with the cut-off.")
    fa = card.get("fairness") or {}
    appr, appr_sd = overall_approval(fa.get("attributes"))
    if appr is not None and not 0.02 <= appr <= 0.98 and not (
            noise_can_explain(0.02, appr, None, appr_sd) and noise_can_explain(appr, 0.98, appr_sd, None)):
        out.append(f"At the cut-off PD {fa.get('cutoff_pd')} the model approves {_pct(appr, appr_sd)} of holdout "
                   "applicants: the cut-off barely separates anyone, and the fairness figures say little.")
    share = card["metrics"].get("noise_share")
    if share is not None and share >= NOISE_DOMINATED_SHARE:
        out.append(f"The evaluation figures come from DP-noised releases whose noise is {100 * share:.0f} % of the "
                   "pooled holdout rows: the score histograms are largely noise, so AUC and KS are pulled toward "
                   "0.5 and 0 beyond the ± shown. Do not judge or certify the model on them; evaluate it on an "
                   "exact holdout (simulation, or one the operator holds).")
    tol = card["metrics"].get("gain_tolerance") or 0.01
    # with personal models scored (simulation): the model each member would use; else the federated one
    worse = [inst for inst, r in card["metrics"]["institutions"].items() if r["local_only_auc"] is not None and (
        r["gain_from_joining"] < -tol if r.get("gain_from_joining") is not None else not noise_can_explain(
            r["local_only_auc"] - tol, r["federated"].get("auc") or 0, None, r["federated"].get("auc_sd")))]
    if worse:
        out.append(f"Members worse off than alone — the model they would use ranks their holdout worse (AUC lower "
                   f"by more than {tol:g}) than a local-only model: {', '.join(worse)}.")
    return out


# --------------------------------------------------------------------------- markdown
def member_gain_markdown(m: dict) -> list[str]:
    """The per-member gain chart of the card: a text bar per institution (chosen − local-only AUC)."""
    rows = {inst: r for inst, r in m["institutions"].items() if r.get("gain_from_joining") is not None}
    if not rows:
        return []
    scale = max(0.02, max(abs(r["gain_from_joining"]) for r in rows.values()))
    width = max(len(inst) for inst in rows)
    lines = []
    for inst, r in rows.items():
        g = r["gain_from_joining"]
        bar = "█" * max(1 if g else 0, round(20 * abs(g) / scale))
        lines.append(f"{inst:<{width}}  {g:+.3f}  " + (" " * 20 + "|" + bar if g >= 0 else
                                                       " " * (20 - len(bar)) + bar + "|") +
                     f"  ({r.get('chosen_model') or '—'})")
    worse = m.get("members_worse_than_local_only")
    return ["### Gain from joining, per member", "",
            "AUC of the model each member would use — the shared model or its own personalised one, whichever "
            "ranks its holdout better — minus the AUC of its local-only model (trained alone, DP at the same "
            "budget). Bars to the right: the member gains from joining.", "", "```", *lines, "```", "",
            f"Members worse off than alone (by more than {m.get('gain_tolerance') or 0.005:g} AUC): "
            f"{'—' if worse is None else worse}.", ""]


def _f(x: Any, digits: int = 4, sd: Any = None) -> str:
    """A number for the card (``—`` for none), with ``± sd`` when the figure carries its noise's sd."""
    if isinstance(sd, (int, float)) and not isinstance(sd, bool) and x is not None:
        return f"{_f(x, digits)} ± {_f(sd, digits)}"
    if x is None:
        return "—"
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


def _g(x: Any) -> str:
    return "—" if x is None else f"{float(x):g}"


def _pct(x: Any, sd: Any = None) -> str:
    """A rate as a percentage, with ``± sd`` (percentage points) when the figure carries its noise's sd."""
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if isinstance(sd, (int, float)) and not isinstance(sd, bool):
        return f"{100 * float(x):.1f} ± {100 * float(sd):.1f} %"
    return f"{100 * float(x):.1f} %"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out + [""]


def privacy_state_text(row: dict) -> str:
    st = row.get("state")
    if st is None:
        return "held by the institution"
    if "error" in st:
        return f"state error: {st['error']}"
    if st.get("epsilon_spent") is None:
        return st.get("note", "not available")
    ok = row.get("state_matches")
    return f"{_f(st['epsilon_spent'])} ({'matches' if ok else 'MISMATCH'})"


def render_markdown(card: dict) -> str:
    run, model, sch = card["run"], card["model"], card["schema"]
    L: list[str] = [f"# Model card — consortium credit-default model (run {run['run_id']})", "",
                    f"_Generated {card['generated']} from `{run['run_dir']}`._", ""]
    if card.get("warnings"):
        L += ["## Warnings", ""] + [f"- **{w}**" for w in card["warnings"]] + [""]
    L += ["## Model", ""]
    L += _table(["field", "value"], [
        ["architecture", f"{model['architecture']}" + (f" (hidden layers {model['hidden_layers']})"
                                                       if model.get("hidden_layers") else "")],
        ["inputs", f"{model.get('n_inputs') or '—'} encoded columns"],
        ["output", model["output"]],
        ["schema", f"{sch['key']} (name {sch.get('name', '—')}, version {sch.get('version', '—')})"],
        ["schema fingerprint", f"`{sch.get('fingerprint') or '—'}`"],
        ["weights sha256", f"`{model.get('weights_sha256') or '—'}`"],
        ["score scale", ", ".join(f"{k} {v:g}" for k, v in (model.get("score_scale") or {}).items()) or "—"],
        ["cut-off PD", _f(model.get("cutoff_pd"), 3)],
        ["run status", f"{run['status']}" + (f" — stopped: {run['stop_reason']} ({run['stop_detail']})"
                                             if run.get("stop_reason") else "")],
        ["rounds", f"{run['rounds_completed']} of {run['rounds_planned']}"],
        ["mode", run["mode"]],
    ])
    iu = card["intended_use"]
    L += ["## Intended use", "", iu["purpose"], "", f"**Users:** {iu['users']}", "", "**Limits and caveats:**", ""]
    L += [f"- {x}" for x in iu["limitations"]] + [""]

    t = card["training"]
    L += ["## Training", ""]
    L += [f"Federated training with {t['strategy']} ({t['aggregation']} aggregation), {t['rounds']} round(s), "
          f"{t['local_epochs']} local epoch(s) per round, batch size {t['batch_size']}, {t['optimizer']} at "
          f"learning rate {t['learning_rate']}, seed {t['seed']}; differential privacy: "
          f"{'yes' if t['dp'] else 'NO'}.", ""]
    L += [_update_checks_sentence(t), ""]
    L += ["### Training data per institution", "", f"Source: {card['data']['source']}.", ""]
    L += _table(["institution", "training rows", "holdout rows", "default rate", "evaluation release"], [
        [inst, _f(d["rows_train"]), _f(d.get("rows_holdout")), _pct(d["default_rate"]), d["evaluation_release"]]
        for inst, d in card["data"]["institutions"].items()])

    p = card["privacy"]
    L += ["## Privacy guarantee", ""]
    if p["dp"]:
        L += [f"Unit of privacy: {p['unit']}. Mechanism: {p['mechanism']}; clipping norm "
              f"{_f(p['clipping_norm'], 3)}. ε is each institution's lifetime spend on its dataset "
              "(all releases, all runs) at its δ.", ""]
        L += _table(["institution", "ε spent", "ε budget", "δ", "accountant", "σ (noise multiplier)",
                     "ε from node state"], [
            [inst, _f(r["epsilon_spent"]), _g(r["epsilon_budget"]), _g(r["delta"]), r["accountant"] or "—",
             _f(r["noise_multiplier"], 3), privacy_state_text(r)]
            for inst, r in p["institutions"].items()])
    else:
        L += ["**No differential privacy**: this run trained without DP-SGD; no ε applies.", ""]

    m = card["metrics"]
    L += ["## Performance", ""]
    g = m["global"] or {}
    if g:
        n_sd = g.get("n_sd")
        L += [f"Global (pooled holdouts, n = {_f(int(g.get('n') or 0))}"
              + (f" ± {_f(int(round(n_sd)))}" if isinstance(n_sd, (int, float)) else "")
              + f"): AUC {_f(g.get('auc'), sd=g.get('auc_sd'))}, "
              f"Gini {_f(g.get('gini'), sd=g.get('gini_sd'))}, KS {_f(g.get('ks'), sd=g.get('ks_sd'))}, "
              f"Brier {_f(g.get('brier'), sd=g.get('brier_sd'))}, mean PD {_pct(g.get('mean_pd'), g.get('mean_pd_sd'))} "
              f"vs observed default rate {_pct(g.get('default_rate'), g.get('default_rate_sd'))}.", ""]
        if g.get("auc_sd") is not None:
            L += ["Figures with ± are computed from DP-noised evaluation releases: ± is the noise's standard "
                  "deviation (the figures are clipped to their valid ranges). Certify a model on an exact "
                  "evaluation, not on these.", ""]
    else:
        L += ["No global evaluation was released in this run.", ""]
    if m["baselines_available"]:
        L += [f"Baselines on the same splits: centralised (pooled data, non-private) AUC "
              f"{_f(m['centralised_pooled_auc'])}; local-only mean AUC {_f(m['local_only_mean_auc'])}"
              f"{' (DP at the same budget)' if m.get('local_only_dp') else ''}.", ""]
    else:
        L += ["No centralised or local-only baselines (they are trained by `fedcredit simulate`).", ""]
    L += _table(["institution", "AUC federated", "AUC local-only", "AUC centralised", "KS", "Brier", "release"], [
        [inst, _f(r["federated"].get("auc"), sd=r["federated"].get("auc_sd")), _f(r["local_only_auc"]),
         _f(r["centralised_auc"]), _f(r["federated"].get("ks"), sd=r["federated"].get("ks_sd")),
         _f(r["federated"].get("brier"), sd=r["federated"].get("brier_sd")), r["release"] or "—"]
        for inst, r in m["institutions"].items()])
    L += [f"_{m['note']}._", ""]
    L += member_gain_markdown(m)

    L += ["## Fairness", ""]
    fa = card.get("fairness")
    if fa:
        L += [f"At the cut-off PD {_f(fa['cutoff_pd'], 3)}; approval = PD below the cut-off. Demographic-parity "
              "difference = max − min approval rate over the groups; equal-opportunity difference = max − min "
              "approval rate among borrowers who did not default.", ""]
        for attr, a in fa["attributes"].items():
            L += [f"### {attr}", "",
                  f"Demographic-parity difference {_f(a.get('demographic_parity_difference'), sd=a.get('demographic_parity_difference_sd'))}; "
                  f"equal-opportunity difference {_f(a.get('equal_opportunity_difference'), sd=a.get('equal_opportunity_difference_sd'))}.", ""]
            L += _table(["group", "n", "approval rate", "TPR (defaulters declined)", "FPR (good borrowers declined)"],
                        [[g["group"], _f(int(g["n"])), _pct(g["approval_rate"], g.get("approval_rate_sd")),
                          _pct(g["tpr"], g.get("tpr_sd")), _pct(g["fpr"], g.get("fpr_sd"))]
                         for g in a["groups"]])
    else:
        L += ["No fairness counts were released in this run.", ""]

    L += ["## Audit", ""]
    led = card.get("ledger")
    if led:
        L += [f"Signed audit ledger head: `{led['head'] or '—'}` ({led.get('entries') or '?'} entries, key id "
              f"`{led.get('key_id') or '—'}`, file `{led.get('path') or 'ledger.jsonl'}`). Verify with "
              "`fedcredit ledger verify`.", ""]
        v = led.get("verification")
        if v and v.get("ok"):
            note = f" ({v['note']})" if v.get("note") else ""
            L += [(f"When this card was written the ledger verified: {v['entries']} entries, hashes and "
                   f"signatures under key `{v.get('key_id')}`, the head above on the chain{note}."), ""]
        elif v:
            L += [f"**The ledger does NOT verify:** {v.get('reason')}", ""]
    else:
        L += ["This run has no audit ledger head in metrics.json.", ""]
    return "\n".join(L)


def write_model_card(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``RUN_DIR/model_card.md`` and ``RUN_DIR/model_card.json``; return their paths."""
    run_dir = Path(run_dir)
    card = build_model_card(run_dir)
    md, js = run_dir / "model_card.md", run_dir / "model_card.json"
    js.write_text(json.dumps(card, indent=2, default=str) + "\n")
    md.write_text(render_markdown(card) + "\n")
    return md, js
