"""The end of a run: its summary (``metrics.json``), the model package and the ledger's run-end entry.

:func:`run_summary` reads the finished :class:`server.consortium.ConsortiumRun` — its settings,
history, statistics and final (recalibrated) evaluation — and

* exports the model package (:func:`models.package.save_package`) when at least one round was
  completed: the recalibrated weights when there was a final evaluation, else the last global
  model; with its development population (:func:`population_reference`);
* appends the ledger's ``run-end`` entry (the exported model's and the last round's hashes);
* returns the summary: status and stop reason, the per-round history, the final figures (the
  final evaluation's, else the last evaluated round's), the last known figures per institution,
  the pooled and per-institution score histograms the report draws, fairness and calibration.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from models.metrics import rebin
from models.package import ModelPackage, save_package, weights_digest
from models.reference import PopulationReference
from models.scoring import ScoreScale
from server.run_records import final_institutions, public

if TYPE_CHECKING:
    from server.consortium import ConsortiumRun

REPORT_BINS = 100  # per-institution score histograms kept in metrics.json for the report


def run_summary(run: "ConsortiumRun", status: str, reason: str, detail: str, final_record: dict | None) -> dict:
    """The run's summary; exports the package and writes the ledger's run-end entry on the way."""
    s = run.settings
    completed = [r for r in run.history if "model_sha256_after" in r]
    last_eval = next((r for r in reversed(run.history) if r.get("institutions")), None)
    if final_record is not None and final_record.get("global"):
        last_eval = final_record
    pooled = (last_eval or {}).get("_pooled_eval")
    summary = {
        "run_id": run.run_id,
        "run_dir": str(run.run_dir),
        "status": status,
        "stop_reason": reason,
        "stop_detail": detail,
        "rounds_planned": s.num_server_rounds,
        "rounds_completed": len(completed),
        "wall_s": time.time() - run.started,
        "settings": s.as_run_config(),
        "schema": run.schema.key,
        "statistics": run.statistics,
        "history": [public(r) for r in run.history],
        "final": (last_eval or {}).get("global") or (completed[-1].get("global") if completed else None),
        "institutions": final_institutions(run.history + ([last_eval] if last_eval is final_record
                                                            and last_eval is not None else [])),
    }
    if final_record is not None:
        summary["calibration"] = final_record["calibration"]
        summary["final_evaluation"] = {k: v for k, v in public(final_record).items() if k != "weights"}
    if pooled is not None:
        summary["final_histograms"] = {"hist_neg": pooled.hist_neg, "hist_pos": pooled.hist_pos}
    if (last_eval or {}).get("evaluation_noise"):  # the final figures come from DP-noised releases
        summary["evaluation_noise"] = last_eval["evaluation_noise"]
    if last_eval is not None:
        summary["final_institution_histograms"] = institution_histograms(last_eval["institutions"])
        summary["fairness"] = last_eval.get("fairness")
    export_weights = final_record["weights"] if final_record is not None else run.weights
    if run.encoder is not None and completed:
        pkg = ModelPackage(spec=run.spec, encoder=run.encoder, weights=export_weights, schema=run.schema,
                           scale=ScoreScale(), cutoff_pd=s.cutoff_pd,
                           meta={"run_id": run.run_id, "rounds_completed": len(completed),
                                 "strategy": s.strategy, "dp": s.dp, "status": status,
                                 "final_metrics": summary["final"]},
                           reference=population_reference(run, final_record))
        save_package(run.run_dir / "model", pkg)
        summary["model_dir"] = str(run.run_dir / "model")
    if run.audit is not None:
        summary["ledger_head"] = run.audit.run_end(
            status, reason, len(completed), weights_digest(export_weights) if export_weights else None,
            Path(summary["model_dir"]) if "model_dir" in summary else None, summary["final"],
            weights_digest(run.weights) if run.weights else None, summary.get("calibration"))
        summary["ledger"] = {"path": str(run.audit.path), "key_id": run.audit.ledger.key_id,
                             "entries": run.audit.ledger.next_index}
    return summary


def institution_histograms(institutions: dict[str, dict]) -> dict[str, dict]:
    """Each institution's score histograms of an evaluation, merged to :data:`REPORT_BINS` bins
    (those released at a resolution that does not merge into it are left out)."""
    return {who: {"bins": REPORT_BINS, "hist_neg": rebin(m["_sums"].hist_neg, REPORT_BINS),
                  "hist_pos": rebin(m["_sums"].hist_pos, REPORT_BINS)}
            for who, m in institutions.items()
            if "_sums" in m and len(m["_sums"].hist_neg) % REPORT_BINS == 0}


def population_reference(run: "ConsortiumRun", final_record: dict | None) -> PopulationReference | None:
    """The exported model's development population (:mod:`models.reference`): the summed
    statistics and, when the final evaluation of the exported (recalibrated) model was released,
    its pooled holdout score histograms. None for a run resumed from a checkpoint without counts."""
    if run.population_counts is None:
        return None
    contributors = len(run.statistics.get("contributors") or [])
    ref = PopulationReference(feature_counts=run.population_counts, source={
        "features": f"summed feature statistics of {contributors} institution(s)"
                    + (" (each Gaussian-noised by its node)" if run.settings.dp else " (exact)"),
        "dp": bool(run.settings.dp), "contributors": contributors, "run_id": run.run_id})
    pooled = (final_record or {}).get("_pooled_eval")
    if pooled is not None:
        ref.score_neg, ref.score_pos = pooled.hist_neg, pooled.hist_pos
        ref.source["scores"] = (f"pooled holdout score histograms of the exported model ({len(pooled.hist_neg)} "
                                f"logit bins; final evaluation after round {final_record['round']} by "
                                f"{len(final_record.get('institutions') or {})} institution(s))")
    return ref
