"""``fedcredit decisions notice``: the adverse-action notice of a declined decision, from the trail."""

from __future__ import annotations

import argparse

HELP = "print the plain-language adverse-action notice of a declined decision"
DESCRIPTION = """\
Print the notice for an applicant whose application stands declined (decision ID in the trail
in --decisions DIR, after its overrides): the principal reasons in the schema's wording, the
score and the score needed, how the decision was made, and that the applicant may ask for a
person to review it. The same text as the service's GET /v1/decisions/ID/notice.

Exit codes: 0 printed; 2 a user mistake (no such decision, or it stands approved).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", metavar="ID", help="the decision id")
    p.add_argument("--decisions", required=True, metavar="DIR", help="the decision trail's directory")
    p.add_argument("--institution", help="the institution's name, printed at the top")
    p.add_argument("--contact", help="how applicants reach you")
    p.add_argument("--out", metavar="FILE", help="write the notice to FILE instead of stdout")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clients.adverse_action import adverse_action_notice
    from clients.decision_log import find_decision, read_trail
    from fedcredit.path_checks import check_output_file
    from models.scoring import ScoreScale

    if args.out:
        check_output_file(args.out)
    decision, overrides, start = find_decision(read_trail(args.decisions), args.id)
    scale = ScoreScale(**(start or {}).get("score_scale", {}))
    text = adverse_action_notice(decision, overrides, scale, args.institution or "", args.contact or "")
    if args.out:
        Path(args.out).expanduser().write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return 0
