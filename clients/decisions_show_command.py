"""``fedcredit decisions show``: one decision from the trail, decided again with the same model package."""

from __future__ import annotations

import argparse

HELP = "show a recorded decision and reproduce it with the same model package"
DESCRIPTION = """\
Show decision ID from the trail in --decisions DIR (after verifying the chain up to it), with
any overrides, and decide the application again with the model package that made it — checked
by its sha256 — and the same mapping, cut-off and number of reasons. Says whether the PD (to
1e-6: the network computes in float32, and which applications shared a batch moves the last
bits), the score, the decision and the reasons match.

The package and mapping are those the service recorded at its start (service-start entry);
give --model / --mapping when they have moved. A trail kept with --store-application hash holds
only the application's sha256: give the application with --application FILE (JSON) and it is
checked against that hash.

Exit codes: 0 shown and reproduced (or not reproducible without --application); 1 the
reproduction differs; 2 a user mistake (no such decision, another package or mapping).
With --json the last line of stdout is {"ok", "decision", "overrides", "outcome", "reproduced", "trail"}.
"""
JSON = "the decision and the reproduction"  # what --json prints (fedcredit.cli adds the option)

#: |PD again − PD recorded| that still counts as the same PD (float32 network; see DESCRIPTION)
PD_TOLERANCE = 1e-6


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", metavar="ID", help="the decision id (decision_id of the service's answer)")
    p.add_argument("--decisions", required=True, metavar="DIR", help="the decision trail's directory")
    p.add_argument("--model", metavar="DIR", help="the model package (default: the one the service recorded)")
    p.add_argument("--mapping", help="the mapping (default: the one the service recorded)")
    p.add_argument("--application", metavar="FILE", help="the application as JSON (for a trail that keeps hashes)")
    p.add_argument("--public-key", metavar="FILE", help="the trail's Ed25519 public key (PEM)")


def _application(payload: dict, path: str | None) -> dict | None:
    from pathlib import Path

    from clients.decision_log import application_sha256
    from configs.errors import UserError
    from fedcredit.json_values import loads_strict

    if "application" in payload:
        return payload["application"]
    if not path:
        return None
    try:
        application = loads_strict(Path(path).read_bytes())
    except OSError as exc:
        raise UserError(f"--application {path}: cannot be read ({exc.strerror})") from None
    except ValueError as exc:
        raise UserError(f"--application {path}: not valid JSON ({exc})") from None
    if not isinstance(application, dict) or application_sha256(application) != payload.get("application_sha256"):
        raise UserError(f"--application {path}: its sha256 is not the one recorded for this decision "
                        f"({str(payload.get('application_sha256'))[:16]}…): it is not the application that was decided")
    return application


def _model(payload: dict, start: dict | None, model_dir: str | None, mapping: str | None):
    from clients.decision_engine import DecisionModel
    from configs.errors import UserError

    start = start or {}
    model_dir = model_dir or (start.get("model") or {}).get("dir")
    mapping = mapping or (start.get("mapping") or {}).get("path")
    if not model_dir:
        raise UserError("the trail does not say which package made this decision; give --model DIR")
    model = DecisionModel(model_dir, mapping, payload["cutoff_pd"], payload["explain"])
    wanted = payload["model"]["package_sha256"]
    if model.package_sha256 != wanted:
        raise UserError(f"{model.package_dir}: package sha256 {model.package_sha256[:16]}… is not the package that "
                        f"made this decision ({wanted[:16]}…); give --model with that package")
    if model.mapping_sha256 != payload.get("mapping_sha256"):
        raise UserError(f"the mapping {mapping or '(none)'} is not the one used for this decision (sha256 "
                        f"{str(payload.get('mapping_sha256'))[:16]}…); give --mapping with that mapping")
    return model


def compare(payload: dict, again: dict) -> dict:
    """What differs between a recorded decision and the same application decided again."""
    if "problems" in again:
        return {"matches": False, "differences": ["the application no longer validates: "
                                                  + "; ".join(p["message"] for p in again["problems"])]}
    before, now = payload["outputs"], again["outputs"]
    differences = []
    if abs(before["pd"] - now["pd"]) > PD_TOLERANCE:
        differences.append(f"pd {before['pd']:.9f} recorded, {now['pd']:.9f} now")
    if abs(before["score"] - now["score"]) > 0.1 + 1e-9:
        differences.append(f"score {before['score']} recorded, {now['score']} now")
    if before["decision"] != now["decision"]:
        differences.append(f"decision {before['decision']} recorded, {now['decision']} now")
    if list(payload.get("reasons") or []) != list(again["reasons"]):
        differences.append(f"reasons {payload.get('reasons')} recorded, {again['reasons']} now")
    return {"matches": not differences, "differences": differences, "outputs": now, "reasons": again["reasons"]}


def run(args: argparse.Namespace) -> int:
    from clients.adverse_action import standing_outcome
    from clients.decision_log import find_decision, read_trail
    from fedcredit.outcome import Outcome
    from fedcredit.signing_keys import load_public_key

    trail = read_trail(args.decisions, load_public_key(args.public_key) if args.public_key else None)
    decision, overrides, start = find_decision(trail, args.id)
    payload = decision["payload"]
    application = _application(payload, args.application)
    reproduced = None
    if application is not None:
        reproduced = compare(payload, _model(payload, start, args.model, args.mapping).redecide(application))
    outcome, _ = standing_outcome(decision, overrides)
    _print(decision, overrides, outcome, reproduced, trail)
    ok = reproduced is None or reproduced["matches"]
    return Outcome({"ok": ok, "decision": decision, "overrides": overrides, "outcome": outcome,
                    "reproduced": reproduced, "trail": trail.to_json()}, 0 if ok else 1)


def _print(decision: dict, overrides: list[dict], outcome: str, reproduced: dict | None, trail) -> None:
    from rich.console import Console

    con = Console(highlight=False, soft_wrap=True)
    p = decision["payload"]
    out = p["outputs"]
    con.print(f"decision {p['decision_id']} at {decision['time']} (trail entry {decision['index']})")
    con.print(f"  {out['decision']}: pd {out['pd']:.6f}, score {out['score']}, cut-off pd {p['cutoff_pd']}")
    con.print(f"  reasons: {'; '.join(p.get('reasons') or []) or 'none'}")
    con.print(f"  model package {p['model']['package_sha256']}")
    for o in overrides:
        q = o["payload"]
        con.print(f"  override at {o['time']} by {q['by']}: {q['from']} → {q['to']} ({q['reason']})")
    con.print(f"  stands: {outcome}")
    if not trail.check.ok:
        con.print(f"  [yellow]the trail breaks at entry {trail.check.first_bad_index}[/] (after this decision): "
                  f"{trail.check.reason}")
    if reproduced is None:
        con.print("  not reproduced: the trail keeps only the application's sha256; give --application FILE")
    elif reproduced["matches"]:
        con.print("  [bold green]REPRODUCED[/]: the same package and application give the same pd, score, "
                  "decision and reasons")
    else:
        con.print("  [bold red]DIFFERS[/]: " + "; ".join(reproduced["differences"]))
