"""Drift of an institution's current population against the model's development population.

:func:`assess_drift` puts together, for one scored table (:class:`clients.scored_table.ScoredTable`)
and one :class:`models.reference.PopulationReference`:

* the PSI of the score over about ten equal-reference-mass score bands, with the band
  distribution (reference and current share per band, labelled in score points);
* the CSI of every model feature (:func:`models.stability.characteristic_stability`) and the
  features that moved most;
* traffic lights (:func:`models.stability.traffic_light`) and the overall status — the most
  severe light of the score and of the features;
* data quality: per feature the rate of missing cells (filled with the schema's value) and,
  for numeric features, the rate of values outside the range the model's encoder resolves
  (beyond its outer quantile knots, fitted on the development population, every value is
  encoded like the knot: the model cannot tell them apart);
* the approval rate at the package's cut-off now and in the development population.

Everything is computed on this machine from the table and the package; nothing is sent.
"""

from __future__ import annotations

import numpy as np

from configs.errors import UserError
from models.encoder import feature_statistics
from models.metrics import score_bin_index
from models.reference import PopulationReference
from models.score_bands import ScoreBands, bands_from_scores, equal_mass_bands, mass_below_pd
from models.stability import (DEFAULT_GROUPS, characteristic_stability, histogram_stability, merge_cells, moved_most,
                              shares, worst_light)

TOP_MOVERS = 5


def missing_rates(data) -> dict[str, float]:
    """Share of rows whose cell was empty (before the schema's imputation), per schema feature."""
    n = max(len(data.table), 1)
    return {f.name: data.missing_counts.get(f.name, 0) / n for f in data.schema.features}


def outside_encoded_range(encoder, table) -> dict[str, float]:
    """Per numeric model feature, the share of rows outside ``[first knot, last knot]`` of the
    encoder. The knots live in the transformed space; the transforms are increasing, so the
    raw values are compared with the knots mapped back (no transform of every row)."""
    from models.encoder import inverse_transform

    out = {}
    for f in encoder.features:
        if f.kind != "numeric" or not f.knots:
            continue
        x = table[f.name].to_numpy(dtype=float)
        lo, hi = inverse_transform(f.transform, f.knots[0]), inverse_transform(f.transform, f.knots[-1])
        out[f.name] = float(np.count_nonzero((x < lo) | (x > hi)) / len(x)) if len(x) else 0.0
    return out


def score_band_table(bands: ScoreBands, labels: list[str], reference_counts, current_counts) -> list[dict]:
    """One row per band: label, PD range, reference and current share (reference share None without one)."""
    cur = shares(current_counts)
    ref = shares(reference_counts) if reference_counts is not None else None
    return [{"band": i + 1, "points": labels[i], "pd_low": lo, "pd_high": hi,
             "reference_share": None if ref is None else float(ref[i]), "current_share": float(cur[i])}
            for i, (lo, hi) in enumerate(bands.pd_ranges())]


def score_stability(reference: PopulationReference, pd_values, scale, groups: int = DEFAULT_GROUPS):
    """PSI of the scores ``pd_values`` against the reference's (noised or exact) score
    distribution, over about ``groups`` bands of equal development mass (labelled in points)."""
    released = reference.score_counts  # neg + pos: the noise std per bin is √2 times one histogram's
    current = np.bincount(score_bin_index(pd_values, len(released)), minlength=len(released))

    def bands_of(basis):
        bands = equal_mass_bands(basis, groups)
        return bands.bin_group, bands.labels(scale)

    return histogram_stability(released, current, reference.score_noise_std * np.sqrt(2), bands_of)


