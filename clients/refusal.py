"""A node's refusal: the one way a handler declines a request (a normal reply, never a crash)."""

from __future__ import annotations

from fedcredit import protocol as P


class NodeRefusal(Exception):
    """The node declines a request; ``reason`` is a protocol code (``fedcredit.protocol.REFUSED_*``),
    ``detail`` says why, and ``metrics`` holds public figures sent with the refusal (ε spent and
    budget for an exhausted budget).

    Whatever reaches the coordinator must not depend on one borrower except through an
    accounted mechanism (docs/privacy.md, "Threat model"): a refusal raised before the data is
    read describes the request or the node's configuration only; one raised after it (an
    exhausted budget) carries public figures only.
    """

    def __init__(self, reason: str, detail: str, metrics: dict[str, float] | None = None):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.metrics = dict(metrics or {})

    @classmethod
    def budget_exhausted(cls, exc) -> "NodeRefusal":
        """From a :class:`privacy.accountant.BudgetExceeded`: the reason, and the lifetime ε spent
        and budget (public figures, docs/privacy.md) so the coordinator can report them."""
        return cls(P.REFUSED_BUDGET, str(exc), {"epsilon-spent": float(exc.spent), "epsilon-budget": float(exc.budget)})

    @classmethod
    def invalid_request(cls, what: str) -> "NodeRefusal":
        """The coordinator's message failed the node's checks (:mod:`clients.request_checks`);
        ``what`` names the key and the problem, from the message alone."""
        return cls(P.REFUSED_REQUEST, f"the coordinator's request was refused before any data was read: {what}")
