"""The operator's view of drift across the consortium, from the members' DP drift releases.

:func:`consortium_drift` checks every file against the model package (same weights, same score
bands) and its signature, then computes per member and pooled over the members the score PSI
against the development population and, from the outcome releases, the backtest figures — all
from the noised counts, with their noise uncertainty (:mod:`models.drift_view`) — and the
"retrain?" recommendation (:func:`models.drift_view.recommendation`). Post-processing of what
the members released: no further privacy cost.
"""

from __future__ import annotations

from configs.errors import UserError
from fedcredit.drift_file import bands_record, canonical_bytes, cells_of
from models.drift_view import (Development, backtest_view, package_identity, pooled_cells, pooled_population,
                               population_counts, population_noise_std, psi_view, recommendation)
from models.score_bands import development_bands


def trusted_keys(paths) -> dict[str, str]:
    """institution → key fingerprint, from the members' registered public key files (``NAME.pub``)."""
    from server.node_registry import read_public_key

    out: dict[str, str] = {}
    for path in paths or ():
        _, fingerprint, name = read_public_key(path)
        out[name] = fingerprint
    return out


def signer(path, body: dict, trusted: dict[str, str] | None) -> str:
    """The signer's fingerprint ("" for an unsigned file without ``trusted`` keys); with ``trusted``
    keys every file must be signed by the key registered for its institution."""
    from fedcredit.node_signatures import verify_node_signature

    sig = body.get("signature")
    fingerprint = verify_node_signature(sig, canonical_bytes(body), str(path)) if sig is not None else ""
    if trusted is None:
        return fingerprint
    expected = trusted.get(body["institution"])
    if expected is None:
        raise UserError(f"{path}: from institution '{body['institution']}', but no --keys file is registered under "
                        f"that name (given: {', '.join(sorted(trusted)) or 'none'})")
    if fingerprint != expected:
        what = "unsigned" if not fingerprint else f"signed by {fingerprint}"
        raise UserError(f"{path}: {what}, not by the key registered for '{body['institution']}' ({expected}); "
                        "do not use it — ask the institution to sign its release with its node key (--key)")
    return fingerprint


def check_release(path, body: dict, pkg, bands) -> None:
    """The file is a release over this package's weights and score bands."""
    if body["model"]["weights_sha256"] != package_identity(pkg)["weights_sha256"]:
        raise UserError(f"{path}: released for another model (run {body['model'].get('run_id', '?')}, weights "
                        f"{body['model']['weights_sha256'][:12]}…), not the package given with --model "
                        f"(run {pkg.meta.get('run_id', '?')}); view each model's releases with its own package")
    if body["bands"].get("bin_group_sha256") != bands_record(bands)["bin_group_sha256"]:
        raise UserError(f"{path}: its score bands are not this package's development bands; the file was made "
                        "with another fedcredit version or edited")


def consortium_drift(pkg, files: list[tuple[str, dict]], trusted: dict[str, str] | None = None) -> dict:
    """Per-member and pooled figures of the releases ``files`` (path, body) for ``pkg``."""
    if pkg.reference is None or not pkg.reference.has_scores:
        raise UserError("the model package carries no development score distribution (reference.json), so there "
                        "are no development bands to compare the releases with")
    bands = development_bands(pkg.reference)
    dev = Development.of(pkg.reference, bands)
    seen: dict[tuple, str] = {}
    members, populations, outcomes = [], [], []
    for path, body in files:
        check_release(path, body, pkg, bands)
        key = (body["institution"], body["kind"], body["period"])
        if key in seen:
            raise UserError(f"{path}: a second {body['kind']} release of {body['institution']} for period "
                            f"{body['period']!r} (the first: {seen[key]}); pooling both would count its rows twice "
                            "— give one of them")
        seen[key] = str(path)
        fingerprint = signer(path, body, trusted)
        cells, std = cells_of(body), float(body["noise"]["std_per_cell"])
        populations.append((cells, std))
        member = {"file": str(path), "institution": body["institution"], "period": body["period"],
                  "kind": body["kind"], "created": body["created"], "signed_by": fingerprint or None,
                  "noise_std_per_cell": std, "epsilon_spent": body["privacy"].get("epsilon_spent"),
                  "psi": psi_view(dev, population_counts(cells), population_noise_std(cells, std)), "backtest": None}
        if body["kind"] == "outcomes":
            outcomes.append((cells, std))
            member["backtest"] = backtest_view(dev, cells, std)
        members.append(member)
    counts, std = pooled_population(populations)
    pooled = {"members": len(members), "psi": psi_view(dev, counts, std), "backtest": None}
    if outcomes:
        cells, cell_std = pooled_cells(outcomes)
        pooled["backtest"] = backtest_view(dev, cells, cell_std)
    return {"model": package_identity(pkg),
            "bands": bands_record(bands), "development_shares": (dev.counts / dev.counts.sum()).tolist(),
            "members": members, "pooled": pooled, "recommendation": recommendation(pooled, members)}


def view_release_files(model_dir, paths, key_paths=None) -> dict:
    """:func:`consortium_drift` of the release files ``paths`` for the package in ``model_dir``;
    with ``key_paths`` (the members' registered ``NAME.pub``) every file must be signed by its
    institution's key."""
    from fedcredit.drift_file import read_drift_file
    from models.package import load_package

    pkg = load_package(model_dir)
    files = [(path, read_drift_file(path)) for path in paths]
    return consortium_drift(pkg, files, trusted_keys(key_paths) if key_paths else None)
