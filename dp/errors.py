"""Typed errors of the ``dp`` layer.

They hang under ``secagg.errors.SecAggError`` so that a caller can catch every error the library
raises on purpose with one ``except``. Messages quote the bad value and name the parameter.
"""

from __future__ import annotations

from secagg.errors import SecAggError

__all__ = ["DPError", "DPConfigError", "AccountantLimitError", "BudgetExceededError"]


class DPError(SecAggError):
    """Base class of the errors raised by the ``dp`` package."""


class DPConfigError(DPError, ValueError):
    """A privacy parameter is invalid (z <= 0, delta outside (0, 1), q outside (0, 1], ...)."""


class AccountantLimitError(DPError):
    """An accountant call would need more memory or time than its stated limit; nothing was
    computed. The message names the history and the limit; a looser accountant (RDP) still
    answers."""


class BudgetExceededError(DPError):
    """Composing an event would take epsilon past the budget; nothing was spent.

    Raised *before* any state changes, so the caller can skip the round and keep going.
    """

    def __init__(
        self,
        *,
        epsilon_so_far: float,
        epsilon_after: float,
        budget_epsilon: float,
        delta: float,
        client_id: object = None,
    ) -> None:
        self.epsilon_so_far = float(epsilon_so_far)
        self.epsilon_after = float(epsilon_after)
        self.budget_epsilon = float(budget_epsilon)
        self.delta = float(delta)
        self.client_id = client_id
        who = "" if client_id is None else f" for client {client_id!r}"
        super().__init__(
            f"privacy budget exceeded{who}: epsilon so far {self.epsilon_so_far:.6g}, "
            f"epsilon after this event {self.epsilon_after:.6g}, "
            f"budget epsilon {self.budget_epsilon:.6g} at delta {self.delta:.3g}; "
            "nothing was spent"
        )