def assess_drift(scored, reference: PopulationReference, reference_name: str,
                 groups: int = DEFAULT_GROUPS) -> dict:
    """The monitoring result (JSON-ready; see the module docstring)."""
    pkg = scored.package
    problem = reference.check_layout(pkg.schema)
    if problem:
        raise UserError(f"{reference_name}: its feature statistics do not fit the model's schema {pkg.schema.key} "
                        f"({problem}); monitor against a reference of the same schema")
    current = scored.feature_counts if scored.feature_counts is not None else feature_statistics(scored.table,
                                                                                                  pkg.schema)
    csi = characteristic_stability(reference.feature_counts, current, pkg.schema, groups, reference.feature_noise_std)
    out: dict = {"rows": scored.rows, "reference": {"name": reference_name, **reference.source,
                                                    "rows": _reference_rows(reference)}}
    score = score_stability(reference, scored.pd, pkg.scale, groups) if reference.has_scores else None
    if score is not None:
        bands = ScoreBands(score.group_of_cell)
        out.update({"score_psi": score.psi, "score_light": score.light, "score_sampling_floor": score.sampling_floor(),
                    "score_noise_floor": score.noise_floor, "reference_resolution_bins": bands.bins,
                    "score_bands": score_band_table(bands, score.labels, score.expected, score.actual)})
        released = reference.score_counts
        ref_approval = mass_below_pd(released, pkg.cutoff_pd) / released.sum() if released.sum() > 0 else None
    else:
        bands = bands_from_scores(scored.pd, groups)
        out.update({"score_psi": None, "score_light": "unknown", "score_sampling_floor": None,
                    "score_noise_floor": None,
                    "score_bands": score_band_table(bands, bands.labels(pkg.scale), None,
                                                    merge_cells(bands.counts(scored.pd), bands.bin_group))})
        ref_approval = None
    out["csi"] = {name: {"psi": r.psi, "light": r.light, "noise_floor": r.noise_floor} for name, r in csi.items()}
    out["characteristics"] = {name: r.to_dict() for name, r in csi.items()}
    out["moved_most"] = moved_most(csi, TOP_MOVERS)
    lights = [out["score_light"]] + [r.light for r in csi.values()]
    out["status"] = worst_light(lights)
    out["features_to_act"] = [n for n, r in csi.items() if r.light == "act"]
    out["features_to_watch"] = [n for n, r in csi.items() if r.light == "watch"]
    out["features_too_noisy"] = [n for n, r in csi.items() if not r.reliable]
    out["reference"]["noise_std_per_count"] = {"features": reference.feature_noise_std,
                                               "scores": reference.score_noise_std}
    out["missing_rate"] = missing_rates(scored.data)
    out["out_of_range_rate"] = outside_encoded_range(pkg.encoder, scored.table)
    out["cutoff_pd"] = pkg.cutoff_pd
    out["approval_rate"] = {"current": float(np.mean(scored.pd < pkg.cutoff_pd)) if scored.rows else None,
                            "reference": ref_approval}
    out["mean_pd"] = {"current": float(scored.pd.mean()) if scored.rows else None,
                      "reference": _reference_mean_pd(reference)}
    return out


def _reference_rows(reference: PopulationReference) -> float | None:
    """Rows behind the reference: the mean total of the feature count vectors (noised ones differ a little)."""
    totals = [float(np.sum(v)) for v in reference.feature_counts.values()]  # noise sums to ~0
    return float(np.mean(totals)) if totals else None


def _reference_mean_pd(reference: PopulationReference) -> float | None:
    if not reference.has_scores:
        return None
    from models.metrics import score_bin_centres

    c = reference.score_counts  # sums of released counts: unbiased numerator and denominator
    return float(np.clip((c * score_bin_centres(len(c))).sum() / c.sum(), 0, 1)) if c.sum() > 0 else None


def headline(result: dict) -> str:
    """One sentence for the committee: the status and why."""
    psi = result.get("score_psi")
    score = (f"score PSI {psi:.3f} ({result['score_light']})" if psi is not None
             else "no score PSI (the reference has no score distribution)")
    act, watch = result["features_to_act"], result["features_to_watch"]
    feats = (f"; features to act on: {', '.join(act)}" if act else "") + (
        f"; to watch: {', '.join(watch)}" if watch else "")
    noisy = result.get("features_too_noisy") or []
    if noisy:
        feats += (f"; {len(noisy)} feature(s) cannot be judged: the reference's DP noise is too large at its size "
                  f"({', '.join(noisy[:5])}{', …' if len(noisy) > 5 else ''}) — use --baseline FILE")
    return f"{result['status'].upper()}: {score}{feats or '; every feature stable'}"

