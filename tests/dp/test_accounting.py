"""Accountants against independent oracles and published numbers.

Oracles: closed forms (Gaussian RDP, the exact (eps, delta) curve of the Gaussian), a
high-precision numerical integral of the RDP of the sampled Gaussian (mpmath), Opacus's own RDP
and PRV accountants (a separate implementation), and two published numbers (Abadi et al. 2016;
TF Privacy's compute_dp_sgd_privacy docstring).
"""

from __future__ import annotations

import json
import math

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from dp.accounting import (
    DEFAULT_RDP_ORDERS,
    Accountant,
    AccountantKind,
    compute_epsilon,
    rdp_ddg,
    rdp_poisson_gaussian,
    rdp_to_epsilon,
)
from dp.errors import DPConfigError, DPError
from dp.events import (
    ComposedEvent,
    DistributedDiscreteGaussianEvent,
    GaussianEvent,
    PoissonSampledEvent,
    UnitOfPrivacy,
)

opacus_rdp = pytest.importorskip("opacus.accountants.analysis.rdp")
from opacus.accountants import PRVAccountant, RDPAccountant  # noqa: E402

OPACUS_ORDERS = RDPAccountant.DEFAULT_ALPHAS


def sgm(q, z):
    return PoissonSampledEvent(q, GaussianEvent(z))


# --- RDP of the sampled Gaussian ---------------------------------------------------------------


@settings(max_examples=30, deadline=None, derandomize=True)
@given(z=st.floats(min_value=0.1, max_value=100.0), alpha=st.floats(min_value=1.01, max_value=500))
def test_unsampled_gaussian_rdp_closed_form(z, alpha):
    # Mironov 2017, Prop. 7: the Gaussian mechanism with sensitivity 1 and std z has
    # RDP alpha / (2 z^2) at every order.
    got = rdp_poisson_gaussian(sampling_rate=1.0, noise_multiplier=z, orders=[alpha])[0]
    assert got == pytest.approx(alpha / (2 * z * z), rel=1e-12)


def _rdp_oracle(q: float, z: float, alpha: float) -> float:
    """RDP by 40-digit quadrature of A_alpha - 1 = E_{N(0,z^2)}[((1-q) + q e^{(2x-1)/2z^2})^a - 1]."""
    mpmath.mp.dps = 40
    q_, z_, a_ = mpmath.mpf(q), mpmath.mpf(z), mpmath.mpf(alpha)

    def f(x):
        ratio = (1 - q_) + q_ * mpmath.e ** ((2 * x - 1) / (2 * z_ * z_))
        return mpmath.npdf(x, 0, z_) * (ratio**a_ - 1)

    z0 = z_ * z_ * mpmath.log(1 / q_ - 1) + mpmath.mpf(1) / 2
    a_minus_1 = mpmath.quad(f, [-mpmath.inf, -10 * z_, 0, z0, z0 + 10 * z_, mpmath.inf])
    return float(mpmath.log1p(a_minus_1) / (a_ - 1))


@pytest.mark.parametrize(
    "q,z,alpha",
    [
        (0.01, 1.0, 1.5),  # fractional orders use the two-series expansion of MTZ 2019
        (0.01, 1.0, 7.3),
        (0.3, 0.7, 3.7),
        (0.5, 20.0, 1.1),  # slowly converging series: z0 = 0.5
        (1e-5, 20.0, 1.1),  # tiny RDP (~1e-13), where Opacus' truncation is off by 6%
        (0.01, 4.0, 32.0),  # integer orders use the binomial sum
        (0.1, 2.0, 5.0),
    ],
)
def test_sampled_gaussian_rdp_matches_high_precision_integral(q, z, alpha):
    got = rdp_poisson_gaussian(sampling_rate=q, noise_multiplier=z, orders=[alpha])[0]
    want = _rdp_oracle(q, z, alpha)
    # Relative 1e-9, or 1e-18 absolute for the tiny values (float64 rounding of log(1 + x)).
    assert abs(got - want) <= 1e-9 * want + 1e-18


