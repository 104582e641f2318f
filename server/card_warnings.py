"""The warnings of a model card: what a reader must not miss (a ledger that does not verify, a
stopped run, no DP, research mode, ε that disagrees with the node's state, miscalibration, a
cut-off that separates nobody, evaluation figures dominated by DP noise, members worse off than
alone).

A figure from DP-noised releases raises a warning only when it stays beyond the threshold two
noise standard deviations away from where it was measured (:func:`noise_can_explain`).
"""

from __future__ import annotations

from server.formatting import percent


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
        out.append(f"Miscalibrated: mean PD {percent(mean_pd, mpd_sd)} against an observed default rate of "
                   f"{percent(dr, dr_sd)} on the pooled holdouts. The ranking (AUC) is unaffected, but PDs must be "
                   "recalibrated before they are used as probabilities or with the cut-off.")
    fa = card.get("fairness") or {}
    appr, appr_sd = overall_approval(fa.get("attributes"))
    if appr is not None and not 0.02 <= appr <= 0.98 and not (
            noise_can_explain(0.02, appr, None, appr_sd) and noise_can_explain(appr, 0.98, appr_sd, None)):
        out.append(f"At the cut-off PD {fa.get('cutoff_pd')} the model approves {percent(appr, appr_sd)} of holdout "
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
