"""The docs/benchmarks.md section of bench/heterogeneity.py (its summary line), for bench/run_all.py."""

from __future__ import annotations

from typing import Any

TARGET = "label-0.3/eps3"


def _f(v: Any, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _rows(r: dict) -> dict[str, dict]:
    return {x["setting"]: x for x in r.get("settings") or []}


def headline(r: dict) -> str:
    t = _rows(r).get(TARGET) or {}
    if not t:
        return ""
    return (f"label skew α = 0.3, ε = 3: {t.get('members_worse_than_local_only')} of 5 members worse than alone; "
            f"global AUC {_f(t.get('auc_federated_pooled'))} vs centralised {_f(t.get('auc_centralized_pooled'))} "
            f"(members' own, mean: {_f(t.get('auc_chosen_mean'))} vs {_f(t.get('auc_centralized_mean'))})")


def key_figures(r: dict) -> list[tuple[str, Any]]:
    return [("machine", r.get("machine") or "—"),
            ("institutions × rounds", f"{r.get('institutions')} × {r.get('rounds')}"),
            ("settings (failed)", f"{len(r.get('settings') or [])} ({len(r.get('failed') or [])})"),
            ("runtime, parallel jobs", f"{r.get('runtime')}, {r.get('jobs')}"),
            ("wall s per setting (mean / max)", f"{(r.get('setting_wall_s') or {}).get('mean')} / "
                                                f"{(r.get('setting_wall_s') or {}).get('max')}")]


def tables(r: dict) -> list[str]:
    """Pooled figures of every setting, then the target setting's members."""
    out = ["", "Every setting (AUC; *chosen*: each member's better model, global or personalised, on its own "
           "holdout; *worse*: members whose chosen model is more than 0.005 below their local-only model):", "",
           "| setting | ε | worse | min gain | global (pooled) | centralised (pooled) | chosen (pooled) | "
           "chosen (mean) | centralised (mean) | local-only (mean) | round 1: AUC, mean PD |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for x in r.get("settings") or []:
        if x.get("error"):
            out.append(f"| {x['setting']} | failed: {x['error'][:80]} |")
            continue
        eps = "no DP" if x.get("epsilon") is None else f"{x['epsilon']:g}"
        out.append(f"| {x['setting']} | {eps} | {x.get('members_worse_than_local_only')} | {_f(x.get('min_gain'))} | "
                   f"{_f(x.get('auc_federated_pooled'))} | {_f(x.get('auc_centralized_pooled'))} | "
                   f"{_f(x.get('auc_chosen_pooled'))} | {_f(x.get('auc_chosen_mean'))} | "
                   f"{_f(x.get('auc_centralized_mean'))} | {_f(x.get('auc_local_only_mean'))} | "
                   f"{_f(x.get('round1_auc'))}, {_f(x.get('round1_mean_pd'))} |")
    for name, t in (r.get("target") or {}).items():
        out += ["", f"Members of {name} (own holdout):", "",
                "| member | rows | default rate | local-only | global | personalised | chosen − local-only | "
                "centralised |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for m in t["members"]:
            out.append(f"| {m['id']} | {m['rows']} | {m['default_rate']:.3f} | {_f(m['auc_local_only'])} | "
                       f"{_f(m['auc_federated'])} | {_f(m['auc_personalized'])} | {_f(m['gain_from_joining'])} | "
                       f"{_f(m['auc_centralized'])} |")
    return out