@pytest.mark.parametrize("q", [1e-4, 0.01, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("z", [0.5, 1.0, 4.0])
def test_sampled_gaussian_rdp_matches_opacus(q, z):
    mine = rdp_poisson_gaussian(sampling_rate=q, noise_multiplier=z, orders=OPACUS_ORDERS)
    ref = opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=1, orders=OPACUS_ORDERS)
    # Opacus stops its series at terms below e^-30 without bounding the rest: ~1e-12 absolute.
    np.testing.assert_allclose(mine, ref, rtol=1e-7, atol=1e-11)


def test_rdp_is_an_upper_bound_series_wise():
    # The truncated fractional-order series adds its first omitted terms, so it never
    # undershoots the high-precision value.
    for q, z, alpha in [(0.5, 20.0, 1.1), (0.01, 1.0, 1.5), (0.3, 0.7, 3.7)]:
        got = rdp_poisson_gaussian(sampling_rate=q, noise_multiplier=z, orders=[alpha])[0]
        assert got >= _rdp_oracle(q, z, alpha) * (1 - 1e-12)


# --- (eps, delta) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "q,z,steps,delta",
    [(0.01, 1.0, 1000, 1e-5), (256 / 60000, 1.1, 14063, 1e-5), (0.1, 2.0, 100, 1e-6), (1.0, 5.0, 10, 1e-5)],
)
def test_rdp_epsilon_matches_opacus_rdp_accountant(q, z, steps, delta):
    ref = RDPAccountant()
    ref.history = [(z, q, steps)]
    want = ref.get_epsilon(delta)
    acc = Accountant(AccountantKind.RDP, orders=OPACUS_ORDERS)
    acc.compose(sgm(q, z), count=steps)
    assert acc.get_epsilon(delta) == pytest.approx(want, rel=1e-9)
    # Our default orders contain Opacus's fractional ones and more integers: never worse (up to
    # Opacus' own series truncation, ~1e-12 relative).
    mine = compute_epsilon(sampling_rate=q, noise_multiplier=z, steps=steps, delta=delta)
    assert mine <= want * (1 + 1e-9)


def test_abadi_et_al_2016_moments_accountant_number():
    # Abadi et al., "Deep Learning with Differential Privacy" (CCS 2016), Sec. 3.1: q = 0.01,
    # sigma = 4, delta = 1e-5, T = 10000 gives eps ~ 1.26 with the moments accountant, i.e.
    # integer lambda = alpha - 1 in 1..32 and the classic conversion eps = (T a(l) + log 1/delta)/l.
    orders = [float(a) for a in range(2, 34)]
    rdp = 10000 * rdp_poisson_gaussian(sampling_rate=0.01, noise_multiplier=4.0, orders=orders)
    eps, _ = rdp_to_epsilon(orders, rdp, 1e-5, improved=False)
    assert eps == pytest.approx(1.26, abs=0.005)
    # The improved conversion and fractional orders can only help.
    better = compute_epsilon(sampling_rate=0.01, noise_multiplier=4.0, steps=10000, delta=1e-5)
    assert better < eps


def test_tf_privacy_compute_dp_sgd_privacy_docstring_number():
    # TF Privacy, compute_dp_sgd_privacy.py docstring: N=60000, batch_size=256,
    # noise_multiplier=1.12, epochs=60, delta=1e-5 "satisfies (2.92, 1e-5)-DP". That tool used
    # steps = ceil(epochs * N / batch_size), orders [1 + x/10 for x in 1..100] + 12..63, and the
    # classic conversion.
    orders = [1 + x / 10.0 for x in range(1, 101)] + [float(a) for a in range(12, 64)]
    steps = math.ceil(60 * 60000 / 256)
    rdp = steps * rdp_poisson_gaussian(sampling_rate=256 / 60000, noise_multiplier=1.12, orders=orders)
    eps, _ = rdp_to_epsilon(orders, rdp, 1e-5, improved=False)
    assert round(eps, 2) == 2.92


