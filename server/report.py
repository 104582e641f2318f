"""The run report: one self-contained ``report.html`` for the operator and the institutions.

:func:`write_report` reads a finished run directory (``metrics.json``, the model package's
``model.json``, the model card data of :mod:`server.model_card`) and writes one HTML file with
no external resources: CSS inline, every plot a base64-embedded PNG drawn with matplotlib
(Agg backend). Sections:

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
model-card          the model card (intended use, limits, model, data, audit)
==================  ==========================================================================

A section whose data the run does not have (no baselines after ``flwr run``, no DP, no
released evaluation …) says so instead of showing a plot.
"""

from __future__ import annotations

import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from fedcredit.figures import png_data_uri, pyplot
from server.model_card import _f, _g, _pct, build_model_card, load_metrics, overall_approval

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

NAVY, TEAL, ORANGE, GOLD, GREY, RED = "#1f3a5f", "#2a9d8f", "#e76f51", "#e9c46a", "#8d99ae", "#c0392b"
CALIBRATION_BANDS = 10
#: at most this many per-institution panels in the score-distribution figure (a consortium of
#: hundreds would make a figure hundreds of panels tall); the largest holdouts are shown
MAX_DISTRIBUTION_PANELS = 24

CSS = """
:root { --ink:#1d2733; --muted:#5b6676; --line:#dfe3ea; --bg:#f5f7fa; --accent:#1f3a5f; --warn:#fff4e5; --warnline:#f0a04b; }
* { box-sizing:border-box; }
body { margin:0; background:var(--bg); color:var(--ink); font:15px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
header { background:var(--accent); color:#fff; padding:28px 0 22px; }
header .wrap h1 { margin:0 0 4px; font-size:26px; font-weight:600; letter-spacing:.2px; }
header .meta { color:#cfd8e6; font-size:13.5px; }
header .meta code { color:#fff; background:rgba(255,255,255,.12); }
.wrap { max-width:1120px; margin:0 auto; padding:0 28px; }
nav { background:#fff; border-bottom:1px solid var(--line); position:sticky; top:0; z-index:2; }
nav .wrap { display:flex; flex-wrap:wrap; gap:4px 18px; padding-top:9px; padding-bottom:9px; font-size:13.5px; }
nav a { color:var(--accent); text-decoration:none; }
nav a:hover { text-decoration:underline; }
main { padding:22px 0 40px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:20px 26px 22px; margin:0 0 20px; }
h2 { margin:0 0 6px; font-size:20px; color:var(--accent); font-weight:600; }
h3 { margin:18px 0 6px; font-size:16px; font-weight:600; }
p.explain { color:var(--muted); margin:0 0 14px; max-width:900px; }
p.absent { background:var(--bg); border:1px dashed var(--line); border-radius:6px; padding:12px 14px; color:var(--muted); }
figure { margin:10px 0 14px; text-align:center; }
figure img { max-width:100%; height:auto; }
figcaption { color:var(--muted); font-size:13px; margin-top:4px; }
table { border-collapse:collapse; width:100%; margin:8px 0 12px; font-size:13.5px; }
th, td { border-bottom:1px solid var(--line); padding:6px 9px; text-align:right; vertical-align:top; }
th { background:#eef1f6; color:#2c3a4b; font-weight:600; }
th:first-child, td:first-child { text-align:left; }
td.text, th.text { text-align:left; }
tr:nth-child(even) td { background:#fafbfc; }
code { font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; background:#eef1f6; padding:1px 4px; border-radius:3px; white-space:nowrap; }
code.hash { white-space:normal; word-break:break-all; }
.tiles { display:grid; grid-template-columns:repeat(auto-fill,minmax(150px,1fr)); gap:12px; margin:10px 0 16px; }
.tile { border:1px solid var(--line); border-radius:8px; padding:10px 12px; background:#fbfcfd; }
.tile .v { font-size:22px; font-weight:600; color:var(--accent); }
.tile .k { font-size:12.5px; color:var(--muted); }
.warnings { background:var(--warn); border-left:4px solid var(--warnline); border-radius:4px; padding:10px 16px; margin:8px 0 14px; }
.warnings ul { margin:4px 0; padding-left:18px; }
.badge { display:inline-block; padding:1px 9px; border-radius:10px; font-size:12.5px; font-weight:600; }
.badge.ok { background:#d8f3ea; color:#17694f; }
.badge.stop { background:#fde2dc; color:#9b2c1a; }
.good { color:#17694f; } .bad { color:#b03a2e; }
ul.limits li { margin-bottom:4px; }
footer { color:var(--muted); font-size:12.5px; text-align:center; padding:0 0 30px; }
"""


# ------------------------------------------------------------------------------ helpers
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _png(fig) -> str:
    """The figure as a base64 PNG data URI (figure closed afterwards)."""
    return png_data_uri(fig)


