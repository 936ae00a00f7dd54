"""The empirical-privacy estimators (dp.empirical): known answers, oracles, properties, statistics."""

import math

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.empirical import (epsilon_gdp, epsilon_two_gaussians, gaussian_fit_estimate, one_run_audit,
                          one_run_epsilon_lower_bound, one_run_p_value)
from dp.errors import DPError

mpmath.mp.dps = 40


def _gdp_delta(eps, mu):
    """delta(eps) of mu-GDP, Dong, Roth, Su (2019) Cor. 2.13 / Balle & Wang (2018) Thm. 8, in mpmath."""
    eps, mu = mpmath.mpf(eps), mpmath.mpf(mu)
    return mpmath.ncdf(-eps / mu + mu / 2) - mpmath.e**eps * mpmath.ncdf(-eps / mu - mu / 2)


@pytest.mark.parametrize("mu", [0.1, 0.5, 1.0, 3.0, 10.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-3])
def test_gdp_epsilon_solves_the_analytic_gaussian_formula(mu, delta):
    eps = epsilon_gdp(mu, delta)
    assert float(_gdp_delta(eps, mu)) == pytest.approx(delta, rel=1e-7)


def test_gdp_epsilon_known_value():
    # mu = 1 (the Gaussian mechanism with noise std = sensitivity), delta = 1e-5: the root of the
    # formula above, found here by mpmath's own solver (an independent computation).
    expected = mpmath.findroot(lambda e: _gdp_delta(e, 1) - mpmath.mpf("1e-5"), 4.0)
    assert epsilon_gdp(1.0, 1e-5) == pytest.approx(float(expected), rel=1e-8)
    assert epsilon_gdp(0.0, 1e-5) == 0.0


def _hockey_stick_oracle(m1, s1, m0, s0, eps):
    """int max(0, p - e^eps q) dx by brute force: the trapezoid rule on 4 million points over
    +-40 standard deviations (P = N(m1, s1^2), Q = N(m0, s0^2)); no root finding involved."""
    lo, hi = min(m1 - 40 * s1, m0 - 40 * s0), max(m1 + 40 * s1, m0 + 40 * s0)
    x = np.linspace(lo, hi, 4_000_001)
    p = np.exp(-0.5 * ((x - m1) / s1) ** 2) / (s1 * math.sqrt(2 * math.pi))
    q = np.exp(-0.5 * ((x - m0) / s0) ** 2) / (s0 * math.sqrt(2 * math.pi))
    return float(np.trapezoid(np.maximum(0.0, p - math.exp(eps) * q), x))


@pytest.mark.parametrize("m1,s1,m0,s0", [(0.3, 1.1, 0.0, 1.0), (1.0, 0.8, 0.0, 1.0), (0.0, 1.3, 0.0, 1.0),
                                         (2.0, 1.0, 0.5, 1.0)])
def test_two_gaussians_epsilon_against_numerical_integration(m1, s1, m0, s0):
    delta = 1e-3
    eps = epsilon_two_gaussians(mean_in=m1, std_in=s1, mean_out=m0, std_out=s0, delta=delta)
    worst = max(_hockey_stick_oracle(m1, s1, m0, s0, eps), _hockey_stick_oracle(m0, s0, m1, s1, eps))
    assert worst == pytest.approx(delta, rel=1e-5)


finite = st.floats(min_value=-3, max_value=3, allow_nan=False)
scale = st.floats(min_value=0.5, max_value=2.0)