def _exact_gaussian_epsilon(mu: float, delta: float) -> float:
    # Balle & Wang (ICML 2018), Thm. 8: a Gaussian with sensitivity/std = mu is (eps, delta)-DP
    # iff delta >= Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2). k compositions of noise
    # multiplier z are one Gaussian with mu = sqrt(k)/z (Dong, Roth, Su 2019, GDP composition).
    def excess(eps):
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta

    return optimize.brentq(excess, 0.0, 100.0, xtol=1e-12)


@pytest.mark.parametrize("z,k", [(1.0, 10), (2.0, 1), (5.0, 100)])
def test_prv_and_rdp_against_exact_gaussian(z, k):
    exact = _exact_gaussian_epsilon(math.sqrt(k) / z, 1e-5)
    acc = Accountant(AccountantKind.PRV)
    acc.compose(GaussianEvent(z), count=k)
    prv = acc.get_epsilon(1e-5)
    rdp = compute_epsilon(sampling_rate=1.0, noise_multiplier=z, steps=k, delta=1e-5)
    # PRV is an upper bound within its 0.01 discretisation error; RDP is a looser upper bound.
    assert exact - 1e-9 <= prv <= exact + 0.011
    assert prv <= rdp + 1e-12
    assert exact <= rdp


def test_prv_within_one_percent_of_opacus_prv():
    # The target: q = 0.01, z = 1.0, 1000 steps, delta = 1e-5.
    ref = PRVAccountant()
    for _ in range(1000):
        ref.step(noise_multiplier=1.0, sample_rate=0.01)
    want = ref.get_epsilon(delta=1e-5)
    acc = Accountant(AccountantKind.PRV)
    acc.compose(sgm(0.01, 1.0), count=400)
    acc.compose(ComposedEvent(sgm(0.01, 1.0), 600))
    result = acc.get_privacy_spent(1e-5)
    assert result.accountant is AccountantKind.PRV and "fell back" not in result.note
    assert result.epsilon == pytest.approx(want, rel=0.01)
    # ...and tighter than RDP for the same steps.
    assert result.epsilon < compute_epsilon(sampling_rate=0.01, noise_multiplier=1.0, steps=1000, delta=1e-5)


def test_prv_heterogeneous_history_matches_opacus():
    ref = PRVAccountant()
    ref.history = [(1.0, 0.01, 300), (2.0, 0.05, 200)]
    acc = Accountant(AccountantKind.PRV)
    acc.compose(sgm(0.01, 1.0), count=300)
    acc.compose(sgm(0.05, 2.0), count=200)
    assert acc.get_epsilon(1e-5) == pytest.approx(ref.get_epsilon(delta=1e-5), rel=0.01)


# --- monotonicity (hypothesis) -------------------------------------------------------------------

_q = st.floats(min_value=1e-4, max_value=1.0)
_z = st.floats(min_value=0.3, max_value=20.0)
_steps = st.integers(min_value=1, max_value=100_000)


def _eps(q, z, steps):
    return compute_epsilon(sampling_rate=q, noise_multiplier=z, steps=steps, delta=1e-5)


# Monotonicity on a fixed pseudo-random grid (seeded; 20 cases each), log-uniform in q and z.
_rng = np.random.default_rng(20261126)
_CASES = [(float(10 ** _rng.uniform(-4, 0)), float(10 ** _rng.uniform(-4, 0)), float(10 ** _rng.uniform(np.log10(0.3), np.log10(20))),
           float(10 ** _rng.uniform(np.log10(0.3), np.log10(20))), int(_rng.integers(1, 100_000)), int(_rng.integers(1, 100_000)))
          for _ in range(20)]


