"""The run report: one self-contained ``report.html`` for the operator and the institutions.

:func:`write_report` reads a finished run directory (``metrics.json``, the model package's
``model.json``, the model card of :mod:`server.model_card`) and writes one HTML file with no
external resources: the style sheet inlined, every plot a base64-embedded PNG
(:mod:`server.report_figures`). Each section below is a function that picks its figures from
the run — a dict the section's template (``server/templates/report/<id>.html.j2``) writes out,
autoescaped — or says what the run lacks (``{"absent": why}``):

==================  ==========================================================================
summary             key figures, warnings, one row per institution
training            global AUC/KS per round and the aggregated training loss (runs without DP)
discrimination      ROC curve and KS (score CDFs of defaulters and non-defaulters), from the
                    pooled class-conditional score histograms (``final_histograms``)
calibration         mean PD against the observed default rate per score band (deciles of the
                    pooled holdouts; PD of a histogram bin = its centre)
distribution        score distribution of each institution's holdout (``final_institution_histograms``)
comparison          federated vs local-only (and centralised) AUC per institution
privacy             ε spent vs budget per institution, δ, σ, accountant, state cross-check
fairness            approval rate and TPR/FPR per group, parity/opportunity differences
participation       per round: who trained, who refused, dropped out or was rejected
model-card          the model card (model, intended use, training, audit) — the same document
                    as ``model_card.md`` (:mod:`server.card_document`)
==================  ==========================================================================
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from models.calibration import calibration_bands
from server import report_figures as F
from server.card_document import CardDocument, card_document
from server.card_warnings import overall_approval
from server.formatting import num
from server.model_card import build_model_card, load_metrics, write_card_files
from server.templating import render

SECTIONS: list[tuple[str, str]] = [
    ("summary", "Summary"),
    ("training", "Training curves"),
    ("discrimination", "Discrimination: ROC and KS"),
    ("calibration", "Calibration"),
    ("distribution", "Score distribution per institution"),
    ("comparison", "Federated vs local-only and centralised"),
    ("privacy", "Privacy: ε spent vs budget"),
    ("fairness", "Fairness by group"),
    ("participation", "Participation per round"),
    ("model-card", "Model card"),
]

#: at most this many per-institution panels in the score-distribution figure (a consortium of
#: hundreds would make a figure hundreds of panels tall); the largest holdouts are shown
MAX_DISTRIBUTION_PANELS = 24


def _score_scale(run_dir: Path):
    from models.scoring import ScoreScale

    mj = run_dir / "model" / "model.json"
    try:
        return ScoreScale(**json.loads(mj.read_text())["score_scale"])
    except Exception:
        return ScoreScale()


# ----------------------------------------------------------------------------- sections
def summary_section(card: dict) -> dict:
    g = card["metrics"].get("global") or {}
    m, p = card["metrics"], card["privacy"]
    eps = [r["epsilon_spent"] for r in p["institutions"].values() if r["epsilon_spent"] is not None]
    budgets = [r["epsilon_budget"] for r in p["institutions"].values() if r["epsilon_budget"] is not None]
    no_epsilon = "no DP" if not p["dp"] else "—"
    tiles = [("global AUC", num(g.get("auc"), 3, g.get("auc_sd"))), ("KS", num(g.get("ks"), 3, g.get("ks_sd"))),
             ("Gini", num(g.get("gini"), 3, g.get("gini_sd"))),
             ("centralised AUC", num(m.get("centralised_pooled_auc"), 3)),
             ("local-only AUC (mean)", num(m.get("local_only_mean_auc"), 3)),
             ("max ε spent / budget", f"{max(eps):.2f} / {max(budgets):g}" if eps and budgets else no_epsilon),
             ("institutions", str(len(p["institutions"]))),
             ("rounds", f"{card['run']['rounds_completed']} / {card['run']['rounds_planned']}")]
    rows = []
    for inst, d in card["data"]["institutions"].items():
        mi = m["institutions"].get(inst, {})
        pr = p["institutions"].get(inst, {})
        fed, loc = mi.get("federated", {}).get("auc"), mi.get("local_only_auc")
        gain = mi.get("gain_from_joining")  # the better of the shared and the personalised model, when scored
        if gain is None and fed is not None and loc is not None:
            gain = fed - loc
        spent, budget = pr.get("epsilon_spent"), pr.get("epsilon_budget")
        rows.append({"institution": inst, "rows_train": d["rows_train"], "default_rate": d["default_rate"],
                     "local_only": loc, "federated": fed, "centralised": mi.get("centralised_auc"), "gain": gain,
                     "epsilon": (f"{spent:.3f} / {budget:g}" if spent is not None and budget is not None
                                 else no_epsilon)})
    return {"tiles": tiles, "warnings": card.get("warnings") or [], "rows": rows}


def training_section(metrics: dict) -> dict:
    hist = [r for r in metrics.get("history") or [] if "model_sha256_after" in r]
    if not hist:
        return {"absent": "No training round completed in this run."}
    return {"figure": F.training_figure([r["round"] for r in hist],
                                        [(r.get("global") or {}).get("auc") for r in hist],
                                        [(r.get("global") or {}).get("ks") for r in hist],
                                        [r.get("train_loss") for r in hist])}


def discrimination_section(metrics: dict, scale) -> dict:
    fh = metrics.get("final_histograms")
    if not fh:
        return {"absent": "No pooled score histograms were released in this run (evaluation off), so no ROC or KS."}
    neg, pos = F.hist(fh["hist_neg"]), F.hist(fh["hist_pos"])
    if neg.sum() <= 0 or pos.sum() <= 0:
        return {"absent": "The pooled holdouts hold only one class, so ROC and KS are undefined."}
    return {"figure": F.discrimination_figure(neg, pos, scale)}


def calibration_section(metrics: dict) -> dict:
    fh = metrics.get("final_histograms")
    if not fh:
        return {"absent": "No pooled score histograms were released in this run, so calibration cannot be shown."}
    bands = calibration_bands(fh["hist_neg"], fh["hist_pos"])
    if not bands:
        return {"absent": "The pooled score histograms are empty."}
    g = metrics.get("final") or {}
    return {"figure": F.calibration_figure(bands), "bands": bands,
            "overall": g if F.finite(g.get("mean_pd")) and F.finite(g.get("default_rate")) else None}


def distribution_section(metrics: dict, scale, cutoff_pd: float | None, order: list[str]) -> dict:
    ih = metrics.get("final_institution_histograms") or {}
    if not ih:
        return {"absent": "No per-institution score histograms in this run (evaluation off or released too coarsely)."}
    names = [i for i in order if i in ih] + [i for i in ih if i not in order]
    shown = names
    if len(names) > MAX_DISTRIBUTION_PANELS:
        size = {i: float(np.sum(ih[i]["hist_neg"]) + np.sum(ih[i]["hist_pos"])) for i in names}
        keep = set(sorted(names, key=lambda i: -size[i])[:MAX_DISTRIBUTION_PANELS])
        shown = [i for i in names if i in keep]
    cut = float(scale.points(np.array([cutoff_pd]))[0]) if cutoff_pd else None
    return {"figure": F.distribution_figure({i: ih[i] for i in shown}, scale, cut), "cut": cut,
            "cutoff_pd": cutoff_pd, "shown": len(shown), "institutions": len(names)}


def comparison_section(card: dict) -> dict:
    m = card["metrics"]
    inst = list(m["institutions"])
    fed = [m["institutions"][i]["federated"].get("auc") for i in inst]
    if not any(v is not None for v in fed):
        return {"absent": "No per-institution evaluation was released, so no comparison is possible."}
    loc = [m["institutions"][i]["local_only_auc"] for i in inst]
    cen = [m["institutions"][i]["centralised_auc"] for i in inst]
    has_base = m["baselines_available"] and any(v is not None for v in loc)
    series = {"local-only": loc} if has_base else {}
    series["federated"] = fed
    if has_base and any(v is not None for v in cen):
        series["centralised (pooled, non-private)"] = cen
    g = m.get("global") or {}
    pooled = [("federated", num(g.get("auc"), 4, g.get("auc_sd"))),
              ("centralised (all data pooled, no DP)", num(m["centralised_pooled_auc"], 4)),
              (f"local-only, mean over institutions{' (DP)' if m.get('local_only_dp') else ''}",
               num(m["local_only_mean_auc"], 4))]
    return {"figure": F.comparison_figure(inst, series), "has_base": has_base, "pooled": pooled if has_base else [],
            "member_gain": member_gain(m)}


def member_gain(m: dict) -> dict | None:
    """Per member: the AUC of the model it would use (the better, on its holdout, of the shared and its
    personalised model) minus its local-only AUC; None when the run scored no personal models."""
    rows = {i: r for i, r in m["institutions"].items() if r.get("gain_from_joining") is not None}
    if not rows:
        return None
    tolerance = m.get("gain_tolerance") or 0.005
    return {"figure": F.member_gain_figure(rows, tolerance), "tolerance": tolerance, "rows": rows,
            "worse": m.get("members_worse_than_local_only")}


def privacy_section(card: dict, doc: CardDocument) -> dict:
    p = card["privacy"]
    if not p["dp"]:
        return {"absent": "This run trained without differential privacy (research setting): no ε was spent and "
                          "the model carries no privacy guarantee for its training borrowers."}
    rows = p["institutions"]
    inst = [i for i, r in rows.items() if r["epsilon_spent"] is not None]
    if not inst:
        return {"absent": "No institution reported its privacy spend in this run."}
    figure = F.privacy_figure(inst, [rows[i]["epsilon_spent"] for i in inst], [rows[i]["epsilon_budget"] for i in inst])
    return {"figure": figure, "clipping_norm": p["clipping_norm"], "table": doc.parts["privacy-table"]}


def fairness_section(card: dict, doc: CardDocument) -> dict:
    fa = card.get("fairness")
    if not fa or not fa.get("attributes"):
        return {"absent": "No fairness counts were released in this run (evaluation off, or the schema declares no "
                          "protected attributes)."}
    attributes = [{"name": attr, "figure": F.fairness_figure(attr, a["groups"]), "blocks": doc.parts[f"fairness:{attr}"]}
                  for attr, a in fa["attributes"].items()]
    appr, appr_sd = overall_approval(fa["attributes"])
    return {"cutoff_pd": fa["cutoff_pd"], "approval": appr, "approval_sd": appr_sd, "attributes": attributes}


def _who(d: dict) -> list[tuple[str, str]]:
    """(institution, reason — at most 80 characters) of a round's refused/dropped/rejected dict."""
    return [(who, str(why.get("reason") if isinstance(why, dict) else why)[:80]) for who, why in d.items()]