def _figure(fig, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{_png(fig)}" alt="{_e(alt)}">{cap}</figure>'


def _absent(text: str) -> str:
    return f'<p class="absent">{_e(text)}</p>'


def _plt():
    return pyplot()


def _table(header: list[str], rows: list[list[Any]], text_cols: int | set[int] = 1) -> str:
    """An HTML table; cells are inserted as given (escape them first); ``text_cols`` are left-aligned."""
    left = set(range(text_cols)) if isinstance(text_cols, int) else set(text_cols)

    def cell(tag: str, i: int, v: Any) -> str:
        cls = ' class="text"' if i in left else ""
        return f"<{tag}{cls}>{v}</{tag}>"

    head = "".join(cell("th", i, _e(h)) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _style():
    return _plt().rc_context({
        "font.size": 9.5, "axes.titlesize": 10.5, "axes.titleweight": "bold", "axes.labelsize": 9.5,
        "axes.edgecolor": "#9aa5b5", "axes.linewidth": 0.8, "axes.grid": True, "grid.color": "#e6e9ef",
        "grid.linewidth": 0.7, "axes.spines.top": False, "axes.spines.right": False,
        "legend.frameon": False, "legend.fontsize": 8.5, "xtick.color": "#4a5568", "ytick.color": "#4a5568",
        "figure.facecolor": "white", "axes.axisbelow": True,
    })


def _score_scale(run_dir: Path):
    from models.scoring import ScoreScale

    mj = run_dir / "model" / "model.json"
    try:
        return ScoreScale(**json.loads(mj.read_text())["score_scale"])
    except Exception:
        return ScoreScale()


def _hist(h: Any) -> np.ndarray:
    return np.clip(np.asarray(h, dtype=float), 0, None)


def _fin(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ----------------------------------------------------------------------------- sections
def section_summary(card: dict, metrics: dict) -> str:
    g = card["metrics"].get("global") or {}
    m = card["metrics"]
    p = card["privacy"]
    eps = [r["epsilon_spent"] for r in p["institutions"].values() if r["epsilon_spent"] is not None]
    budgets = [r["epsilon_budget"] for r in p["institutions"].values() if r["epsilon_budget"] is not None]
    tiles = [("global AUC", _f(g.get("auc"), 3, g.get("auc_sd"))), ("KS", _f(g.get("ks"), 3, g.get("ks_sd"))),
             ("Gini", _f(g.get("gini"), 3, g.get("gini_sd"))),
             ("centralised AUC", _f(m.get("centralised_pooled_auc"), 3)),
             ("local-only AUC (mean)", _f(m.get("local_only_mean_auc"), 3)),
             ("max ε spent / budget", (f"{max(eps):.2f} / {max(budgets):g}" if eps and budgets else
                                       ("no DP" if not p["dp"] else "—"))),
             ("institutions", str(len(p["institutions"]))),
             ("rounds", f"{card['run']['rounds_completed']} / {card['run']['rounds_planned']}")]
    out = ['<div class="tiles">'] + [f'<div class="tile"><div class="v">{_e(v)}</div><div class="k">{_e(k)}</div></div>'
                                     for k, v in tiles] + ["</div>"]
    if card.get("warnings"):
        out.append('<div class="warnings"><strong>Warnings</strong><ul>' +
                   "".join(f"<li>{_e(w)}</li>" for w in card["warnings"]) + "</ul></div>")
    rows = []
    for inst, d in card["data"]["institutions"].items():
        mi = m["institutions"].get(inst, {})
        pr = p["institutions"].get(inst, {})
        fed, loc = mi.get("federated", {}).get("auc"), mi.get("local_only_auc")
        g = mi.get("gain_from_joining")
        if g is None and fed is not None and loc is not None:
            g = fed - loc
        gain = f'<span class="{"good" if g >= 0 else "bad"}">{g:+.3f}</span>' if g is not None else "—"
        rows.append([_e(inst), _f(d["rows_train"]), _e(_pct(d["default_rate"])), _f(loc, 3), _f(fed, 3), gain,
                     _f(mi.get("centralised_auc"), 3),
                     (f"{pr['epsilon_spent']:.3f} / {pr['epsilon_budget']:g}" if pr.get("epsilon_spent") is not None
                      and pr.get("epsilon_budget") is not None else ("no DP" if not p["dp"] else "—"))])
    out.append(_table(["institution", "training rows", "default rate", "AUC local-only", "AUC federated",
                       "gain", "AUC centralised", "ε spent / budget"], rows))
    out.append('<p class="explain">AUC of each column on the institution\'s own holdout. '
               "<em>Gain</em> is the better of the federated and the institution's personalised model (when "
               "the run made one) minus local-only: what joining the consortium bought the institution. "
               "The centralised model (all data pooled, no privacy) is the upper reference a federation "
               "aims at.</p>")
    return "".join(out)


def section_training(metrics: dict) -> str:
    hist = [r for r in metrics.get("history") or [] if "model_sha256_after" in r]
    if not hist:
        return _absent("No training round completed in this run.")
    plt = _plt()
    rounds = [r["round"] for r in hist]
    auc = [(r.get("global") or {}).get("auc") for r in hist]
    ks = [(r.get("global") or {}).get("ks") for r in hist]
    loss = [r.get("train_loss") for r in hist]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.6, 3.3))
    if any(_fin(v) for v in auc):
        a1.plot(rounds, [v if _fin(v) else np.nan for v in auc], "o-", color=NAVY, lw=1.8, ms=4, label="AUC")
        a1.plot(rounds, [v if _fin(v) else np.nan for v in ks], "s-", color=TEAL, lw=1.8, ms=4, label="KS")
        a1.legend(loc="lower right")
    else:
        a1.text(0.5, 0.5, "no global evaluation released", ha="center", va="center", transform=a1.transAxes,
                color=GREY)
    a1.set(title="Global model on the pooled holdouts", xlabel="round", ylabel="metric")
    if any(_fin(v) for v in loss):
        a2.plot(rounds, [v if _fin(v) else np.nan for v in loss], "o-", color=ORANGE, lw=1.8, ms=4)
    else:
        a2.text(0.5, 0.5, "not released: nodes training with DP-SGD\ndo not send their training loss",
                ha="center", va="center", transform=a2.transAxes, color=GREY)
    a2.set(title="Training loss (example-weighted mean over nodes)", xlabel="round", ylabel="binary cross-entropy")
    for a in (a1, a2):
        a.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return ('<p class="explain">How the global model improved round by round. The loss is the nodes\' local '
            "training loss, in runs without DP only: under DP-SGD it is an exact function of the private "
            "batches, so nodes do not send it.</p>"
            + _figure(fig, "training curves: AUC and KS per round, training loss per round"))


def section_discrimination(metrics: dict, scale) -> str:
    fh = metrics.get("final_histograms")
    if not fh:
        return _absent("No pooled score histograms were released in this run (evaluation off), so no ROC or KS.")
    from models.metrics import auc_from_histograms, ks_from_histograms, roc_from_histograms, score_bin_centres

    plt = _plt()
    neg, pos = _hist(fh["hist_neg"]), _hist(fh["hist_pos"])
    if neg.sum() <= 0 or pos.sum() <= 0:
        return _absent("The pooled holdouts hold only one class, so ROC and KS are undefined.")
    fpr, tpr = roc_from_histograms(neg, pos)
    auc, ks = auc_from_histograms(neg, pos), ks_from_histograms(neg, pos)
    points = scale.points(score_bin_centres(len(neg)))  # descending with bin index
    # CDFs in increasing score (= decreasing PD)
    pts = points[::-1]
    cn, cp = np.cumsum(neg[::-1]) / neg.sum(), np.cumsum(pos[::-1]) / pos.sum()
    mass = np.nonzero((neg + pos)[::-1] > 0)[0]
    lo, hi = pts[max(mass[0] - 2, 0)], pts[min(mass[-1] + 2, len(pts) - 1)]
    k = int(np.argmax(np.abs(cn - cp)))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.6, 3.7))
    a1.plot(fpr, tpr, color=NAVY, lw=2, label=f"federated model (AUC {auc:.3f})")
    a1.plot([0, 1], [0, 1], "--", color=GREY, lw=1, label="random (AUC 0.5)")
    a1.set(title="ROC curve", xlabel="false-positive rate (good borrowers declined)",
           ylabel="true-positive rate (defaulters declined)", xlim=(0, 1), ylim=(0, 1.01))
    a1.set_aspect("equal")
    a1.legend(loc="lower right")
    a2.plot(pts, cp, color=ORANGE, lw=2, label="defaulters")
    a2.plot(pts, cn, color=TEAL, lw=2, label="non-defaulters")
    a2.vlines(pts[k], min(cn[k], cp[k]), max(cn[k], cp[k]), color=NAVY, lw=2, label=f"KS = {ks:.3f}")
    a2.set(title="KS: cumulative share below each score", xlabel="score (points)", ylabel="cumulative share",
           xlim=(lo, hi), ylim=(0, 1.01))
    a2.legend(loc="lower right")
    fig.tight_layout()
    return ('<p class="explain">How well the global model separates defaulters from non-defaulters on the '
            "pooled holdouts of all institutions. Both plots are computed exactly (to the 0.002-logit bin "
            "resolution) from the class-conditional score histograms the institutions release — no scores "
            "leave a node. KS is the largest gap between the two cumulative score distributions.</p>"
            + _figure(fig, "ROC curve and KS plot of the global model",
                      f"{int(pos.sum()):,} defaulters and {int(neg.sum()):,} non-defaulters in the pooled holdouts."))