@pytest.mark.parametrize("q1,q2,z,_z2,steps,_s2", _CASES)
def test_epsilon_non_decreasing_in_sampling_rate(q1, q2, z, _z2, steps, _s2):
    lo, hi = sorted((q1, q2))
    assert _eps(lo, z, steps) <= _eps(hi, z, steps) * (1 + 1e-9) + 1e-12


@pytest.mark.parametrize("q,_q2,z1,z2,steps,_s2", _CASES)
def test_epsilon_non_increasing_in_noise(q, _q2, z1, z2, steps, _s2):
    lo, hi = sorted((z1, z2))
    assert _eps(q, hi, steps) <= _eps(q, lo, steps) * (1 + 1e-9) + 1e-12


@pytest.mark.parametrize("q,_q2,z,_z2,s1,s2", _CASES)
def test_epsilon_non_decreasing_in_steps(q, _q2, z, _z2, s1, s2):
    lo, hi = sorted((s1, s2))
    assert _eps(q, z, lo) <= _eps(q, z, hi) * (1 + 1e-9) + 1e-12


# --- distributed discrete Gaussian -----------------------------------------------------------


def test_ddg_single_client_is_the_gaussian_rdp():
    # n = 1: tau = 0 and Prop. 14 of Kairouz et al. reduces to alpha Delta^2 / (2 sigma^2), the
    # discrete Gaussian's RDP (Canonne, Kamath, Steinke 2020), the same as the continuous one.
    event = DistributedDiscreteGaussianEvent(l2_sensitivity=3.0, sigma=4.5, dim=100, num_clients=1)
    want = rdp_poisson_gaussian(sampling_rate=1.0, noise_multiplier=1.5, orders=DEFAULT_RDP_ORDERS)
    np.testing.assert_allclose(rdp_ddg(event), want, rtol=1e-12)


def test_ddg_rdp_known_answers():
    # Per-client sigma 1, n = 2: tau = 10 exp(-2 pi^2 * 1 * 1/2) = 10 e^{-pi^2} = 5.17232e-4.
    # Delta_2 = 3, sigma of the sum sqrt(2): s2^2 = 9/2 = 4.5.
    tau = 10 * math.exp(-math.pi**2)
    assert tau == pytest.approx(5.17232e-4, rel=1e-5)
    # d = 4: Delta_1 = min(Delta_2^2, sqrt(d) Delta_2) = min(9, 6) = 6. At alpha = 2 the first
    # term 2/2 * 4.5 + 4 tau = 4.5 + 0.00206893 is the smallest (the others add 2*s1*tau ~ 0.0044).
    small = DistributedDiscreteGaussianEvent(l2_sensitivity=3.0, sigma=math.sqrt(2), dim=4, num_clients=2)
    assert rdp_ddg(small, orders=[2.0])[0] == pytest.approx(4.5 + 4 * tau, rel=1e-12)
    # d = 10^4: Delta_1 = min(9, 300) = 9, s1 = 9/sqrt(2). Now the second term wins:
    # 4.5 + 2 * 6.36396 * tau + tau^2 * 1e4 = 4.5 + 0.00658329 + 0.00267529 = 4.50925857,
    # below the first term 4.5 + 1e4 tau = 9.67232.
    big = DistributedDiscreteGaussianEvent(l2_sensitivity=3.0, sigma=math.sqrt(2), dim=10_000, num_clients=2)
    assert rdp_ddg(big, orders=[2.0])[0] == pytest.approx(4.50925857, rel=1e-8)
    # A caller's tighter Delta_1 = 3 is used: 4.5 + 0.00219443 + 0.00267529 = 4.50486972.
    given_l1 = DistributedDiscreteGaussianEvent(
        l2_sensitivity=3.0, sigma=math.sqrt(2), dim=10_000, num_clients=2, l1_sensitivity=3.0
    )
    assert rdp_ddg(given_l1, orders=[2.0])[0] == pytest.approx(4.50486972, rel=1e-8)


