"""Budgets: refusal before anything changes, with the numbers; checkpoints; per-client budgets."""

from __future__ import annotations

import json
import math

import pytest

from dp.accounting import AccountantKind, compute_epsilon
from dp.budget import BudgetTracker, PerClientBudgets, PrivacyBudget
from dp.errors import BudgetExceededError, DPConfigError, DPError
from dp.events import ComposedEvent, GaussianEvent, PoissonSampledEvent, UnitOfPrivacy

STEPS_PER_ROUND = 100
ROUND = ComposedEvent(PoissonSampledEvent(0.01, GaussianEvent(1.0)), STEPS_PER_ROUND)


def eps_after_rounds(rounds: int, delta: float = 1e-5) -> float:
    """The same quantity through the other public path (compute_epsilon is tested vs Opacus)."""
    return compute_epsilon(
        sampling_rate=0.01, noise_multiplier=1.0, steps=rounds * STEPS_PER_ROUND, delta=delta
    )


@pytest.mark.parametrize(
    "eps,delta,name",
    [(0.0, 1e-5, "epsilon"), (-1.0, 1e-5, "epsilon"), (math.inf, 1e-5, "epsilon"),
     (1.0, 0.0, "delta"), (1.0, 1.0, "delta"), (1.0, -0.5, "delta")],
)
def test_budget_validation_names_the_value(eps, delta, name):
    with pytest.raises(DPConfigError) as info:
        PrivacyBudget(eps, delta)
    bad = eps if name == "epsilon" else delta
    assert name in str(info.value) and repr(bad) in str(info.value)


def test_budget_unit_coercion():
    assert PrivacyBudget(1.0, 1e-5, "client").unit is UnitOfPrivacy.CLIENT
    with pytest.raises(DPConfigError):
        PrivacyBudget(1.0, 1e-5, "household")


def test_tracker_spends_until_refused_with_the_numbers():
    budget = PrivacyBudget(2.0, 1e-5)
    tracker = BudgetTracker(budget)
    assert tracker.epsilon_so_far == 0.0 and tracker.remaining == 2.0
    rounds = 0
    with pytest.raises(BudgetExceededError) as info:
        while True:
            after = tracker.spend(ROUND)
            rounds += 1
            assert after == pytest.approx(eps_after_rounds(rounds), rel=1e-12)
    # eps(1000 steps at q = 0.01, z = 1) = 2.10 (Opacus RDP, see test_accounting), so the
    # budget of 2.0 is hit within 10 rounds, and not at once (100 steps cost less than 2).
    assert 1 <= rounds < 10
    err = info.value
    assert err.epsilon_so_far == pytest.approx(eps_after_rounds(rounds), rel=1e-12)
    assert err.epsilon_after == pytest.approx(eps_after_rounds(rounds + 1), rel=1e-12)
    assert err.epsilon_so_far <= 2.0 < err.epsilon_after
    assert err.budget_epsilon == 2.0 and err.delta == 1e-5
    message = str(err)
    for number in (f"{err.epsilon_so_far:.6g}", f"{err.epsilon_after:.6g}", "budget epsilon 2", "1e-05"):
        assert number in message
    assert isinstance(err, DPError)
    # Nothing was spent by the refused round.
    assert tracker.epsilon_so_far == pytest.approx(eps_after_rounds(rounds), rel=1e-12)
    assert tracker.remaining == pytest.approx(2.0 - err.epsilon_so_far)


def test_check_changes_nothing():
    tracker = BudgetTracker(PrivacyBudget(10.0, 1e-5))
    tracker.spend(ROUND)
    before = tracker.state_dict()
    assert tracker.check(ROUND, count=2) == pytest.approx(eps_after_rounds(3), rel=1e-12)
    assert tracker.epsilon_after(ROUND) == pytest.approx(eps_after_rounds(2), rel=1e-12)
    assert tracker.state_dict() == before
    with pytest.raises(BudgetExceededError):
        tracker.check(ROUND, count=1000)
    assert tracker.state_dict() == before


def test_tracker_exposes_a_copy_of_its_accountant():
    tracker = BudgetTracker(PrivacyBudget(5.0, 1e-5, UnitOfPrivacy.CLIENT))
    tracker.accountant.compose(ROUND, count=50)
    assert tracker.epsilon_so_far == 0.0
    result = tracker.privacy_spent()
    assert result.epsilon == 0.0 and result.unit is UnitOfPrivacy.CLIENT and result.delta == 1e-5