def calibration_bands(hist_neg: Any, hist_pos: Any, bands: int = CALIBRATION_BANDS) -> list[dict]:
    """Score bands of about equal population (by PD), each with n, mean PD, observed default rate.

    Bins (in increasing PD) are assigned to band ``floor(bands · rows before the bin / total)``;
    the PD of a bin is its centre (:func:`models.metrics.score_bin_centres`).
    """
    from models.metrics import score_bin_centres

    neg, pos = _hist(hist_neg), _hist(hist_pos)
    n = neg + pos
    total = n.sum()
    if total <= 0:
        return []
    centres = score_bin_centres(len(n))
    before = np.concatenate([[0.0], np.cumsum(n)[:-1]])
    band = np.minimum((bands * before / total).astype(int), bands - 1)
    out = []
    for b in range(bands):
        sel = (band == b) & (n > 0)
        nb = n[sel].sum()
        if nb <= 0:
            continue
        out.append({"band": len(out) + 1, "n": float(nb), "pd_low": float(centres[sel].min()),
                    "pd_high": float(centres[sel].max()),
                    "mean_pd": float((n[sel] * centres[sel]).sum() / nb),
                    "observed": float(pos[sel].sum() / nb)})
    return out


def section_calibration(metrics: dict) -> str:
    fh = metrics.get("final_histograms")
    if not fh:
        return _absent("No pooled score histograms were released in this run, so calibration cannot be shown.")
    bands = calibration_bands(fh["hist_neg"], fh["hist_pos"])
    if not bands:
        return _absent("The pooled score histograms are empty.")
    plt = _plt()
    x = np.array([b["mean_pd"] for b in bands])
    y = np.array([b["observed"] for b in bands])
    n = np.array([b["n"] for b in bands])
    positive = np.concatenate([x[x > 0], y[y > 0]])
    log = positive.size > 0 and positive.max() / positive.min() > 20  # PDs spanning decades: log-log
    fig, ax = plt.subplots(figsize=(6.2, 4.3))
    if log:
        lo, hi = positive.min() / 1.5, min(1.0, positive.max() * 1.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:
        lo, hi = 0.0, max(x.max(), y.max()) * 1.12
    ax.plot([lo, hi], [lo, hi], "--", color=GREY, lw=1, label="perfect calibration")
    ax.plot(x, np.where(y > 0, y, np.nan) if log else y, "-", color=NAVY, lw=1, alpha=0.5)
    ax.scatter(x, np.where(y > 0, y, np.nan) if log else y, s=18 + 50 * n / n.max(), color=NAVY, zorder=3,
               label="score band (size ∝ rows)")
    ax.set(title="Mean PD vs observed default rate per score band", xlabel="mean predicted PD"
           + (" (log scale)" if log else ""), ylabel="observed default rate" + (" (log scale)" if log else ""),
           xlim=(lo, hi), ylim=(lo, hi))
    pct = plt.FuncFormatter(lambda v, _: f"{100 * v:.3g}%")
    ax.xaxis.set_major_formatter(pct)
    ax.yaxis.set_major_formatter(pct)
    ax.legend(loc="best")
    fig.tight_layout()
    g = metrics.get("final") or {}
    rows = [[str(b["band"]), f"{100 * b['pd_low']:.2f} – {100 * b['pd_high']:.2f} %", f"{int(round(b['n'])):,}",
             _pct(b["mean_pd"]), _pct(b["observed"])] for b in bands]
    head = ""
    if _fin(g.get("mean_pd")) and _fin(g.get("default_rate")):
        head = (f"<p>Overall: mean PD <strong>{_pct(g['mean_pd'], g.get('mean_pd_sd'))}</strong> against an observed "
                f"default rate of <strong>{_pct(g['default_rate'], g.get('default_rate_sd'))}</strong> (Brier score "
                f"{_f(g.get('brier'), 4, g.get('brier_sd'))}).</p>")
    return ('<p class="explain">Are the PDs probabilities? The pooled holdouts are cut into bands of about equal '
            "size by PD; a calibrated model puts every band on the diagonal. Points below the diagonal: the model "
            "over-states risk; above: it under-states it. A model can rank well (high AUC) and still need "
            "recalibration.</p>" + head
            + _figure(fig, "calibration plot: mean PD against observed default rate per score band")
            + _table(["band", "PD range", "rows", "mean PD", "observed default rate"], rows))


def section_distribution(metrics: dict, scale, cutoff_pd: float | None, order: list[str] | None = None) -> str:
    ih = metrics.get("final_institution_histograms") or {}
    if not ih:
        return _absent("No per-institution score histograms in this run (evaluation off or released too coarsely).")
    from models.metrics import score_bin_centres

    plt = _plt()
    names = [i for i in (order or []) if i in ih] + [i for i in ih if i not in (order or [])]
    shown_note = ""
    if len(names) > MAX_DISTRIBUTION_PANELS:
        size = {i: float(np.sum(ih[i]["hist_neg"]) + np.sum(ih[i]["hist_pos"])) for i in names}
        keep = set(sorted(names, key=lambda i: -size[i])[:MAX_DISTRIBUTION_PANELS])
        shown_note = (f" The {MAX_DISTRIBUTION_PANELS} institutions with the largest holdouts are shown, of "
                      f"{len(names)}; every institution's histogram is in metrics.json "
                      "(final_institution_histograms).")
        names = [i for i in names if i in keep]
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.6 * rows), squeeze=False)
    all_mass = []
    for inst in names:
        h = ih[inst]
        pts = scale.points(score_bin_centres(int(h.get("bins", len(h["hist_neg"])))))
        m = _hist(h["hist_neg"]) + _hist(h["hist_pos"])
        all_mass += list(pts[m > 0])
    lo, hi = (min(all_mass) - 10, max(all_mass) + 10) if all_mass else (None, None)
    cut = scale.points(np.array([cutoff_pd]))[0] if cutoff_pd else None
    for i, ax in enumerate(axes.flat):
        if i >= len(names):
            ax.axis("off")
            continue
        inst = names[i]
        h = ih[inst]
        pts = scale.points(score_bin_centres(int(h.get("bins", len(h["hist_neg"])))))
        order = np.argsort(pts)
        width = float(np.abs(np.diff(pts[order])).mean()) if len(pts) > 1 else 1.0
        neg, pos = _hist(h["hist_neg"])[order], _hist(h["hist_pos"])[order]
        tot = max(neg.sum() + pos.sum(), 1.0)
        ax.bar(pts[order], neg / tot, width=width, color=TEAL, alpha=0.85, label="non-defaulters")
        ax.bar(pts[order], pos / tot, width=width, bottom=neg / tot, color=ORANGE, alpha=0.9, label="defaulters")
        if cut is not None:
            ax.axvline(cut, color=NAVY, lw=1.2, ls="--", label="cut-off")
        ax.set_title(f"{inst} (n={int(tot):,})", fontsize=9.5)
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
        if lo is not None:
            ax.set_xlim(lo, hi)
        ax.tick_params(labelsize=8)
        if i % cols == 0:
            ax.set_ylabel("share of holdout", fontsize=8.5)
        if i + cols >= len(names):  # nothing below it: the bottom of its column
            ax.set_xlabel("score (points)", fontsize=8.5)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    cut_txt = (f" The dashed line is the cut-off score {cut:.0f} (PD {cutoff_pd:g}); applicants left of it are "
               "declined." if cut is not None else "")
    return ('<p class="explain">Each institution\'s holdout by score (higher score = lower PD), stacked by '
            f"outcome. Portfolios differ: the same model places each institution's borrowers differently.{cut_txt}"
            f"{shown_note}"
            "</p>" + _figure(fig, "score distribution per institution"))