def test_ddg_more_clients_with_same_total_noise_costs_more():
    # Splitting the same total noise over more clients grows tau, so epsilon can only grow.
    def eps(n):
        acc = Accountant(unit=UnitOfPrivacy.CLIENT)
        acc.compose(DistributedDiscreteGaussianEvent(l2_sensitivity=10.0, sigma=10.0, dim=1000, num_clients=n))
        return acc.get_epsilon(1e-5)

    values = [eps(n) for n in (1, 4, 16, 64, 256)]
    assert values == sorted(values) and values[-1] > values[0]


def test_sampled_ddg_bound_sandwich():
    # With tau = 0 (one client) the base RDP is the Gaussian's, eps(l) = l / (2 z^2). The Zhu &
    # Wang general bound then equals the exact sampled-Gaussian value at alpha = 2:
    # (1-q)(1+q) + q^2 e^{1/z^2} is A_2 of MTZ 2019. At higher orders its factor 3 makes it
    # larger than the exact value, and it never exceeds the unsampled RDP.
    q, z = 0.05, 2.0
    event = DistributedDiscreteGaussianEvent(l2_sensitivity=1.0, sigma=z, dim=10, num_clients=1)
    orders = [2.0, 3.0, 8.0, 32.0]
    sampled = rdp_ddg(event, sampling_rate=q, orders=orders)
    exact = rdp_poisson_gaussian(sampling_rate=q, noise_multiplier=z, orders=orders)
    a2 = math.log((1 - q) * (1 + q) + q * q * math.exp(1 / z**2))
    assert sampled[0] == pytest.approx(a2, rel=1e-12) == pytest.approx(exact[0], rel=1e-12)
    assert np.all(sampled[1:] > exact[1:])
    assert np.all(sampled <= rdp_ddg(event, orders=orders))


def test_prv_falls_back_to_rdp_for_ddg_and_says_so():
    event = DistributedDiscreteGaussianEvent(l2_sensitivity=50.0, sigma=60.0, dim=4096, num_clients=20)
    prv = Accountant(AccountantKind.PRV, unit=UnitOfPrivacy.CLIENT)
    rdp = Accountant(AccountantKind.RDP, unit=UnitOfPrivacy.CLIENT)
    for acc in (prv, rdp):
        acc.compose(sgm(0.1, 1.0), count=10)
        acc.compose(PoissonSampledEvent(0.1, event), count=10)
    result = prv.get_privacy_spent(1e-5)
    assert result.requested is AccountantKind.PRV
    assert result.accountant is AccountantKind.RDP
    assert "fell back to RDP" in result.note
    assert result.epsilon == rdp.get_epsilon(1e-5)
    assert result.unit is UnitOfPrivacy.CLIENT


# --- accountant behaviour ----------------------------------------------------------------------


def test_empty_accountant_spends_nothing():
    for kind in AccountantKind:
        result = Accountant(kind).get_privacy_spent(1e-5)
        assert result.epsilon == 0.0 and result.delta == 1e-5


def test_composition_adds_rdp_and_merges_history():
    a, b = sgm(0.01, 1.0), GaussianEvent(3.0)
    acc = Accountant()
    acc.compose(a, count=5)
    acc.compose(a, count=7)
    acc.compose(b)
    assert acc.history == (ComposedEvent(a, 12), ComposedEvent(b, 1))
    want = 12 * rdp_poisson_gaussian(sampling_rate=0.01, noise_multiplier=1.0) + rdp_poisson_gaussian(
        sampling_rate=1.0, noise_multiplier=3.0
    )
    np.testing.assert_allclose(acc.rdp(), want, rtol=1e-12)
    once = Accountant()
    once.compose(ComposedEvent(ComposedEvent(a, 3), 4))
    once.compose(b)
    assert once.get_epsilon(1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)


