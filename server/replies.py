"""Small free functions over the replies of one exchange, written once for every stage.

Every stage of a run — the statistics query, a training round, an evaluation — gets back an
:class:`server.exchange.Exchange` and sorts it the same way (as Flower's
``flwr/serverapp/strategy/strategy_utils.py`` serves every strategy):

* **refused** — the node answered with a refusal (``node.refused``: a reason code such as
  ``budget-exhausted``, and a detail);
* **withheld** — the node's policy releases nothing at this stage (an evaluation reply with
  ``node.release = off`` and no arrays): neither used nor an error;
* **rejected** — the reply fails the stage's check (:mod:`server.update_checks`);
* **accepted** — everything else, to be aggregated;
* **dropped** — the node errored or did not answer before the time-out (:func:`dropped_nodes`).

Replies are keyed by node id; :func:`by_institution` turns such a dict into one keyed by the
institution names the run knows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, TypeVar

from flwr.app import Message

from fedcredit import protocol as P
from server.exchange import Exchange

NO_REPLY = "no reply before the round timeout"

T = TypeVar("T")


def refusal(msg: Message) -> dict[str, str] | None:
    """``{"reason", "detail"}`` when ``msg`` is a refusal, else None."""
    info = P.node_info(msg)
    if not info.get("refused"):
        return None
    return {"reason": str(info["refused"]), "detail": str(info.get("detail", ""))}


def reply_metrics(msg: Message) -> dict:
    """The reply's ``metrics`` record as a plain dict ({} when it has none)."""
    return dict(msg.content[P.METRICS]) if P.METRICS in msg.content.metric_records else {}


def releases_nothing(msg: Message) -> bool:
    """An evaluation reply of a node whose policy releases no evaluation (``release-eval = off``)."""
    return P.EVAL not in msg.content.array_records and P.node_info(msg).get("release") == "off"


def dropped_nodes(ex: Exchange) -> dict[int, str]:
    """Node → why it contributed nothing: its error, or no reply before the time-out."""
    out = dict(ex.errors)
    out.update({n: NO_REPLY for n in ex.missing})
    return out


@dataclass
class SortedReplies:
    """One exchange's replies by outcome (node id → …); ``accepted`` keeps the given order."""

    accepted: dict[int, Message] = field(default_factory=dict)
    refused: dict[int, dict[str, str]] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    withheld: list[int] = field(default_factory=list)
    dropped: dict[int, str] = field(default_factory=dict)
    metrics: dict[int, dict] = field(default_factory=dict)  # reply metrics of every answer that has them

    def refusal_codes(self) -> set[str]:
        return {r["reason"] for r in self.refused.values()}


def sort_replies(ex: Exchange, check: Callable[[Message], str], *,
                 order: Callable[[int], object] | None = None,
                 withhold: Callable[[Message], bool] | None = None) -> SortedReplies:
    """Sort the answered replies of ``ex``: refusals first, then ``withhold`` (a policy that
    releases nothing), then ``check`` (a non-empty string is why the reply is rejected).

    ``order``: a sort key over node ids for the accepted replies (e.g. the institution name, so
    that a float sum over them is reproducible); default: arrival order.
    """
    out = SortedReplies(dropped=dropped_nodes(ex))
    ok = ex.ok
    for node in (sorted(ok, key=order) if order else ok):
        msg = ok[node]
        if P.METRICS in msg.content.metric_records:
            out.metrics[node] = reply_metrics(msg)
        why = refusal(msg)
        if why is not None:
            out.refused[node] = why
        elif withhold is not None and withhold(msg):
            out.withheld.append(node)
        elif problem := check(msg):
            out.rejected[node] = problem
        else:
            out.accepted[node] = msg
    return out


def by_institution(values: dict[int, T], name: Callable[[int], str]) -> dict[str, T]:
    """``values`` keyed by institution name instead of node id."""
    return {name(node): v for node, v in values.items()}


class RunStopped(Exception):
    """The run cannot go on (too few nodes); carries the reason code (:func:`stop_reason`) and detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def stop_reason(refusal_codes: set[str], failed: dict) -> str:
    """``budget-exhausted`` when every missing node said so (and none failed or was rejected),
    else ``too-few-nodes``."""
    return P.REFUSED_BUDGET if refusal_codes == {P.REFUSED_BUDGET} and not failed else "too-few-nodes"