def section_comparison(card: dict) -> str:
    m = card["metrics"]
    inst = list(m["institutions"])
    fed = [m["institutions"][i]["federated"].get("auc") for i in inst]
    if not any(v is not None for v in fed):
        return _absent("No per-institution evaluation was released, so no comparison is possible.")
    plt = _plt()
    loc = [m["institutions"][i]["local_only_auc"] for i in inst]
    cen = [m["institutions"][i]["centralised_auc"] for i in inst]
    has_base = m["baselines_available"] and any(v is not None for v in loc)
    series = ([("local-only", loc, GOLD)] if has_base else []) + [("federated", fed, NAVY)] + \
        ([("centralised (pooled, non-private)", cen, GREY)] if has_base and any(v is not None for v in cen) else [])
    x = np.arange(len(inst))
    w = 0.8 / len(series) if len(series) > 1 else 0.45
    fig, ax = plt.subplots(figsize=(max(6.5, 1.5 * len(inst) + 2), 3.6))
    vals = [v for _, s, _ in series for v in s if v is not None]
    floor = max(0.0, min(vals) - 0.08)
    for j, (label, s, color) in enumerate(series):
        xs = x + (j - (len(series) - 1) / 2) * w
        ax.bar(xs, [v if v is not None else np.nan for v in s], w * 0.95, label=label, color=color)
        for xi, v in zip(xs, s):
            if v is None:
                ax.text(xi, floor + 0.005, "n/a", ha="center", va="bottom", fontsize=7.5, color=GREY, rotation=90)
    ax.set_xticks(x, [i.replace("-", "-\n", 1) if len(i) > 14 else i for i in inst], fontsize=8.5)
    ax.set_ylim(floor, min(1.0, max(vals) + 0.03))
    ax.set_ylabel("AUC on the institution's holdout")
    ax.set_title("AUC per institution", pad=24)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series))
    fig.tight_layout()
    note = "" if has_base else _absent(
        "This run has no local-only or centralised baselines (they are trained by `fedcredit simulate`; a "
        "`flwr run` or deployed run has only the federated figures).")
    g = m.get("global") or {}
    pooled = ""
    if has_base:
        pooled = _table(["model", "AUC on the pooled holdouts"], [
            ["federated", _f(g.get("auc"), 4, g.get("auc_sd"))], ["centralised (all data pooled, no DP)", _f(m["centralised_pooled_auc"], 4)],
            [f"local-only, mean over institutions{' (DP)' if m.get('local_only_dp') else ''}",
             _f(m["local_only_mean_auc"], 4)]])
    return ('<p class="explain">Does federation pay off for each institution? <em>Local-only</em>: the same network '
            "trained by the institution alone (with DP at the same budget when the run is private). "
            "<em>Centralised</em>: trained on all institutions' data pooled, without privacy — the reference a "
            "federation cannot beat. All three are scored on the same holdout of each institution.</p>"
            + note + _figure(fig, "federated vs local-only vs centralised AUC per institution",
                             "n/a: the institution released no evaluation for that model.") + pooled
            + member_gain_figure(m))


