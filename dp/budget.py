"""(epsilon, delta) budgets that refuse a round before it runs.

``BudgetTracker`` holds one accountant: ``check`` computes epsilon as if the event had been
composed (on a copy) and raises ``BudgetExceededError`` with epsilon so far, epsilon after and
the budget when that is over budget; nothing is changed. ``spend`` checks, then composes.
``PerClientBudgets`` keeps one tracker per client for sample-level DP (each client's examples
are only in that client's DP-SGD steps), created on first use; ``spend_all`` checks every
client of a round before it spends for any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Iterator, Mapping

from dp.accounting import (Accountant, AccountantKind, EpsilonResult, coerce_kind, coerce_unit,
                           default_adjacency)
from dp.errors import BudgetExceededError, DPConfigError
from dp.events import (Adjacency, DPEvent, UnitOfPrivacy, check_delta, check_positive,
                       coerce_adjacency)

__all__ = ["PrivacyBudget", "BudgetTracker", "PerClientBudgets"]

_STATE_VERSION = 1


@dataclass(frozen=True)
class PrivacyBudget:
    """The most (epsilon, delta) a run (or one client's examples) may spend, under a relation.

    ``adjacency`` defaults to what the unit's mechanisms prove: add-remove for examples,
    zero-out for clients (``dp.accounting.default_adjacency``).
    """

    epsilon: float
    delta: float
    unit: UnitOfPrivacy = UnitOfPrivacy.EXAMPLE
    adjacency: Adjacency | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", check_positive("epsilon", self.epsilon))
        object.__setattr__(self, "delta", check_delta(self.delta))
        object.__setattr__(self, "unit", coerce_unit(self.unit))
        adj = (default_adjacency(self.unit) if self.adjacency is None
               else coerce_adjacency(self.adjacency))
        object.__setattr__(self, "adjacency", adj)

    def to_dict(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "delta": self.delta, "unit": self.unit.value,
                "adjacency": self.adjacency.value}

    @classmethod
    def from_dict(cls, data: Any) -> "PrivacyBudget":
        keys = {"epsilon", "delta", "unit"}
        if not isinstance(data, dict) or not keys <= set(data) <= keys | {"adjacency"}:
            raise DPConfigError(f"a budget needs keys epsilon, delta and unit (optional: "
                                f"adjacency), got {data!r}")
        return cls(data["epsilon"], data["delta"], data["unit"], data.get("adjacency"))


class BudgetTracker:
    """One budget, one accountant. Refuses events that would exceed the budget."""

    def __init__(
        self,
        budget: PrivacyBudget,
        *,
        accountant: AccountantKind | str = AccountantKind.RDP,
        client_id: Hashable = None,
    ) -> None:
        if not isinstance(budget, PrivacyBudget):
            raise DPConfigError(f"budget must be a PrivacyBudget, got {budget!r}")
        self._budget = budget
        self._accountant = Accountant(coerce_kind(accountant), unit=budget.unit,
                                      adjacency=budget.adjacency)
        self._client_id = client_id

    @property
    def budget(self) -> PrivacyBudget:
        return self._budget

    @property
    def accountant(self) -> Accountant:
        """A copy: change the tracker only through ``spend``."""
        return self._accountant.copy()

    @property
    def epsilon_so_far(self) -> float:
        return self._accountant.get_epsilon(self._budget.delta)

    @property
    def remaining(self) -> float:
        """Epsilon left before the budget is reached (0 when it is)."""
        return max(self._budget.epsilon - self.epsilon_so_far, 0.0)

    def privacy_spent(self) -> EpsilonResult:
        """The guarantee so far, with its delta, accountant and unit."""
        return self._accountant.get_privacy_spent(self._budget.delta)

    def epsilon_after(self, event: DPEvent, *, count: int = 1) -> float:
        """Epsilon if ``event`` were composed ``count`` more times; changes nothing."""
        trial = self._accountant.copy()
        trial.compose(event, count=count)
        return trial.get_epsilon(self._budget.delta)

    def check(self, event: DPEvent, *, count: int = 1) -> float:
        """Epsilon after the event, or BudgetExceededError (and nothing changes)."""
        after = self.epsilon_after(event, count=count)
        if after > self._budget.epsilon:
            raise BudgetExceededError(
                epsilon_so_far=self.epsilon_so_far,
                epsilon_after=after,
                budget_epsilon=self._budget.epsilon,
                delta=self._budget.delta,
                client_id=self._client_id,
            )
        return after

    def spend(self, event: DPEvent, *, count: int = 1) -> float:
        """Check, then compose. Returns epsilon so far after spending."""
        after = self.check(event, count=count)
        self._accountant.compose(event, count=count)
        return after

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "budget": self._budget.to_dict(),
            "accountant": self._accountant.state_dict(),
        }

    def load_state_dict(self, state: Any) -> None:
        """Restore budget and accountant; validates everything before changing anything."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise DPConfigError(
                f"tracker state must be a dict with version {_STATE_VERSION}, got {state!r}"
            )
        budget = PrivacyBudget.from_dict(state.get("budget"))
        accountant = Accountant(self._accountant.kind, unit=budget.unit,
                                adjacency=budget.adjacency)
        accountant.load_state_dict(state.get("accountant"))
        self._budget, self._accountant = budget, accountant