def test_tracker_state_round_trip_and_bad_state():
    tracker = BudgetTracker(PrivacyBudget(3.0, 1e-6, UnitOfPrivacy.CLIENT))
    tracker.spend(ROUND, count=2)
    state = json.loads(json.dumps(tracker.state_dict()))
    restored = BudgetTracker(PrivacyBudget(99.0, 1e-5))
    restored.load_state_dict(state)
    assert restored.budget == PrivacyBudget(3.0, 1e-6, UnitOfPrivacy.CLIENT)
    assert restored.epsilon_so_far == tracker.epsilon_so_far
    assert restored.spend(ROUND) == tracker.spend(ROUND)
    before = restored.state_dict()
    for bad in (None, {}, {**state, "version": 2}, {**state, "budget": {"epsilon": -1, "delta": 1e-6, "unit": "client"}},
                {**state, "accountant": {**state["accountant"], "history": [1]}}):
        with pytest.raises(DPConfigError):
            restored.load_state_dict(bad)
        assert restored.state_dict() == before


def test_tracker_with_prv():
    tracker = BudgetTracker(PrivacyBudget(2.0, 1e-5), accountant=AccountantKind.PRV)
    spent = tracker.spend(ROUND, count=10)
    # PRV is tighter than RDP for the same 1000 steps (eps_rdp = 2.10 > 2.0 would be refused).
    assert spent < 2.0 < eps_after_rounds(10)
    assert tracker.privacy_spent().accountant is AccountantKind.PRV


def test_per_client_budgets_are_lazy_and_independent():
    budgets = PerClientBudgets(PrivacyBudget(5.0, 1e-5))
    assert len(budgets) == 0
    assert budgets.epsilon_so_far(7) == 0.0 and 7 not in budgets
    budgets.check(7, ROUND)
    assert len(budgets) == 0  # a check creates nothing
    budgets.spend(7, ROUND)
    budgets.spend("alice", ROUND, count=2)
    assert set(budgets) == {7, "alice"}
    assert budgets.epsilon_so_far(7) == pytest.approx(eps_after_rounds(1), rel=1e-12)
    assert budgets.epsilon_so_far("alice") == pytest.approx(eps_after_rounds(2), rel=1e-12)
    assert budgets.tracker(8).epsilon_so_far == 0.0 and 8 in budgets
    for bad in (1.5, None, True, ("a",)):
        with pytest.raises(DPConfigError):
            budgets.tracker(bad)


def test_spend_all_refuses_the_whole_round():
    budgets = PerClientBudgets(PrivacyBudget(2.0, 1e-5))
    rounds = 0
    while budgets.tracker(2).epsilon_after(ROUND) <= 2.0:
        budgets.spend(2, ROUND)
        rounds += 1
    before = budgets.state_dict()
    with pytest.raises(BudgetExceededError) as info:
        budgets.spend_all({1: ROUND, 2: ROUND, 3: ROUND})
    assert info.value.client_id == 2 and "client 2" in str(info.value)
    assert info.value.epsilon_so_far == pytest.approx(eps_after_rounds(rounds), rel=1e-12)
    assert budgets.state_dict() == before  # clients 1 and 3 spent nothing either
    spent = budgets.spend_all({1: ROUND, 3: ROUND})
    assert spent == {1: pytest.approx(eps_after_rounds(1)), 3: pytest.approx(eps_after_rounds(1))}


def test_per_client_state_round_trip_keeps_id_types():
    budgets = PerClientBudgets(PrivacyBudget(5.0, 1e-5))
    budgets.spend(1, ROUND)
    budgets.spend("1", ROUND, count=3)
    state = json.loads(json.dumps(budgets.state_dict()))
    restored = PerClientBudgets(PrivacyBudget(1.0, 1e-3))
    restored.load_state_dict(state)
    assert set(restored) == {1, "1"}
    assert restored.epsilon_so_far(1) == budgets.epsilon_so_far(1)
    assert restored.epsilon_so_far("1") == budgets.epsilon_so_far("1")
    assert restored.budget == PrivacyBudget(5.0, 1e-5)
    duplicated = {**state, "clients": state["clients"] + state["clients"][:1]}
    with pytest.raises(DPConfigError):
        restored.load_state_dict(duplicated)
    assert set(restored) == {1, "1"}
