"""The run report's figures: matplotlib (Agg) drawings, each returned as a :class:`Figure` whose
``src`` is a base64 PNG data URI (:func:`fedcredit.figures.png_data_uri`), so the report needs no
file beside it.

Every function takes figures the report has already read from the run (histograms, rows of the
card) and draws one figure; call them inside :func:`style` so that all share one look. Scores
are in points of the model's :class:`models.scoring.ScoreScale`; PDs and rates are fractions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcredit.figures import png_data_uri, pyplot

NAVY, TEAL, ORANGE, GOLD, GREY, RED = "#1f3a5f", "#2a9d8f", "#e76f51", "#e9c46a", "#8d99ae", "#c0392b"

STYLE = {
    "font.size": 9.5, "axes.titlesize": 10.5, "axes.titleweight": "bold", "axes.labelsize": 9.5,
    "axes.edgecolor": "#9aa5b5", "axes.linewidth": 0.8, "axes.grid": True, "grid.color": "#e6e9ef",
    "grid.linewidth": 0.7, "axes.spines.top": False, "axes.spines.right": False,
    "legend.frameon": False, "legend.fontsize": 8.5, "xtick.color": "#4a5568", "ytick.color": "#4a5568",
    "figure.facecolor": "white", "axes.axisbelow": True,
}


@dataclass(frozen=True)
class Figure:
    """One embedded figure: ``src`` a ``data:image/png;base64,…`` URI, ``alt`` its text alternative."""

    src: str
    alt: str
    caption: str = ""


def style():
    """The report's matplotlib style, as a context manager."""
    return pyplot().rc_context(STYLE)


def _figure(fig, alt: str, caption: str = "") -> Figure:
    return Figure(png_data_uri(fig), alt, caption)


def hist(h: Any) -> np.ndarray:
    """A released histogram as non-negative floats (noised counts may dip below zero)."""
    return np.clip(np.asarray(h, dtype=float), 0, None)


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _percent_axis(plt, axis, precision: str = ".0f") -> None:
    axis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:{precision}}%"))


# ----------------------------------------------------------------------------- figures
def training_figure(rounds: list, auc: list, ks: list, loss: list) -> Figure:
    """Global AUC and KS per round; the example-weighted training loss per round (None: not released)."""
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.6, 3.3))
    if any(finite(v) for v in auc):
        a1.plot(rounds, [v if finite(v) else np.nan for v in auc], "o-", color=NAVY, lw=1.8, ms=4, label="AUC")
        a1.plot(rounds, [v if finite(v) else np.nan for v in ks], "s-", color=TEAL, lw=1.8, ms=4, label="KS")
        a1.legend(loc="lower right")
    else:
        a1.text(0.5, 0.5, "no global evaluation released", ha="center", va="center", transform=a1.transAxes,
                color=GREY)
    a1.set(title="Global model on the pooled holdouts", xlabel="round", ylabel="metric")
    if any(finite(v) for v in loss):
        a2.plot(rounds, [v if finite(v) else np.nan for v in loss], "o-", color=ORANGE, lw=1.8, ms=4)
    else:
        a2.text(0.5, 0.5, "not released: nodes training with DP-SGD\ndo not send their training loss",
                ha="center", va="center", transform=a2.transAxes, color=GREY)
    a2.set(title="Training loss (example-weighted mean over nodes)", xlabel="round", ylabel="binary cross-entropy")
    for a in (a1, a2):
        a.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return _figure(fig, "training curves: AUC and KS per round, training loss per round")


def discrimination_figure(neg: np.ndarray, pos: np.ndarray, scale) -> Figure:
    """ROC curve and KS plot (score CDFs of both classes) from pooled class-conditional histograms
    over :data:`models.metrics.SCORE_BINS` logit bins; both classes must be present."""
    from models.metrics import auc_from_histograms, ks_from_histograms, roc_from_histograms, score_bin_centres

    plt = pyplot()
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
    return _figure(fig, "ROC curve and KS plot of the global model",
                   f"{int(pos.sum()):,} defaulters and {int(neg.sum()):,} non-defaulters in the pooled holdouts.")


def calibration_figure(bands: list[dict]) -> Figure:
    """Mean PD against the observed default rate per score band (:func:`models.calibration.calibration_bands`);
    log-log when the PDs span more than a factor 20."""
    plt = pyplot()
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
    _percent_axis(plt, ax.xaxis, ".3g")
    _percent_axis(plt, ax.yaxis, ".3g")
    ax.legend(loc="best")
    fig.tight_layout()
    return _figure(fig, "calibration plot: mean PD against observed default rate per score band")