def _with_evaluation(r: dict, key: str, evaluation_key: str) -> dict:
    """A round's training refusals/dropouts/rejections and its evaluation's, marked as such."""
    marked = {f"{who} (evaluation)": why for who, why in (r.get(evaluation_key) or {}).items()}
    return {**(r.get(key) or {}), **marked}


def participation_section(metrics: dict) -> dict:
    hist = metrics.get("history") or []
    if not hist:
        return {"absent": "No rounds were recorded."}
    rows = []
    for r in hist:
        g = r.get("global") or {}
        rows.append({"round": str(r.get("round")),
                     "trained": f"{len(r.get('participants') or [])} / {len(r.get('sampled') or [])}",
                     "refused": _who(_with_evaluation(r, "refused", "evaluation_refused")),
                     "dropped": _who(_with_evaluation(r, "dropped", "evaluation_failed")),
                     "rejected": _who(_with_evaluation(r, "rejected", "evaluation_rejected")),
                     "auc": num(g.get("auc"), 4, g.get("auc_sd")), "loss": num(r.get("train_loss"), 4),
                     "seconds": num(r.get("wall_s"), 1) if r.get("wall_s") is not None else "—"})
    final = metrics.get("final_evaluation") or {}
    if any(final.get(k) for k in ("evaluation_refused", "evaluation_rejected", "evaluation_failed")):
        rows.append({"round": "final evaluation", "trained": "—", "refused": _who(final.get("evaluation_refused") or {}),
                     "dropped": _who(final.get("evaluation_failed") or {}),
                     "rejected": _who(final.get("evaluation_rejected") or {}),
                     "auc": num((final.get("global") or {}).get("auc"), 4), "loss": "—", "seconds": "—"})
    return {"rows": rows, "statistics": metrics.get("statistics") or {}, "status": metrics.get("status"),
            "stop_reason": metrics.get("stop_reason"), "stop_detail": metrics.get("stop_detail", "")}