def member_gain_figure(m: dict) -> str:
    """Per-member gain chart: chosen model (max of global and personalised) − local-only AUC."""
    rows = {i: r for i, r in m["institutions"].items() if r.get("gain_from_joining") is not None}
    if not rows:
        return ""
    plt = _plt()
    tol = m.get("gain_tolerance") or 0.005
    gains = [r["gain_from_joining"] for r in rows.values()]
    fig, ax = plt.subplots(figsize=(max(6.5, 1.2 * len(rows) + 2), 3.2))
    ax.bar(range(len(rows)), gains, 0.6, color=[TEAL if v >= -tol else RED for v in gains])
    ax.axhline(0, color=GREY, lw=1)
    ax.axhspan(-tol, tol, color=GREY, alpha=0.15, lw=0)
    for x, (inst, r) in enumerate(rows.items()):
        ax.text(x, r["gain_from_joining"], f"{r['gain_from_joining']:+.3f}\n{r.get('chosen_model') or ''}",
                ha="center", va="bottom" if r["gain_from_joining"] >= 0 else "top", fontsize=7.5)
    ax.set_xticks(range(len(rows)), list(rows), fontsize=8.5)
    ax.set_ylabel("AUC gain over local-only")
    ax.set_title("Gain from joining, per member")
    fig.tight_layout()
    worse = m.get("members_worse_than_local_only")
    rows_html = [[_e(i), _f(r["local_only_auc"], 3), _f(r["federated"].get("auc"), 3), _f(r.get("personalized_auc"), 3),
                  _e(r.get("chosen_model") or "—"), _f(r["gain_from_joining"], 3)] for i, r in rows.items()]
    return ("<h3>Gain from joining, per member</h3>"
            '<p class="explain">Each member uses the better, on its own holdout, of the shared model and its '
            "personalised model (kept at its node, fine-tuned there with DP on its budget); the gain is that "
            "AUC minus its local-only AUC. Grey band: ± the tolerance "
            f"({tol:g}); members below it are worse off than alone: <strong>{_e(worse)}</strong>.</p>"
            + _figure(fig, "AUC gain from joining per member")
            + _table(["institution", "AUC local-only", "AUC global", "AUC personalised", "chosen", "gain"], rows_html))


