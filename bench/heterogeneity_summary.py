"""The summary line of bench/heterogeneity.py and its per-member figure, over one or several run seeds.

Each setting runs once per seed (``--seeds``; the partitions stay those of ``--seed``), so a
setting's figures vary only with the training's own randomness (initialisation, DP-SGD's Poisson
samples and noise, the noised releases). Per setting the summary gives the mean and the standard
deviation over seeds (``*_sd``, sample sd; None for one seed) of every pooled figure, the number of
members worse off than alone in each seed (``members_worse_by_seed``) and the smallest member
gain of any seed (``min_gain``). For the target settings (label skew α = 0.3 at ε = 3 and without
DP) it gives every member's figures averaged over seeds, the sd of its gain and in how many seeds
it was worse off (gain below −:data:`GAIN_TOLERANCE`).
"""

from __future__ import annotations

import statistics
from pathlib import Path

GAIN_TOLERANCE = 0.005
TARGET_SETTINGS = ("label-0.3/eps3", "label-0.3/no-dp")
#: per-setting figures averaged over seeds
POOLED = ("auc_federated_pooled", "auc_chosen_pooled", "auc_centralized_pooled", "auc_chosen_mean",
          "auc_centralized_mean", "auc_local_only_mean", "round1_auc", "round1_mean_pd")
MEMBER = ("auc_local_only", "auc_federated", "auc_personalized", "gain_from_joining", "auc_centralized")


def mean_sd(values: list) -> tuple[float | None, float | None]:
    """Mean and sample sd of the values that are not None (sd None below two values)."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return None, None
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else None)


def _eps_name(e: float | None) -> str:
    return "no-dp" if e is None else f"eps{e:g}"


def _round1(line: dict) -> dict:
    first = (line.get("global_by_round") or [{}])[0]
    return {"round1_auc": first.get("auc"), "round1_mean_pd": first.get("mean_pd")}


def _min_gain(line: dict) -> float | None:
    gains = [m["gain_from_joining"] for m in line.get("members", []) if m.get("gain_from_joining") is not None]
    return min(gains) if gains else None


def by_setting(lines: list[dict]) -> dict[str, list[dict]]:
    """The completed lines of each setting, in the order the settings first appear."""
    out: dict[str, list[dict]] = {}
    for ln in lines:
        if "members" in ln:
            out.setdefault(ln["setting"], []).append(ln)
    return out


def setting_row(runs: list[dict]) -> dict:
    """One setting over its seeds: means, sds, the members worse off per seed, the smallest gain."""
    first = runs[0]
    row = {k: first.get(k) for k in ("setting", "group", "partition", "partition_seed", "epsilon", "strategy")}
    row["seeds"] = [r["seed"] for r in runs]
    figures = [{**r, **_round1(r)} for r in runs]
    for k in POOLED:
        row[k], row[f"{k}_sd"] = mean_sd([f.get(k) for f in figures])
    row["members_worse_by_seed"] = [r.get("members_worse_than_local_only") for r in runs]
    worse = [w for w in row["members_worse_by_seed"] if w is not None]
    row["members_worse_than_local_only"] = max(worse) if worse else None
    gains = [g for g in (_min_gain(r) for r in runs) if g is not None]
    row["min_gain"] = min(gains) if gains else None
    row["target_pooled_met_by_seed"] = [r.get("target_pooled_met") for r in runs]
    row["wall_s"] = round(statistics.fmean(r["wall_s"] for r in runs), 1)
    return row


def member_rows(runs: list[dict]) -> list[dict]:
    """Each member of a setting over its seeds (the members are the same institutions in every seed)."""
    out = []
    for i, m in enumerate(runs[0]["members"]):
        per_seed = [r["members"][i] for r in runs]
        row = {k: m.get(k) for k in ("id", "rows", "default_rate")}
        for k in MEMBER:
            row[k], row[f"{k}_sd"] = mean_sd([p.get(k) for p in per_seed])
        row["seeds_worse"] = sum(1 for p in per_seed if p.get("gain_from_joining") is not None
                                 and p["gain_from_joining"] < -GAIN_TOLERANCE)
        row["chosen_model"] = [p.get("chosen_model") for p in per_seed]
        out.append(row)
    return out


def summary_line(lines: list[dict], args, wall: float | None, plot: Path | None) -> dict:
    """The last line: every setting over its seeds, the target settings' members, the wall times."""
    groups = by_setting(lines)
    target = {}
    for name in TARGET_SETTINGS:
        if name in groups:
            row = setting_row(groups[name])
            target[name] = {**{k: row[k] for k in ("seeds", "members_worse_by_seed", *POOLED[:6])},
                            **{f"{k}_sd": row[f"{k}_sd"] for k in POOLED[:6]}, "members": member_rows(groups[name])}
    walls = [ln["wall_s"] for ln in lines if ln.get("wall_s")]
    seeds = sorted({ln["seed"] for ln in lines if "members" in ln})
    return {"bench": "heterogeneity", "summary": True, "institutions": args.institutions, "rounds": args.rounds,
            "seeds": seeds, "partition_seed": args.seed, "runtime": args.runtime, "jobs": args.jobs,
            "machine": next((ln["machine"] for ln in lines if ln.get("machine")), None),
            "settings": sorted((setting_row(runs) for runs in groups.values()),
                               key=lambda r: (r["group"] != "grid", r["setting"])), "target": target,
            "failed": [f"{ln['setting']} (seed {ln.get('seed')})" for ln in lines if "error" in ln],
            "setting_wall_s": {"mean": round(statistics.fmean(walls), 1) if walls else None,
                               "max": max(walls) if walls else None},
            "wall_s": None if wall is None else round(wall, 1), "plot": str(plot) if plot else None}