def section_participation(metrics: dict) -> str:
    """The participation section alone, as HTML."""
    return render("report/participation.html.j2", s=participation_section(metrics))


# ------------------------------------------------------------------------------ report
def render_report(run_dir: str | Path, card: dict | None = None) -> str:
    """The report of the run in ``run_dir`` as one HTML string (no external resources)."""
    run_dir = Path(run_dir).resolve()
    metrics = load_metrics(run_dir)
    card = card or build_model_card(run_dir)
    doc = card_document(card)
    scale = _score_scale(run_dir)
    with F.style():
        sections = {
            "summary": summary_section(card),
            "training": training_section(metrics),
            "discrimination": discrimination_section(metrics, scale),
            "calibration": calibration_section(metrics),
            "distribution": distribution_section(metrics, scale, card["model"].get("cutoff_pd"),
                                                 list(card["data"]["institutions"])),
            "comparison": comparison_section(card),
            "privacy": privacy_section(card, doc),
            "fairness": fairness_section(card, doc),
            "participation": participation_section(metrics),
            "model-card": {"sections": doc.report_sections()},
        }
    return render("report.html.j2", card=card, run=card["run"], sections=SECTIONS, section=sections,
                  generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def write_report(run_dir: str | Path, out: str | Path | None = None, write_card: bool = True) -> Path:
    """Write ``report.html`` (default ``RUN_DIR/report.html``) and, unless told not to, the model card files."""
    run_dir = Path(run_dir).resolve()
    card = build_model_card(run_dir)
    if write_card:
        write_card_files(run_dir, card)
    path = Path(out) if out else run_dir / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(run_dir, card), encoding="utf-8")
    return path