def section_privacy(card: dict) -> str:
    from server.model_card import privacy_state_text

    p = card["privacy"]
    if not p["dp"]:
        return _absent("This run trained without differential privacy (research setting): no ε was spent and "
                       "the model carries no privacy guarantee for its training borrowers.")
    rows = p["institutions"]
    inst = [i for i, r in rows.items() if r["epsilon_spent"] is not None]
    if not inst:
        return _absent("No institution reported its privacy spend in this run.")
    plt = _plt()
    spent = np.array([rows[i]["epsilon_spent"] for i in inst])
    budget = np.array([rows[i]["epsilon_budget"] if rows[i]["epsilon_budget"] is not None else np.nan for i in inst])
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(7.8, 0.42 * len(inst) + 1.4))
    y = np.arange(len(inst))[::-1]
    ax.barh(y, np.nan_to_num(budget), height=0.62, color="#eef1f6", edgecolor=GREY, linewidth=0.8)
    near = [bool(np.isfinite(b) and s >= 0.95 * b) for s, b in zip(spent, budget)]
    ax.barh(y, spent, height=0.34, color=[ORANGE if n else TEAL for n in near])
    top = float(np.nanmax(np.concatenate([spent, budget])))
    for yi, s, b in zip(y, spent, budget):
        ax.text(max(s, np.nan_to_num(b)) + 0.015 * top, yi, f"{s:.3f}" + (f" / {b:g}" if np.isfinite(b) else ""),
                va="center", fontsize=8.5)
    ax.set_yticks(y, inst, fontsize=8.5)
    ax.set_xlim(0, top * 1.2)
    ax.set_xlabel("ε (at each institution's δ)")
    ax.set_title("Privacy spend per institution", pad=24)
    ax.grid(axis="y", visible=False)
    ax.legend(handles=[Patch(facecolor="#eef1f6", edgecolor=GREY, label="budget (lifetime max ε)"),
                       Patch(color=TEAL, label="ε spent"), Patch(color=ORANGE, label="ε spent, ≥ 95 % of budget")],
              loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8)
    fig.tight_layout()
    table = _table(["institution", "ε spent", "ε budget", "δ", "accountant", "σ", "sample rate", "ε from node state"],
                   [[_e(i), _f(r["epsilon_spent"]), _g(r["epsilon_budget"]), _g(r["delta"]), _e(r["accountant"] or "—"),
                     _f(r["noise_multiplier"], 3), _f(r["sample_rate"], 4), _e(privacy_state_text(r))]
                    for i, r in rows.items()])
    return (f'<p class="explain">Each institution protects every one of its borrower records with (ε, δ)-differential '
            f"privacy: DP-SGD with clipping norm {_f(p['clipping_norm'], 2)} and noise σ planned from its own "
            "budget; its feature statistics are noised and accounted the same way. ε is the lifetime spend on the "
            "institution's dataset (all releases of all runs), as the node computed it; the last column recomputes "
            "it from the node's stored privacy ledger where that is reachable (simulation). Orange: within 5 % of "
            "the budget — the node will refuse further rounds.</p>"
            + _figure(fig, "epsilon spent versus budget per institution") + table)


def section_fairness(card: dict) -> str:
    fa = card.get("fairness")
    if not fa or not fa.get("attributes"):
        return _absent("No fairness counts were released in this run (evaluation off, or the schema declares no "
                       "protected attributes).")
    plt = _plt()
    out = [f'<p class="explain">Decisions at the cut-off PD {_e(_g(fa["cutoff_pd"]))} (approve below it), per group '
           "of each protected attribute, from counts the institutions release per group. "
           "<em>Demographic-parity difference</em>: largest gap in approval rates between groups. "
           "<em>Equal-opportunity difference</em>: largest gap in approval rates among borrowers who did not "
           "default (1 − FPR). TPR: share of defaulters declined; FPR: share of good borrowers declined. "
           "Protected attributes are never model inputs.</p>"]
    appr, appr_sd = overall_approval(fa["attributes"])
    if appr is not None:
        out.append(f"<p>Overall approval rate on the pooled holdouts: <strong>{_pct(appr, appr_sd)}</strong>.</p>")
    for attr, a in fa["attributes"].items():
        groups = a["groups"]
        labels = [g["group"] for g in groups]
        x = np.arange(len(groups))
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.6, 3.1))
        ar = [g["approval_rate"] if g["approval_rate"] is not None else np.nan for g in groups]
        a1.bar(x, ar, 0.5 if len(groups) < 4 else 0.6, color=NAVY)
        for xi, v, g in zip(x, ar, groups):
            if np.isfinite(v):
                a1.text(xi, v + 0.01, f"{100 * v:.1f}%", ha="center", va="bottom", fontsize=8)
        a1.set_xticks(x, labels, fontsize=8.5)
        a1.set(ylim=(0, 1.12), title=f"Approval rate by {attr}", ylabel="approved")
        a1.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
        tpr = [g["tpr"] if g["tpr"] is not None else np.nan for g in groups]
        fpr = [g["fpr"] if g["fpr"] is not None else np.nan for g in groups]
        a2.bar(x - 0.18, tpr, 0.36, color=ORANGE, label="TPR (defaulters declined)")
        a2.bar(x + 0.18, fpr, 0.36, color=TEAL, label="FPR (good borrowers declined)")
        a2.set_xticks(x, labels, fontsize=8.5)
        top = np.nanmax([*tpr, *fpr, 0.05])
        a2.set(ylim=(0, min(1.0, top * 1.3 + 0.02)), title=f"Error rates by {attr}", ylabel="rate")
        a2.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
        a2.legend(loc="upper right", fontsize=7.5)
        fig.tight_layout()
        out.append(f"<h3>{_e(attr)}</h3>")
        out.append(f"<p>Demographic-parity difference <strong>{_f(a.get('demographic_parity_difference'), 3, a.get('demographic_parity_difference_sd'))}</strong>; "
                   f"equal-opportunity difference <strong>{_f(a.get('equal_opportunity_difference'), 3, a.get('equal_opportunity_difference_sd'))}</strong>.</p>")
        out.append(_figure(fig, f"fairness by {attr}: approval rate, TPR and FPR per group"))
        out.append(_table(["group", "rows", "defaults", "approval rate", "TPR", "FPR"],
                          [[_e(g["group"]), f"{int(g['n']):,}", f"{int(g['defaults']):,}",
                            _pct(g["approval_rate"], g.get("approval_rate_sd")), _pct(g["tpr"], g.get("tpr_sd")),
                            _pct(g["fpr"], g.get("fpr_sd"))] for g in groups]))
    return "".join(out)