# ------------------------------------------------------------------------------- the plot
def plot_members(lines: list[dict], path: Path, partitions: list[str]) -> Path:
    """Per-member gain (chosen − local-only AUC, mean over seeds, ± 1 sd) per partition and ε of the grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {name: runs for name, runs in by_setting(lines).items() if runs[0].get("group") == "grid"}
    parts = [p for p in partitions if any(runs[0]["partition"] == p for runs in groups.values())]
    eps = sorted({runs[0]["epsilon"] for runs in groups.values()}, key=lambda e: float("inf") if e is None else e)
    fig, axes = plt.subplots(1, len(parts), figsize=(max(6.5, 3.2 * len(parts)), 3.6), sharey=True, squeeze=False)
    colors = ["#e76f51", "#2a9d8f", "#1f3a5f", "#8d99ae"]
    n_seeds = max(len(runs) for runs in groups.values())
    for ax, p in zip(axes[0], parts):
        width = 0.8 / max(1, len(eps))
        members = []
        for j, e in enumerate(eps):
            runs = groups.get(f"{p}/{_eps_name(e)}")
            if not runs:
                continue
            members = member_rows(runs)
            gains = [m["gain_from_joining"] if m["gain_from_joining"] is not None else float("nan") for m in members]
            sds = [m["gain_from_joining_sd"] or 0.0 for m in members]
            xs = [i + (j - (len(eps) - 1) / 2) * width for i in range(len(gains))]
            ax.bar(xs, gains, width * 0.95, yerr=sds if n_seeds > 1 else None, ecolor="#444444",
                   error_kw={"lw": 0.8, "capsize": 1.5}, color=colors[j % len(colors)],
                   label=_eps_name(e).replace("eps", "ε = ").replace("no-dp", "no DP"))
        ax.axhspan(-GAIN_TOLERANCE, GAIN_TOLERANCE, color="#8d99ae", alpha=0.2, lw=0)
        ax.axhline(0, color="#8d99ae", lw=0.8)
        ax.set_title(p, fontsize=10)
        ax.set_xticks(range(len(members)), [f"{i + 1}\n{m['default_rate']:.1%}" if m["default_rate"] < 0.1
                                            else f"{i + 1}\n{m['default_rate']:.0%}" for i, m in enumerate(members)],
                      fontsize=7.5)
        ax.set_xlabel("member (default rate)", fontsize=8.5)
    axes[0][0].set_ylabel("AUC gain over local-only")
    axes[0][-1].legend(fontsize=7.5, loc="best")
    seeds = f", mean ± sd over {n_seeds} seeds" if n_seeds > 1 else ""
    fig.suptitle(f"Gain from joining per member: chosen model − local-only AUC, own holdout{seeds}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
