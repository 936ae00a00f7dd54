"""fl_core.secure_aggregate: one secure private aggregation for people with their own training loop."""

import numpy as np
import pytest

import fl_core
from dp.accounting import Accountant, AccountantKind
from dp.distributed import DDGConfig
from fl_core.errors import ConfigFieldError


def _updates(n=8, dim=300, scale=0.01, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=dim) * scale for _ in range(n)]


def test_without_dp_the_mean_is_the_clients_mean():
    ups = _updates()
    agg = fl_core.secure_aggregate(ups, seed=1)
    assert agg.survivors == tuple(range(8)) and agg.event is None
    np.testing.assert_allclose(agg.mean, np.mean(ups, axis=0), atol=1e-6)  # fixed point at 32 bits


def test_dropouts_leave_the_mean_of_the_survivors():
    ups = dict(enumerate(_updates(n=12)))
    agg = fl_core.secure_aggregate(ups, seed=3, dropout=0.3)
    assert 6 <= len(agg.survivors) < 12  # some dropped, the sum still covers min_survivors
    np.testing.assert_allclose(agg.mean, np.mean([ups[u] for u in agg.survivors], axis=0), atol=1e-6)
    assert agg.outcome.stage_survivors  # the protocol ran with its stages


def test_with_a_plan_the_mean_carries_the_calibrated_noise_and_the_event_composes():
    ups = _updates(dim=2000)
    plan = DDGConfig(l2_clip=1.0, bits=32, dim=2000, num_clients=8, min_survivors=6, epsilon=4.0, delta=1e-5,
                     rounds=10).plan()
    agg = fl_core.secure_aggregate(ups, plan=plan, seed=2)
    err = agg.mean - np.mean(ups, axis=0)
    # 2000 coordinates: the sample std is within 10% of the nominal one with overwhelming probability
    assert np.std(err) == pytest.approx(plan.noise_std(8) / 8, rel=0.1)
    assert agg.event == plan.event
    acc = Accountant(AccountantKind.RDP, unit="client")
    for _ in range(10):
        acc.compose(agg.event)
    assert acc.get_epsilon(1e-5) <= 4.0 + 1e-6  # ten such releases spend the plan's target


def test_fresh_randomness_differs_and_a_seed_reproduces():
    ups = _updates(dim=50)
    plan = DDGConfig(l2_clip=1.0, bits=32, dim=50, num_clients=8, min_survivors=6, epsilon=4.0, delta=1e-5).plan()
    a, b = (fl_core.secure_aggregate(ups, plan=plan) for _ in range(2))
    assert not np.array_equal(a.mean, b.mean)
    c, d = (fl_core.secure_aggregate(ups, plan=plan, seed=5, round_number=1) for _ in range(2))
    assert np.array_equal(c.mean, d.mean)


def test_too_few_survivors_abort():
    with pytest.raises(fl_core.RoundAborted):
        fl_core.secure_aggregate(_updates(n=4), seed=0, dropout={"keys": 0.99}, min_survivors=4)


@pytest.mark.parametrize("call, field", [
    (lambda: fl_core.secure_aggregate([np.zeros(3)]), "updates"),
    (lambda: fl_core.secure_aggregate([np.zeros(3), np.zeros(4)]), "updates"),
    (lambda: fl_core.secure_aggregate([np.zeros(3), np.full(3, np.nan)]), "updates[1]"),
    (lambda: fl_core.secure_aggregate(_updates(), dropout=1.0), "dropout[masked_input]"),
    (lambda: fl_core.secure_aggregate(_updates(), dropout={"later": 0.1}), "dropout"),
    (lambda: fl_core.secure_aggregate(_updates(), graph="ring"), "graph"),
    (lambda: fl_core.secure_aggregate(_updates(), min_survivors=1), "min_survivors"),
    (lambda: fl_core.secure_aggregate(_updates(dim=10), plan=DDGConfig(
        l2_clip=1.0, bits=32, dim=11, num_clients=8, min_survivors=6, noise_multiplier=1.0).plan()), "plan"),
    (lambda: fl_core.secure_aggregate(_updates(dim=10), min_survivors=5, plan=DDGConfig(
        l2_clip=1.0, bits=32, dim=10, num_clients=8, min_survivors=6, noise_multiplier=1.0).plan()), "min_survivors"),
])
def test_bad_arguments_are_named(call, field):
    with pytest.raises(ConfigFieldError) as e:
        call()
    assert e.value.fields == [field]
