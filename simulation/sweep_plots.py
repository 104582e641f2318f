"""The figures of a sweep (PNG, matplotlib): AUC vs ε with its references, AUC by round, AUC by axis.

Points that failed are left out; with several seeds each point of a curve is the mean ± sd.
"""

from __future__ import annotations

from pathlib import Path

from simulation.sweep_table import results_frame

def _series_axes(frame) -> list[str]:
    """Axes besides ε and seed that take more than one value: each combination is one curve."""
    return [a for a in ("strategy", "rounds", "local_epochs", "institutions", "partition") if frame[a].nunique() > 1]


def _label(axes: list[str], values) -> str:
    names = {"strategy": "", "rounds": "R=", "local_epochs": "E=", "institutions": "K=", "partition": ""}
    if not isinstance(values, tuple):
        values = (values,)
    if not axes:
        return ""
    return ", ".join(f"{names[a]}{v}" for a, v in zip(axes, values))


def plot_sweep(rows: list[dict], plot_dir: Path) -> list[Path]:
    """The sweep's figures (PNG); returns the files written. Points that failed are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = results_frame(rows)
    frame = frame[(frame["status"] != "failed") & frame["auc_federated"].notna()]
    plot_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if frame.empty:
        return written
    written.append(_plot_privacy_utility(frame, plot_dir / "privacy_utility.png", plt))
    curves = _plot_rounds(rows, plot_dir / "auc_by_round.png", plt)
    if curves:
        written.append(curves)
    for axis in _series_axes(frame):
        written.append(_plot_axis(frame, axis, plot_dir / f"auc_by_{axis}.png", plt))
    return written


def _mean_sd(values) -> tuple[float, float]:
    import numpy as np

    v = np.asarray([x for x in values if x == x], dtype=float)
    if not v.size:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _plot_privacy_utility(frame, path: Path, plt) -> Path:
    """AUC vs ε: federated DP (mean ± sd over seeds), local-only DP, and horizontal references —
    centralised (non-private, pooled data), federated and local-only without DP."""
    axes = _series_axes(frame)
    groups = list(frame.groupby(axes, sort=True)) if axes else [((), frame)]
    fig, ax = plt.subplots(figsize=(8, 6.4), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    dp_eps = sorted(frame.loc[frame["dp"], "epsilon"].unique())
    single = len(groups) == 1
    for gi, (values, g) in enumerate(groups):
        c = colours[gi % len(colours)]
        name = _label(axes, values)
        suffix = f" ({name})" if name else ""
        dp = g[g["dp"]]
        if not dp.empty:
            stats = [(e, *_mean_sd(dp.loc[dp["epsilon"] == e, "auc_federated"]),
                      *_mean_sd(dp.loc[dp["epsilon"] == e, "auc_local_only_mean"])) for e in dp_eps
                     if (dp["epsilon"] == e).any()]
            xs = [s[0] for s in stats]
            ax.errorbar(xs, [s[1] for s in stats], yerr=[s[2] for s in stats], color=c, marker="o", lw=2,
                        capsize=3, label=f"federated + DP{suffix}")
            if any(s[3] == s[3] for s in stats):
                ax.plot(xs, [s[3] for s in stats], color=c, marker="x", ls=":", lw=1.5,
                        label=f"local-only + DP (mean over institutions){suffix}")
        nodp = g[~g["dp"]]
        if not nodp.empty:
            m, _ = _mean_sd(nodp["auc_federated"])
            ax.axhline(m, color=c, ls="-.", lw=1.2, label=f"federated, no DP{suffix}: {m:.3f}")
            lo, _ = _mean_sd(nodp["auc_local_only_mean"])
            if lo == lo:
                ax.axhline(lo, color=c, ls=(0, (1, 3)), lw=1.2, label=f"local-only, no DP{suffix}: {lo:.3f}")
        cen, _ = _mean_sd(g["auc_centralized"])
        if cen == cen:
            ax.axhline(cen, color="black" if single else c, ls="--", lw=1.2,
                       label=f"centralised, no DP (pooled data){suffix}: {cen:.3f}")
    if dp_eps:
        ax.set_xscale("log")
        ax.set_xticks(dp_eps)
        ax.set_xticklabels([f"{e:g}" for e in dp_eps])
        ax.minorticks_off()
    ax.set_xlabel("ε — each institution's privacy budget (record-level (ε, δ)-DP)")
    ax.set_ylabel("AUC on the pooled holdouts")
    seeds = sorted(frame["seed"].unique())
    fixed = [a for a in ("strategy", "rounds", "local_epochs", "institutions", "partition") if a not in axes]
    setting = _label(fixed, tuple(frame[a].iloc[0] for a in fixed))
    ax.set_title(f"Privacy–utility ({setting}; {', '.join(sorted(frame['runtime'].unique()))} runtime, "
                 f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
                 + (", mean ± sd" if len(seeds) > 1 else "") + ")", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_rounds(rows: list[dict], path: Path, plt) -> Path | None:
    import matplotlib as mpl

    rows = [r for r in rows if r.get("auc_by_round") and r.get("status") != "failed"]
    if not rows:
        return None
    seeds = sorted({r["seed"] for r in rows})
    rows = [r for r in rows if r["seed"] == seeds[0]]  # one seed keeps the figure readable
    eps = sorted({r["epsilon"] for r in rows if r["epsilon"] is not None})
    cmap = mpl.colormaps["viridis"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for r in rows:
        xs, ys = zip(*r["auc_by_round"])
        if r["epsilon"] is None:
            colour, label = "black", "no DP"
        else:
            colour = cmap(eps.index(r["epsilon"]) / max(1, len(eps) - 1))
            label = f"ε = {r['epsilon']:g}"
        others = f"{r['strategy']}, K={r['institutions']}, E={r['local_epochs']}, {r['partition']}"
        ax.plot(xs, ys, color=colour, marker=".", lw=1.2, label=f"{label} ({others})")
    ax.set_xlabel("round")
    ax.set_ylabel("global AUC (pooled holdouts)")
    ax.set_title(f"AUC after each round (seed {seeds[0]})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_axis(frame, axis: str, path: Path, plt) -> Path:
    values = sorted(frame[axis].unique(), key=lambda v: (isinstance(v, str), v))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    eps_groups = [(e, frame[frame["epsilon"] == e]) for e in sorted(frame.loc[frame["dp"], "epsilon"].unique())]
    if (~frame["dp"]).any():
        eps_groups.append((None, frame[~frame["dp"]]))
    for e, g in eps_groups:
        ms = [_mean_sd(g.loc[g[axis] == v, "auc_federated"]) for v in values]
        ax.errorbar(range(len(values)), [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3,
                    label="no DP" if e is None else f"ε = {e:g}", color="black" if e is None else None)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels([str(v) for v in values])
    ax.set_xlabel(axis.replace("_", " "))
    ax.set_ylabel("federated AUC (pooled holdouts)")
    ax.set_title(f"AUC by {axis.replace('_', ' ')} (mean over the other axes and seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