def _check_client_id(client_id: Any) -> int | str:
    if isinstance(client_id, bool) or not isinstance(client_id, (int, str)):
        raise DPConfigError(f"client_id must be an int or a str, got {client_id!r}")
    return client_id


class PerClientBudgets:
    """A ``BudgetTracker`` per client id (int or str), each with the same budget, made lazily."""

    def __init__(
        self, budget: PrivacyBudget, *, accountant: AccountantKind | str = AccountantKind.RDP
    ) -> None:
        if not isinstance(budget, PrivacyBudget):
            raise DPConfigError(f"budget must be a PrivacyBudget, got {budget!r}")
        self._budget = budget
        self._kind = coerce_kind(accountant)
        self._trackers: dict[int | str, BudgetTracker] = {}

    @property
    def budget(self) -> PrivacyBudget:
        return self._budget

    def __len__(self) -> int:
        return len(self._trackers)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._trackers

    def __iter__(self) -> Iterator[int | str]:
        return iter(list(self._trackers))

    def tracker(self, client_id: int | str) -> BudgetTracker:
        """The client's tracker, created on first use."""
        client_id = _check_client_id(client_id)
        if client_id not in self._trackers:
            self._trackers[client_id] = BudgetTracker(
                self._budget, accountant=self._kind, client_id=client_id
            )
        return self._trackers[client_id]

    def epsilon_so_far(self, client_id: int | str) -> float:
        """0 for a client that has spent nothing (no tracker is created)."""
        client_id = _check_client_id(client_id)
        tracker = self._trackers.get(client_id)
        return 0.0 if tracker is None else tracker.epsilon_so_far

    def check(self, client_id: int | str, event: DPEvent, *, count: int = 1) -> float:
        client_id = _check_client_id(client_id)
        tracker = self._trackers.get(client_id) or BudgetTracker(
            self._budget, accountant=self._kind, client_id=client_id
        )
        return tracker.check(event, count=count)

    def spend(self, client_id: int | str, event: DPEvent, *, count: int = 1) -> float:
        self.check(client_id, event, count=count)
        return self.tracker(client_id).spend(event, count=count)

    def spend_all(self, events: Mapping[int | str, DPEvent]) -> dict[int | str, float]:
        """Spend one event per client for a round, or refuse the whole round.

        Every client is checked first; if any would exceed the budget, BudgetExceededError is
        raised for the first such client and no client has spent anything.
        """
        if not isinstance(events, Mapping):
            raise DPConfigError(f"events must map client ids to events, got {events!r}")
        for client_id, event in events.items():
            self.check(client_id, event)
        return {cid: self.tracker(cid).spend(event) for cid, event in events.items()}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able; client ids are kept with their type (int or str)."""
        return {
            "version": _STATE_VERSION,
            "budget": self._budget.to_dict(),
            "kind": self._kind.value,
            "clients": [[cid, t.state_dict()] for cid, t in self._trackers.items()],
        }

    def load_state_dict(self, state: Any) -> None:
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise DPConfigError(
                f"per-client state must be a dict with version {_STATE_VERSION}, got {state!r}"
            )
        budget = PrivacyBudget.from_dict(state.get("budget"))
        kind = coerce_kind(state.get("kind"))
        clients = state.get("clients")
        if not isinstance(clients, list):
            raise DPConfigError(f"per-client state 'clients' must be a list, got {clients!r}")
        trackers: dict[int | str, BudgetTracker] = {}
        for item in clients:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise DPConfigError(f"each client entry must be [client_id, state], got {item!r}")
            cid = _check_client_id(item[0])
            if cid in trackers:
                raise DPConfigError(f"client_id {cid!r} appears twice in the state")
            tracker = BudgetTracker(budget, accountant=kind, client_id=cid)
            tracker.load_state_dict(item[1])
            trackers[cid] = tracker
        self._budget, self._kind, self._trackers = budget, kind, trackers