def distribution_figure(histograms: dict[str, dict], scale, cutoff_points: float | None) -> Figure:
    """One panel per institution (``histograms``: name → ``{"bins", "hist_neg", "hist_pos"}``, in
    panel order): its holdout by score, stacked by outcome, with the cut-off score dashed."""
    from models.metrics import score_bin_centres

    plt = pyplot()
    names = list(histograms)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.6 * rows), squeeze=False)

    def points_of(h: dict) -> np.ndarray:
        return scale.points(score_bin_centres(int(h.get("bins", len(h["hist_neg"])))))

    all_mass = []
    for h in histograms.values():
        all_mass += list(points_of(h)[(hist(h["hist_neg"]) + hist(h["hist_pos"])) > 0])
    lo, hi = (min(all_mass) - 10, max(all_mass) + 10) if all_mass else (None, None)
    for i, ax in enumerate(axes.flat):
        if i >= len(names):
            ax.axis("off")
            continue
        h = histograms[names[i]]
        pts = points_of(h)
        order = np.argsort(pts)
        width = float(np.abs(np.diff(pts[order])).mean()) if len(pts) > 1 else 1.0
        neg, pos = hist(h["hist_neg"])[order], hist(h["hist_pos"])[order]
        tot = max(neg.sum() + pos.sum(), 1.0)
        ax.bar(pts[order], neg / tot, width=width, color=TEAL, alpha=0.85, label="non-defaulters")
        ax.bar(pts[order], pos / tot, width=width, bottom=neg / tot, color=ORANGE, alpha=0.9, label="defaulters")
        if cutoff_points is not None:
            ax.axvline(cutoff_points, color=NAVY, lw=1.2, ls="--", label="cut-off")
        ax.set_title(f"{names[i]} (n={int(tot):,})", fontsize=9.5)
        _percent_axis(plt, ax.yaxis)
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
    return _figure(fig, "score distribution per institution")


COMPARISON_COLOURS = {"local-only": GOLD, "federated": NAVY, "centralised (pooled, non-private)": GREY}


def comparison_figure(institutions: list[str], series: dict[str, list]) -> Figure:
    """AUC per institution, one bar per model (``series``: label → AUC per institution, None = n/a;
    labels from :data:`COMPARISON_COLOURS`)."""
    plt = pyplot()
    x = np.arange(len(institutions))
    w = 0.8 / len(series) if len(series) > 1 else 0.45
    fig, ax = plt.subplots(figsize=(max(6.5, 1.5 * len(institutions) + 2), 3.6))
    vals = [v for s in series.values() for v in s if v is not None]
    floor = max(0.0, min(vals) - 0.08)
    for j, (label, s) in enumerate(series.items()):
        xs = x + (j - (len(series) - 1) / 2) * w
        ax.bar(xs, [v if v is not None else np.nan for v in s], w * 0.95, label=label, color=COMPARISON_COLOURS[label])
        for xi, v in zip(xs, s):
            if v is None:
                ax.text(xi, floor + 0.005, "n/a", ha="center", va="bottom", fontsize=7.5, color=GREY, rotation=90)
    ax.set_xticks(x, [i.replace("-", "-\n", 1) if len(i) > 14 else i for i in institutions], fontsize=8.5)
    ax.set_ylim(floor, min(1.0, max(vals) + 0.03))
    ax.set_ylabel("AUC on the institution's holdout")
    ax.set_title("AUC per institution", pad=24)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series))
    fig.tight_layout()
    return _figure(fig, "federated vs local-only vs centralised AUC per institution",
                   "n/a: the institution released no evaluation for that model.")


