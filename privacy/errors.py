"""What can go wrong with an institution's privacy state or budget (all user-facing: exit code 2)."""

from __future__ import annotations

from configs.errors import UserError


class PrivacyStateError(UserError):
    """The privacy state is damaged, missing, unreadable or unwritable, or locked by another process."""


class PrivacyPolicyConflict(PrivacyStateError):
    """The node config asks for something the stored state cannot honour (e.g. a larger δ)."""


class BudgetExceeded(UserError):
    """A release would take lifetime ε above the institution's budget.

    ``budget`` is the node's max ε, ``spent`` the ε already spent (recorded releases only),
    ``epsilon_if`` the ε the refused release(s) would have brought the total to.
    """

    def __init__(self, message: str, *, budget: float, spent: float, epsilon_if: float):
        super().__init__(message)
        self.budget = budget
        self.spent = spent
        self.epsilon_if = epsilon_if

    @property
    def remaining(self) -> float:
        return max(0.0, self.budget - self.spent)
