"""The docs/benchmarks.md section of bench/heterogeneity.py (its summary line), for bench/run_all.py."""

from __future__ import annotations

from typing import Any

TARGET, TARGET_NODP = "label-0.3/eps3", "label-0.3/no-dp"
#: label skew α = 0.3 at ε = 3: FedAvg as before, each fix left out, and the recipe (the grid's setting)
FIXES = (("compare/fedavg-before", "FedAvg as before: random output layer, example weights, no local layers, "
                                   "no personal model"),
         ("compare/fedavg-before-zero-init", "the same with the zero output layer"),
         ("compare/recipe-without-local-layers", "the recipe without the nodes' own intercepts"),
         ("compare/recipe-without-aggregation-weight", "the recipe with example weights"),
         ("compare/recipe-without-personalize", "the recipe without personal models"),
         (TARGET, "the recipe"))
TOLERANCE_DP, TOLERANCE_NODP = 0.02, 0.01


def _f(v: Any, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _pm(row: dict, key: str) -> str:
    sd = row.get(f"{key}_sd")
    return _f(row.get(key)) + ("" if sd is None else f" ± {sd:.3f}")


def _worse(row: dict) -> str:
    return ", ".join(_f(w) for w in row.get("members_worse_by_seed") or []) or "—"


def _rows(r: dict) -> dict[str, dict]:
    return {x["setting"]: x for x in r.get("settings") or []}


def headline(r: dict) -> str:
    rows = _rows(r)
    t, n, before = rows.get(TARGET), rows.get(TARGET_NODP), rows.get("compare/fedavg-before")
    if not t:
        return ""
    seeds = len(t.get("seeds") or [])
    out = (f"label skew α = 0.3, ε = 3, {seeds} seed(s): members worse than alone {_worse(t)}; global AUC "
           f"{_pm(t, 'auc_federated_pooled')} vs centralised {_f(t.get('auc_centralized_pooled'))}")
    if n:
        out += (f"; no DP: worse {_worse(n)}, {_f(n.get('auc_federated_pooled'))} vs "
                f"{_f(n.get('auc_centralized_pooled'))}")
    if before:
        out += f"; FedAvg as before (ε = 3): worse {_worse(before)}, {_f(before.get('auc_federated_pooled'))}"
    return out


def key_figures(r: dict) -> list[tuple[str, Any]]:
    walls = r.get("setting_wall_s") or {}
    return [("machine", r.get("machine") or "—"),
            ("institutions × rounds", f"{r.get('institutions')} × {r.get('rounds')}"),
            ("run seeds (partitions drawn with seed)", f"{', '.join(map(str, r.get('seeds') or []))} "
                                                       f"({r.get('partition_seed')})"),
            ("settings (failed runs)", f"{len(r.get('settings') or [])} ({len(r.get('failed') or [])})"),
            ("runtime, parallel jobs", f"{r.get('runtime')}, {r.get('jobs')}"),
            ("wall s per run (mean / max)", f"{walls.get('mean')} / {walls.get('max')}")]


def targets(r: dict) -> list[str]:
    """Issue 13's targets on the target settings, per seed."""
    rows = _rows(r)
    out = []
    for name, tol in ((TARGET, TOLERANCE_DP), (TARGET_NODP, TOLERANCE_NODP)):
        t = rows.get(name)
        if not t:
            continue
        met = t.get("target_pooled_met_by_seed") or []
        out.append(f"* {name}: no member's chosen model more than 0.005 below its local-only model in "
                   f"{sum(1 for w in t['members_worse_by_seed'] if w == 0)} of {len(met)} seeds; the members' chosen "
                   f"models, pooled, within {tol} of the centralised model in {sum(1 for m in met if m)} of "
                   f"{len(met)} seeds ({_pm(t, 'auc_chosen_pooled')} vs {_f(t.get('auc_centralized_pooled'))}; "
                   f"the global model alone: {_pm(t, 'auc_federated_pooled')}).")
    return out


def tables(r: dict) -> list[str]:
    """Every setting over its seeds, the fixes one by one, the target settings' members."""
    rows = _rows(r)
    out = ["", "Targets (issue 13):", ""] + targets(r)
    out += ["", "Every setting, mean ± sd over the run seeds (AUC on the holdouts; *global*: the shared model, "
            "pooled holdouts; *chosen*: each member's better model, global or personalised, on its own holdout — "
            "pooled, it rewards the personal models' own intercepts under label skew, so the members' mean is "
            "shown too; *worse*: members whose chosen model is more than 0.005 below their local-only model, per "
            "seed; *min gain*: the smallest chosen − local-only of any member and seed):", "",
            "| setting | ε | worse (per seed) | min gain | global (pooled) | centralised (pooled) | chosen (pooled) | "
            "chosen (members' mean) | centralised (members' mean) | local-only (members' mean) | "
            "round 1: AUC, mean PD |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for x in r.get("settings") or []:
        eps = "no DP" if x.get("epsilon") is None else f"{x['epsilon']:g}"
        out.append(f"| {x['setting']} | {eps} | {_worse(x)} | {_f(x.get('min_gain'))} | "
                   f"{_pm(x, 'auc_federated_pooled')} | {_f(x.get('auc_centralized_pooled'))} | "
                   f"{_f(x.get('auc_chosen_pooled'))} | {_pm(x, 'auc_chosen_mean')} | "
                   f"{_f(x.get('auc_centralized_mean'))} | {_f(x.get('auc_local_only_mean'))} | "
                   f"{_f(x.get('round1_auc'))}, {_f(x.get('round1_mean_pd'))} |")
    fixes = [(rows[name], what) for name, what in FIXES if name in rows]
    if fixes:
        out += ["", "With and without the fixes (label skew α = 0.3, ε = 3):", "",
                "| setting | worse (per seed) | global (pooled) | chosen (members' mean) | round 1 AUC |",
                "| --- | ---: | ---: | ---: | ---: |"]
        out += [f"| {what} | {_worse(x)} | {_pm(x, 'auc_federated_pooled')} | {_pm(x, 'auc_chosen_mean')} | "
                f"{_f(x.get('round1_auc'))} |" for x, what in fixes]
    for name, t in (r.get("target") or {}).items():
        out += ["", f"Members of {name} (own holdout, mean over seeds):", "",
                "| member | rows | default rate | local-only | global | personalised | chosen − local-only | "
                "seeds worse | centralised |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for m in t["members"]:
            out.append(f"| {m['id']} | {m['rows']} | {m['default_rate']:.3f} | {_f(m['auc_local_only'])} | "
                       f"{_f(m['auc_federated'])} | {_f(m['auc_personalized'])} | {_pm(m, 'gain_from_joining')} | "
                       f"{m.get('seeds_worse')} | {_f(m['auc_centralized'])} |")
    return out