@settings(max_examples=40, deadline=None)
@given(m1=finite, m0=finite, s1=scale, s0=scale, shift=finite, k=st.floats(min_value=0.1, max_value=10))
def test_two_gaussians_epsilon_is_symmetric_and_location_scale_free(m1, m0, s1, s0, shift, k):
    e = epsilon_two_gaussians(mean_in=m1, std_in=s1, mean_out=m0, std_out=s0, delta=1e-4)
    swapped = epsilon_two_gaussians(mean_in=m0, std_in=s0, mean_out=m1, std_out=s1, delta=1e-4)
    moved = epsilon_two_gaussians(mean_in=k * m1 + shift, std_in=k * s1, mean_out=k * m0 + shift, std_out=k * s0,
                                  delta=1e-4)
    assert swapped == pytest.approx(e, rel=1e-6, abs=1e-8)
    assert moved == pytest.approx(e, rel=1e-5, abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(a=st.floats(min_value=0.01, max_value=8), b=st.floats(min_value=0.01, max_value=8))
def test_gdp_epsilon_grows_with_mu(a, b):
    lo, hi = sorted((a, b))
    assert epsilon_gdp(lo, 1e-5) <= epsilon_gdp(hi, 1e-5) + 1e-9


def test_bad_arguments_name_the_parameter():
    with pytest.raises(DPError, match="std_in"):
        epsilon_two_gaussians(mean_in=0, std_in=0.0, mean_out=0, std_out=1, delta=1e-5)
    with pytest.raises(DPError, match="delta"):
        epsilon_two_gaussians(mean_in=0, std_in=1, mean_out=0, std_out=1, delta=1.5)
    with pytest.raises(DPError, match="canaries"):
        gaussian_fit_estimate([1.0], [0.0, 1.0], delta=1e-5)


# ---------------------------------------------------------------- the one-run bound


def test_one_run_p_value_by_hand():
    # m = r = v = 1 at eps = 1: q = e/(1+e); f(1) = q, f(0) = 1, so the bound is q + 2 delta (1 - q).
    q = math.e / (1 + math.e)
    assert one_run_p_value(m=1, r=1, v=1, eps=1.0, delta=0.01) == pytest.approx(q + 0.02 * (1 - q), rel=1e-12)
    assert one_run_p_value(m=1, r=1, v=1, eps=1.0, delta=0.0) == pytest.approx(q, rel=1e-12)
    # eps = 0: a fair coin per guess; P[Binomial(10, 1/2) >= 8] = (45 + 10 + 1) / 1024
    assert one_run_p_value(m=10, r=10, v=8, eps=0.0, delta=0.0) == pytest.approx(56 / 1024, rel=1e-12)


@pytest.mark.parametrize("r", [10, 100, 500])
def test_all_correct_guesses_give_the_closed_form_bound(r):
    # With delta = 0 and all r guesses right, P[W >= r] = q^r; rejecting at 0.05 means q^r <= 0.05,
    # so the bound is logit(0.05^(1/r)).
    q = 0.05 ** (1 / r)
    expected = math.log(q / (1 - q))
    assert one_run_epsilon_lower_bound(m=r, r=r, v=r, delta=0.0, significance=0.05) == pytest.approx(expected, rel=1e-7)
    with_delta = one_run_epsilon_lower_bound(m=r, r=r, v=r, delta=1e-5, significance=0.05)
    assert 0 < with_delta <= expected
    assert one_run_p_value(m=r, r=r, v=r, eps=with_delta, delta=1e-5) == pytest.approx(0.05, rel=1e-6)


def test_no_signal_rarely_gives_a_bound():
    """Scores independent of inclusion: by Steinke et al. Thm. 3 (with our Bonferroni over guess
    sizes) a positive bound has probability <= 5% per audit. Over 200 seeded audits we allow 20
    (Binomial(200, 0.05) exceeds 20 with probability ~0.01, and the true rate is below 0.05)."""
    positive = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        inc = rng.random(400) < 0.5
        positive += one_run_audit(rng.normal(size=400), inc, delta=1e-5).epsilon_lower_bound > 0
    assert positive <= 20


def test_perfect_scores_give_the_closed_form_bound():
    inc = np.random.default_rng(7).permutation(np.arange(1000) < 500)  # exactly 500 included
    # perfect separation: every guess set is all correct; the largest (k = 500 per side, r = 1000)
    # is tested at 0.05 / 4 (Bonferroni over the four guess sizes): logit(0.0125^(1/1000))
    res = one_run_audit(inc.astype(float), inc, delta=0.0)
    q = (0.05 / 4) ** (1 / 1000)
    assert res.guesses == 1000 and res.correct == 1000
    assert res.epsilon_lower_bound == pytest.approx(math.log(q / (1 - q)), rel=1e-7)


# ---------------------------------------------------------------- the Gaussian fit


def test_gaussian_fit_interval_covers_mu_at_its_stated_rate():
    """200 simulated audits (fixed seeds) with mu = 0.5: the 95% interval should cover mu about 190
    times; Binomial(200, 0.95) falls below 180 with probability < 1e-3."""
    covered, eps = 0, []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        est = gaussian_fit_estimate(rng.normal(0.5, 1, 100), rng.normal(0, 1, 1000), delta=1e-5)
        covered += est.mu_low <= 0.5 <= est.mu_high
        eps.append(est.epsilon)
    assert covered >= 180
    # the point estimate is centered on the true mu-GDP epsilon (eps(0.5) = 1.99 at 1e-5): the mean
    # of 200 estimates has standard error ~0.03
    assert np.mean(eps) == pytest.approx(epsilon_gdp(0.5, 1e-5), abs=0.15)


def test_gaussian_fit_of_separated_statistics_is_large_and_of_equal_ones_small():
    rng = np.random.default_rng(3)
    far = gaussian_fit_estimate(rng.normal(8, 1, 100), rng.normal(0, 1, 1000), delta=1e-5)
    assert far.epsilon_low > 30 and far.mu == pytest.approx(8, abs=0.5)
    near = gaussian_fit_estimate(rng.normal(0, 1, 100), rng.normal(0, 1, 1000), delta=1e-5)
    assert near.epsilon_low == 0.0 and near.epsilon < 1.5