def section_participation(metrics: dict) -> str:
    hist = metrics.get("history") or []
    if not hist:
        return _absent("No rounds were recorded.")

    def names(d: dict) -> str:
        if not d:
            return "—"
        parts = []
        for who, why in d.items():
            reason = why.get("reason") if isinstance(why, dict) else why
            parts.append(f"{_e(who)} <span style='color:#5b6676'>({_e(str(reason)[:80])})</span>")
        return "<br>".join(parts)

    def with_evaluation(r: dict, key: str, evaluation_key: str) -> dict:
        """A round's training refusals/dropouts/rejections and its evaluation's, marked as such."""
        marked = {f"{who} (evaluation)": why for who, why in (r.get(evaluation_key) or {}).items()}
        return {**(r.get(key) or {}), **marked}

    rows = []
    for r in hist:
        g = r.get("global") or {}
        rows.append([str(r.get("round")), f"{len(r.get('participants') or [])} / {len(r.get('sampled') or [])}",
                     names(with_evaluation(r, "refused", "evaluation_refused")),
                     names(with_evaluation(r, "dropped", "evaluation_failed")),
                     names(with_evaluation(r, "rejected", "evaluation_rejected")),
                     _f(g.get("auc"), 4, g.get("auc_sd")), _f(r.get("train_loss"), 4),
                     _f(r.get("wall_s"), 1) if r.get("wall_s") is not None else "—"])
    final = metrics.get("final_evaluation") or {}
    if any(final.get(k) for k in ("evaluation_refused", "evaluation_rejected", "evaluation_failed")):
        rows.append(["final evaluation", "—", names(final.get("evaluation_refused") or {}),
                     names(final.get("evaluation_failed") or {}), names(final.get("evaluation_rejected") or {}),
                     _f((final.get("global") or {}).get("auc"), 4), "—", "—"])
    st = metrics.get("statistics") or {}
    stats_line = (f"<p>Federated feature statistics: {len(st.get('contributors') or [])} contributor(s)"
                  + (f"; refused: {_e(', '.join(st['refused']))}" if st.get("refused") else "")
                  + (f"; failed: {_e(', '.join(st['dropped']))}" if st.get("dropped") else "")
                  + (f"; rejected: {_e(', '.join(st['rejected']))}" if st.get("rejected") else "") + ".</p>") if st else ""
    status = metrics.get("status")
    stop = ""
    if metrics.get("stop_reason"):
        stop = (f"<p><strong>The run stopped</strong>: {_e(metrics['stop_reason'])} — "
                f"{_e(metrics.get('stop_detail', ''))}</p>")
    return ('<p class="explain">Who took part in each round. A node <em>refuses</em> when the round would exceed '
            "its privacy budget or breaks its policy; it <em>drops out</em> on an error or time-out; an update is "
            "<em>rejected</em> when it fails the server's checks (shape, dtype, finite values, norm bound); "
            "\"(evaluation)\" marks a node that refused to evaluate or whose evaluation failed the checks.</p>"
            + stats_line + stop
            + _table(["round", "trained / sampled", "refused", "dropped", "rejected", "global AUC", "loss", "seconds"],
                     rows, text_cols={0, 2, 3, 4})
            + f"<p>Run status: <strong>{_e(status)}</strong>.</p>")