@pytest.mark.parametrize("count", [0, -1, 2.0, True])
def test_compose_validates_before_changing_state(count):
    acc = Accountant()
    acc.compose(GaussianEvent(2.0))
    before = acc.state_dict()
    with pytest.raises(DPConfigError) as info:
        acc.compose(GaussianEvent(2.0), count=count)
    assert repr(count) in str(info.value)
    with pytest.raises(DPConfigError):
        acc.compose({"type": "gaussian", "noise_multiplier": 2.0})  # type: ignore[arg-type]
    assert acc.state_dict() == before


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 1.5, math.nan])
def test_bad_delta_is_a_typed_error_naming_it(delta):
    acc = Accountant()
    acc.compose(GaussianEvent(1.0))
    with pytest.raises(DPConfigError) as info:
        acc.get_epsilon(delta)
    assert "delta" in str(info.value) and repr(delta) in str(info.value)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(sampling_rate=0.0, noise_multiplier=1.0, steps=10, delta=1e-5), "sampling_rate"),
        (dict(sampling_rate=1.01, noise_multiplier=1.0, steps=10, delta=1e-5), "sampling_rate"),
        (dict(sampling_rate=0.1, noise_multiplier=0.0, steps=10, delta=1e-5), "noise_multiplier"),
        (dict(sampling_rate=0.1, noise_multiplier=-2.0, steps=10, delta=1e-5), "noise_multiplier"),
        (dict(sampling_rate=0.1, noise_multiplier=1.0, steps=0, delta=1e-5), "steps"),
        (dict(sampling_rate=0.1, noise_multiplier=1.0, steps=10, delta=1.0), "delta"),
        (dict(sampling_rate=0.1, noise_multiplier=1.0, steps=10, delta=1e-5, accountant="moments"), "accountant"),
    ],
)
def test_compute_epsilon_bad_parameters(kwargs, name):
    with pytest.raises(DPConfigError) as info:
        compute_epsilon(**kwargs)
    assert name in str(info.value)


def test_bad_orders_rejected():
    for orders in ([], [1.0], [0.5, 2.0], [math.inf], "abc"):
        with pytest.raises(DPConfigError):
            Accountant(orders=orders)


@pytest.mark.parametrize("kind", list(AccountantKind))
def test_state_dict_round_trip_through_json(kind):
    acc = Accountant(kind, unit=UnitOfPrivacy.CLIENT)
    acc.compose(sgm(0.02, 1.2), count=250)
    acc.compose(GaussianEvent(8.0), count=3)
    state = json.loads(json.dumps(acc.state_dict()))
    restored = Accountant.from_state_dict(state)
    assert restored.kind is kind and restored.unit is UnitOfPrivacy.CLIENT
    assert restored.history == acc.history
    assert restored.get_epsilon(1e-6) == acc.get_epsilon(1e-6)
    other = Accountant(kind)
    other.load_state_dict(state)
    assert other.get_epsilon(1e-6) == acc.get_epsilon(1e-6)


def test_load_state_dict_refuses_bad_state_and_keeps_its_own():
    acc = Accountant(AccountantKind.RDP)
    acc.compose(GaussianEvent(2.0), count=2)
    good = acc.state_dict()
    before = acc.get_epsilon(1e-5)
    bad_states = [
        None,
        {**good, "version": 99},
        {**good, "kind": "prv"},  # a PRV state does not silently turn an RDP accountant
        {**good, "unit": "household"},
        {**good, "history": [{"event": {"type": "gaussian", "noise_multiplier": -1}, "count": 1}]},
        {**good, "history": [{"event": {"type": "gaussian", "noise_multiplier": 1}, "count": 0}]},
        {**good, "history": "nope"},
    ]
    for state in bad_states:
        with pytest.raises(DPConfigError):
            acc.load_state_dict(state)
        assert acc.get_epsilon(1e-5) == before and acc.history == (ComposedEvent(GaussianEvent(2.0), 2),)


def test_errors_are_dp_errors():
    with pytest.raises(DPError):
        Accountant("rdp").get_epsilon(2.0)
