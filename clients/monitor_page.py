"""The monitoring page: one self-contained ``monitor.html`` (Jinja2 with autoescape, matplotlib PNGs).

Sections: summary (status, score PSI, approval rate and mean PD now and at development), score
stability (band distribution, development vs current), characteristic stability (CSI per
feature with the thresholds, the distributions of the features that moved most), data quality
(missing and out-of-range rates), reference population (where the baseline comes from).
Every value from the data or the package is escaped by Jinja2; plots are embedded PNGs
(:mod:`fedcredit.figures`), so the page needs nothing from outside to display.
"""

from __future__ import annotations

from datetime import datetime, timezone
import numpy as np

from fedcredit.figures import png_data_uri, pyplot

LIGHT_COLOURS = {"stable": "#2a9d8f", "watch": "#d49a1f", "act": "#c0392b", "unknown": "#8d99ae"}
REFERENCE_COLOUR, CURRENT_COLOUR = "#8d99ae", "#1f3a5f"
MOVER_FIGURES = 3


def _pct(x) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{100 * x:.2f} %"


def _num(x) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.4f}"


def _count(x) -> str:
    return "—" if x is None else f"{x:,.0f}"


def _paired_bars(labels: list[str], reference, current, title: str, xlabel: str):
    """Reference and current share per group, side by side."""
    plt = pyplot()
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.62 * len(labels) + 2.5), 3.6))
    if reference is not None:
        ax.bar(x - 0.2, 100 * np.asarray(reference, dtype=float), 0.4, color=REFERENCE_COLOUR, label="development")
    ax.bar(x + (0.2 if reference is not None else 0), 100 * np.asarray(current, dtype=float), 0.4,
           color=CURRENT_COLOUR, label="current")
    ax.set_xticks(x, labels, rotation=35 if len(labels) > 5 else 0, ha="right" if len(labels) > 5 else "center",
                  fontsize=8)
    ax.set(xlabel=xlabel, ylabel="share of rows (%)")
    ax.set_title(title, pad=24)
    ax.legend(frameon=False, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return png_data_uri(fig)


def score_figure(result: dict) -> str:
    bands = result["score_bands"]
    ref = None if bands and bands[0]["reference_share"] is None else [b["reference_share"] for b in bands]
    psi = result.get("score_psi")
    title = "Score band distribution" + (f" — PSI {psi:.3f} ({result['score_light']})" if psi is not None else "")
    return _paired_bars([b["points"] for b in bands], ref, [b["current_share"] for b in bands], title,
                        "score points (best to worst)")


def csi_figure(result: dict) -> str:
    """Horizontal bars of the CSI per feature, coloured by light, with the 0.10 / 0.25 lines."""
    from models.stability import ACT_ABOVE, STABLE_BELOW

    plt = pyplot()
    items = sorted(result["csi"].items(), key=lambda kv: kv[1]["psi"])
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(items) + 1.4))
    y = np.arange(len(items))
    ax.barh(y, [v["psi"] for _, v in items], color=[LIGHT_COLOURS[v["light"]] for _, v in items])
    ax.set_yticks(y, [k for k, _ in items], fontsize=8)
    for threshold in (STABLE_BELOW, ACT_ABOVE):
        ax.axvline(threshold, color="#5b6676", lw=0.8, ls="--")
    ax.set(title="Characteristic stability index per feature", xlabel="CSI (PSI of the feature)")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return png_data_uri(fig)


def mover_figures(result: dict) -> list[dict]:
    out = []
    for name in result["moved_most"][:MOVER_FIGURES]:
        groups = result["characteristics"][name]["groups"]
        src = _paired_bars([g["label"] for g in groups], [g["reference_share"] for g in groups],
                           [g["current_share"] for g in groups],
                           f"{name} — CSI {result['csi'][name]['psi']:.3f} ({result['csi'][name]['light']})", name)
        out.append({"src": src, "alt": f"distribution of {name}: development against current share per group"})
    return out


def render_monitor_page(result: dict, headline: str, model_name: str, data_name: str) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("clients", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    template = env.get_template("monitor.html.j2")
    characteristics = sorted(result["characteristics"].items(), key=lambda kv: -kv[1]["psi"])
    return template.render(result=result, headline=headline, model_name=model_name, data_name=data_name,
                           generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                           score_figure=score_figure(result), csi_figure=csi_figure(result),
                           mover_figures=mover_figures(result), characteristics=characteristics,
                           fmt_pct=_pct, fmt_num=_num, fmt_count=_count)