def section_model_card(card: dict) -> str:
    run, model, sch, t = card["run"], card["model"], card["schema"], card["training"]
    iu = card["intended_use"]
    out = ['<p class="explain">The model card (also written as <code>model_card.md</code> and '
           "<code>model_card.json</code> in the run directory). Privacy, performance and fairness figures of the "
           "card are the ones shown in the sections above.</p>"]
    out.append("<h3>Intended use</h3>")
    out.append(f"<p>{_e(iu['purpose'])}</p><p><strong>Users:</strong> {_e(iu['users'])}</p>")
    out.append("<p><strong>Limits and caveats</strong></p><ul class='limits'>"
               + "".join(f"<li>{_e(x)}</li>" for x in iu["limitations"]) + "</ul>")
    out.append("<h3>Model</h3>")
    scale = model.get("score_scale") or {}
    out.append(_table(["field", "value"], [
        ["architecture", _e(f"{model['architecture']}" + (f", hidden layers {model['hidden_layers']}"
                                                         if model.get("hidden_layers") else ""))],
        ["inputs", _e(f"{model.get('n_inputs') or '—'} encoded columns of the schema's model features")],
        ["output", _e(model["output"])],
        ["schema", _e(f"{sch['key']} — {sch.get('description', '')}")],
        ["schema fingerprint", f"<code class='hash'>{_e(sch.get('fingerprint') or '—')}</code>"],
        ["weights sha256", f"<code class='hash'>{_e(model.get('weights_sha256') or '—')}</code>"],
        ["score scale", _e(f"{scale.get('base_score', 600):g} points at odds {scale.get('base_odds', 50):g}:1, "
                           f"+{scale.get('pdo', 20):g} points per doubling of the odds") if scale else "—"],
        ["cut-off PD", _e(_g(model.get("cutoff_pd")))],
        ["training", _e(f"{t['strategy']} ({t['aggregation']}), {t['rounds']} rounds × {t['local_epochs']} local "
                        f"epoch(s), batch {t['batch_size']}, {t['optimizer']} lr {t['learning_rate']}, seed "
                        f"{t['seed']}, DP {'on' if t['dp'] else 'OFF'}")],
        ["run", _e(f"{run['run_id']} ({run['mode']}), status {run['status']}"
                   + (f", stopped: {run['stop_reason']}" if run.get("stop_reason") else ""))],
    ], text_cols=2))
    out.append("<h3>Training data</h3>")
    out.append(f"<p>Source: {_e(card['data']['source'])}. The default rate is shown only where the institution "
               "releases it exactly (simulation, or <code>release-eval = exact</code>).</p>")
    out.append(_table(["institution", "training rows", "holdout rows", "default rate", "evaluation release"], [
        [_e(i), _f(d["rows_train"]), _f(d.get("rows_holdout")), _e(_pct(d["default_rate"])), _e(d["evaluation_release"])]
        for i, d in card["data"]["institutions"].items()]))
    out.append("<h3>Audit ledger</h3>")
    led = card.get("ledger")
    if led:
        out.append(f"<p>Head hash of the signed ledger: <code class='hash'>{_e(led['head'])}</code>"
                   f" ({_e(led.get('entries') or '?')} entries, operator key id <code>{_e(led.get('key_id') or '—')}</code>)."
                   " Every node keeps the heads it was shown; <code>fedcredit ledger verify</code> checks the chain.</p>")
    else:
        out.append(_absent("This run has no audit ledger head in metrics.json."))
    return "".join(out)


# ------------------------------------------------------------------------------ report
def render_report(run_dir: str | Path, card: dict | None = None) -> str:
    """The report of the run in ``run_dir`` as one HTML string (no external resources)."""
    run_dir = Path(run_dir).resolve()
    metrics = load_metrics(run_dir)
    card = card or build_model_card(run_dir)
    scale = _score_scale(run_dir)
    cutoff = card["model"].get("cutoff_pd")
    with _style():
        bodies = {
            "summary": section_summary(card, metrics),
            "training": section_training(metrics),
            "discrimination": section_discrimination(metrics, scale),
            "calibration": section_calibration(metrics),
            "distribution": section_distribution(metrics, scale, cutoff, list(card["data"]["institutions"])),
            "comparison": section_comparison(card),
            "privacy": section_privacy(card),
            "fairness": section_fairness(card),
            "participation": section_participation(metrics),
            "model-card": section_model_card(card),
        }
    run = card["run"]
    badge = ('<span class="badge ok">completed</span>' if run["status"] == "completed"
             else f'<span class="badge stop">{_e(run["status"])}: {_e(run["stop_reason"])}</span>')
    dp = card["privacy"]["dp"]
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in SECTIONS)
    sections = "".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{bodies[sid]}</section>' for sid, title in SECTIONS)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fedcredit report — run {_e(run['run_id'])}</title>
<style>{CSS}</style></head>
<body>
<header><div class="wrap"><h1>Federated credit-scoring run report</h1>
<div class="meta">run <code>{_e(run['run_id'])}</code> · {_e(run['mode'])} · schema <code>{_e(card['schema']['key'])}</code> ·
{_e(card['training']['strategy'])}, {run['rounds_completed']} of {run['rounds_planned']} rounds ·
{'differentially private' if dp else 'NOT differentially private'} · {badge}<br>
<code class="hash">{_e(run['run_dir'])}</code> · generated {generated}</div></div></header>
<nav><div class="wrap">{nav}</div></nav>
<main><div class="wrap">{sections}</div></main>
<footer>fedcredit · report of run {_e(run['run_id'])} · all figures from metrics.json, the model package and the nodes' privacy state</footer>
</body></html>
"""


def write_report(run_dir: str | Path, out: str | Path | None = None, write_card: bool = True) -> Path:
    """Write ``report.html`` (default ``RUN_DIR/report.html``) and, unless told not to, the model card files."""
    from server.model_card import render_markdown

    run_dir = Path(run_dir).resolve()
    card = build_model_card(run_dir)
    if write_card:
        (run_dir / "model_card.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
        (run_dir / "model_card.md").write_text(render_markdown(card) + "\n")
    path = Path(out) if out else run_dir / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(run_dir, card), encoding="utf-8")
    return path
