"""The model card of a run: what the model is for, what it was trained on, how good, how private.

:func:`build_model_card` reads a finished run directory — ``metrics.json`` (written by the
ServerApp, completed by ``fedcredit simulate`` with ``baselines``, ``data`` and ``summary``),
the model package's ``model.json`` and, in simulation, the institutions' privacy state under
``node-state/`` — and returns the card as plain JSON data, built once: :mod:`server.card_document`
lays it out as text that ``model_card.md`` and the report's "Model card" section
(:mod:`server.report`) both render from templates. :func:`write_model_card` writes
``model_card.md`` and ``model_card.json``. What the card warns about is
:mod:`server.card_warnings`; what it checks against the run directory (privacy state, ledger)
is :mod:`server.card_checks`.

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
  whether ``RUN_DIR/ledger.jsonl`` verifies (:func:`server.card_checks.ledger_verification`): every entry's hash
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
from server.card_checks import ledger_verification, read_institution_state, state_dir_of
from server.card_warnings import card_warnings

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


def write_model_card(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``RUN_DIR/model_card.md`` and ``RUN_DIR/model_card.json``; return their paths."""
    run_dir = Path(run_dir)
    return write_card_files(run_dir, build_model_card(run_dir))


def write_card_files(run_dir: Path, card: dict) -> tuple[Path, Path]:
    """Write ``card`` as ``RUN_DIR/model_card.md`` and ``RUN_DIR/model_card.json``; return their paths."""
    from server.card_document import render_markdown

    md, js = run_dir / "model_card.md", run_dir / "model_card.json"
    js.write_text(json.dumps(card, indent=2, default=str) + "\n")
    md.write_text(render_markdown(card) + "\n")
    return md, js