def member_gain_figure(rows: dict[str, dict], tolerance: float) -> Figure:
    """Gain from joining per member (``rows``: name → card row with ``gain_from_joining``, an AUC
    difference, and ``chosen_model``); the grey band is ± ``tolerance``, red bars are below it."""
    plt = pyplot()
    gains = [r["gain_from_joining"] for r in rows.values()]
    fig, ax = plt.subplots(figsize=(max(6.5, 1.2 * len(rows) + 2), 3.2))
    ax.bar(range(len(rows)), gains, 0.6, color=[TEAL if v >= -tolerance else RED for v in gains])
    ax.axhline(0, color=GREY, lw=1)
    ax.axhspan(-tolerance, tolerance, color=GREY, alpha=0.15, lw=0)
    for x, r in enumerate(rows.values()):
        ax.text(x, r["gain_from_joining"], f"{r['gain_from_joining']:+.3f}\n{r.get('chosen_model') or ''}",
                ha="center", va="bottom" if r["gain_from_joining"] >= 0 else "top", fontsize=7.5)
    ax.set_xticks(range(len(rows)), list(rows), fontsize=8.5)
    ax.set_ylabel("AUC gain over local-only")
    ax.set_title("Gain from joining, per member")
    fig.tight_layout()
    return _figure(fig, "AUC gain from joining per member")


def privacy_figure(institutions: list[str], spent: list[float], budget: list[float | None]) -> Figure:
    """ε spent against the lifetime budget per institution; orange within 5 % of the budget."""
    from matplotlib.patches import Patch

    plt = pyplot()
    spent = np.array(spent)
    budget = np.array([b if b is not None else np.nan for b in budget])
    fig, ax = plt.subplots(figsize=(7.8, 0.42 * len(institutions) + 1.4))
    y = np.arange(len(institutions))[::-1]
    ax.barh(y, np.nan_to_num(budget), height=0.62, color="#eef1f6", edgecolor=GREY, linewidth=0.8)
    near = [bool(np.isfinite(b) and s >= 0.95 * b) for s, b in zip(spent, budget)]
    ax.barh(y, spent, height=0.34, color=[ORANGE if n else TEAL for n in near])
    top = float(np.nanmax(np.concatenate([spent, budget])))
    for yi, s, b in zip(y, spent, budget):
        ax.text(max(s, np.nan_to_num(b)) + 0.015 * top, yi, f"{s:.3f}" + (f" / {b:g}" if np.isfinite(b) else ""),
                va="center", fontsize=8.5)
    ax.set_yticks(y, institutions, fontsize=8.5)
    ax.set_xlim(0, top * 1.2)
    ax.set_xlabel("ε (at each institution's δ)")
    ax.set_title("Privacy spend per institution", pad=24)
    ax.grid(axis="y", visible=False)
    ax.legend(handles=[Patch(facecolor="#eef1f6", edgecolor=GREY, label="budget (lifetime max ε)"),
                       Patch(color=TEAL, label="ε spent"), Patch(color=ORANGE, label="ε spent, ≥ 95 % of budget")],
              loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8)
    fig.tight_layout()
    return _figure(fig, "epsilon spent versus budget per institution")


def fairness_figure(attribute: str, groups: list[dict]) -> Figure:
    """Approval rate, TPR and FPR per group of one protected attribute (:mod:`models.fairness` rows)."""
    plt = pyplot()
    labels = [g["group"] for g in groups]
    x = np.arange(len(groups))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.6, 3.1))
    ar = [g["approval_rate"] if g["approval_rate"] is not None else np.nan for g in groups]
    a1.bar(x, ar, 0.5 if len(groups) < 4 else 0.6, color=NAVY)
    for xi, v in zip(x, ar):
        if np.isfinite(v):
            a1.text(xi, v + 0.01, f"{100 * v:.1f}%", ha="center", va="bottom", fontsize=8)
    a1.set_xticks(x, labels, fontsize=8.5)
    a1.set(ylim=(0, 1.12), title=f"Approval rate by {attribute}", ylabel="approved")
    _percent_axis(plt, a1.yaxis)
    tpr = [g["tpr"] if g["tpr"] is not None else np.nan for g in groups]
    fpr = [g["fpr"] if g["fpr"] is not None else np.nan for g in groups]
    a2.bar(x - 0.18, tpr, 0.36, color=ORANGE, label="TPR (defaulters declined)")
    a2.bar(x + 0.18, fpr, 0.36, color=TEAL, label="FPR (good borrowers declined)")
    a2.set_xticks(x, labels, fontsize=8.5)
    top = np.nanmax([*tpr, *fpr, 0.05])
    a2.set(ylim=(0, min(1.0, top * 1.3 + 0.02)), title=f"Error rates by {attribute}", ylabel="rate")
    _percent_axis(plt, a2.yaxis)
    a2.legend(loc="upper right", fontsize=7.5)
    fig.tight_layout()
    return _figure(fig, f"fairness by {attribute}: approval rate, TPR and FPR per group")
