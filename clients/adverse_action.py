"""The adverse-action notice: a plain-language letter for an applicant whose application was declined.

Built from a decision on the trail (:mod:`clients.decision_log`) and its overrides:

* the outcome as it stands — the last override's, else the model's; an application that stands
  approved needs no notice (:class:`NoNoticeNeeded`);
* the principal reasons — the decision's adverse-action reasons, worded by the consortium schema
  (the group's ``reason`` text, e.g. "repeated payment delays in the last 6 months"; see
  :mod:`models.reasons`), most important first; when a person overrode an approval into a decline,
  the reason that person recorded;
* the score and the score the policy requires (the cut-off PD on the same points scale);
* how the decision was made, and that the applicant may ask for a person to review it.

The wording is a template for the institution's compliance team to adapt to the law it lends
under; it states facts from the trail and nothing else.
"""

from __future__ import annotations

from configs.errors import UserError
from models.scoring import ScoreScale


class NoNoticeNeeded(UserError):
    """The decision stands approved: there is no adverse action to give notice of."""


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:]).rstrip(".") + "."


def standing_outcome(decision: dict, overrides: list[dict]) -> tuple[str, dict | None]:
    """The decision as it stands and the override that set it (None when the model's stands)."""
    if overrides:
        last = overrides[-1]
        return str(last["payload"]["to"]), last
    return str(decision["payload"]["outputs"]["decision"]), None


def notice_reasons(decision: dict, override: dict | None) -> list[str]:
    """The principal reasons a notice gives, in order."""
    payload = decision["payload"]
    if override is not None and override["payload"].get("changes_outcome"):
        return [_sentence(override["payload"]["reason"])]  # a person turned an approval into a decline
    return [_sentence(r) for r in payload.get("reasons") or []]


def adverse_action_notice(decision: dict, overrides: list[dict], scale: ScoreScale, institution: str = "",
                          contact: str = "") -> str:
    """The notice for a declined decision (its trail entry and its override entries), as plain text."""
    payload = decision["payload"]
    outcome, override = standing_outcome(decision, overrides)
    if outcome != "decline":
        raise NoNoticeNeeded(f"decision {payload['decision_id']} stands approved"
                             f"{' (overridden)' if override else ''}: there is no adverse action to give notice of")
    when = (override or decision)["time"][:10]
    reasons = notice_reasons(decision, override)
    score = payload["outputs"]["score"]
    needed = float(scale.points([payload["cutoff_pd"]])[0])
    lines = ["NOTICE OF ACTION TAKEN ON YOUR CREDIT APPLICATION", ""]
    if institution:
        lines.append(institution)
    lines += [f"Date: {when}", f"Reference: {payload['decision_id']}", "",
              "Thank you for your application. We are unable to approve it at this time.", ""]
    if reasons:
        lines.append("The principal reasons for our decision:" if len(reasons) > 1
                     else "The principal reason for our decision:")
        lines += [f"  {k}. {r}" for k, r in enumerate(reasons, 1)]
    else:
        lines.append("No single characteristic of your application stands out; taken together, its assessment "
                     "was below the level we require.")
    lines += ["", f"Your credit score was {score:.0f} points; we approve applications scoring above {needed:.1f} points. "
                  f"On our scale {scale.base_score:.0f} points stand for odds of {scale.base_odds:g} to 1 that a loan "
                  f"is repaid on time, and every {scale.pdo:g} points more double those odds.", "",
              "How this decision was made: a statistical credit-scoring model, which a group of lenders trained "
              "together without sharing their customers' records, assessed the information in your application. "
              "The reasons above are the parts of that information that lowered your score the most compared "
              "with a typical applicant."]
    if override is not None:
        lines.append("A member of our staff reviewed the decision.")
    lines += ["", "You may ask for a member of our staff to review this decision, and tell us about anything in "
                  f"your application that is wrong or incomplete{f' ({contact})' if contact else ''}. "
                  "Please quote the reference above."]
    return "\n".join(lines) + "\n"
