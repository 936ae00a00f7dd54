"""Empirical privacy estimators: pure math over canary statistics, no training and no torch.

Client level (Andrew, Kairouz, Oh, Oprea, McMahan, Suriyakumar, "One-shot Empirical Privacy
Estimation for Federated Learning", ICLR 2024, arXiv:2302.03098): Gaussians fitted to the cosines of
inserted and never-inserted canaries give an epsilon estimate (``gaussian_fit_estimate``, with the
exact two-Gaussian hockey-stick divergence ``epsilon_two_gaussians`` and mu-GDP's ``epsilon_gdp``).

Sample level (Steinke, Nasr, Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS
2023, arXiv:2305.08846): from canary scores and inclusion flags, the number of correct top/bottom
guesses gives an epsilon lower bound at a stated confidence (their Theorem 3; ``one_run_audit``).

The canaries themselves and what a run records for its audit live in ``fl_core.run.canaries``.
Bad arguments raise ``dp.errors.DPConfigError`` naming the parameter and its value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

from dp.errors import DPConfigError, DPError

__all__ = [
    "epsilon_two_gaussians", "epsilon_gdp", "GaussianFitEstimate", "gaussian_fit_estimate",
    "one_run_p_value", "one_run_epsilon_lower_bound", "OneRunAudit", "one_run_audit", "GUESS_FRACTIONS",
]


def _bad(name: str, value: object, reason: str) -> DPConfigError:
    return DPConfigError(f"{name}: got {value!r:.200}; {reason}")


def _log_tail(x: float, mean: float, std: float, *, upper: bool) -> float:
    """log P[N(mean, std^2) > x] (upper) or < x."""
    z = (mean - x) / std if upper else (x - mean) / std
    return float(special.log_ndtr(z))


def _log_sub(a: float, b: float) -> float:
    """log(e^a - e^b), -inf when b >= a."""
    if b >= a:
        return -math.inf
    return a + math.log(-math.expm1(b - a))


def _log_hockey_stick(m1: float, s1: float, m0: float, s0: float, eps: float) -> float:
    """log of P[L > eps] - e^eps Q[L > eps], P = N(m1, s1^2), Q = N(m0, s0^2), L = log dP/dQ.

    This is the hockey-stick divergence H_{e^eps}(P || Q), i.e. the smallest delta for which the
    pair is (eps, delta)-indistinguishable in this direction. L(x) = a x^2 + b x + c is
    quadratic, so {L > eps} is a half-line or an interval (or its complement), whose Gaussian
    masses are exact (the computation of Andrew et al. App. C / Steinke, arXiv:2210.00597).
    """
    a = 0.5 * (1 / s0**2 - 1 / s1**2)
    b = m1 / s1**2 - m0 / s0**2
    c = 0.5 * (m0**2 / s0**2 - m1**2 / s1**2) + math.log(s0 / s1)
    if a == 0:
        if b == 0:
            return -math.inf  # identical distributions
        t = (eps - c) / b
        up = b > 0
        lp, lq = _log_tail(t, m1, s1, upper=up), _log_tail(t, m0, s0, upper=up)
    else:
        disc = b * b - 4 * a * (c - eps)
        if disc <= 0:  # L - eps never changes sign: the divergence is 1 - e^eps <= 0 or 0
            return -math.inf
        # Stable roots (no cancellation when a is tiny, i.e. nearly equal variances): q = -(b +
        # sign(b) sqrt(disc)) / 2, roots q / a and (c - eps) / q.
        q = -0.5 * (b + math.copysign(math.sqrt(disc), b))
        lo, hi = sorted((q / a, (c - eps) / q))
        if a > 0:  # L > eps outside [lo, hi]
            lp = np.logaddexp(_log_tail(lo, m1, s1, upper=False), _log_tail(hi, m1, s1, upper=True))
            lq = np.logaddexp(_log_tail(lo, m0, s0, upper=False), _log_tail(hi, m0, s0, upper=True))
        else:      # L > eps inside (lo, hi)
            lp = _log_sub(_log_tail(hi, m1, s1, upper=False), _log_tail(lo, m1, s1, upper=False))
            lq = _log_sub(_log_tail(hi, m0, s0, upper=False), _log_tail(lo, m0, s0, upper=False))
    return _log_sub(float(lp), eps + float(lq))


def epsilon_two_gaussians(*, mean_in: float, std_in: float, mean_out: float, std_out: float,
                          delta: float) -> float:
    """The smallest eps for which N(mean_in, std_in^2) and N(mean_out, std_out^2) are
    (eps, delta)-indistinguishable in both directions (inf if no finite eps below 1e4 works)."""
    for name, v in (("std_in", std_in), ("std_out", std_out)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise _bad(name, v, "must be a finite number > 0")
    if not 0 < delta < 1:
        raise _bad("delta", delta, "must be in (0, 1)")
    log_delta = math.log(delta)

    def excess(eps: float) -> float:
        return max(_log_hockey_stick(mean_in, std_in, mean_out, std_out, eps),
                   _log_hockey_stick(mean_out, std_out, mean_in, std_in, eps)) - log_delta

    if excess(0.0) <= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    while excess(hi) > 0:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            return math.inf
    return float(optimize.brentq(excess, lo, hi, xtol=1e-10, rtol=1e-12))


def epsilon_gdp(mu: float, delta: float) -> float:
    """eps at delta of mu-Gaussian DP: N(mu, 1) against N(0, 1) (Dong, Roth, Su 2019, Cor. 2.13)."""
    if mu <= 0:
        return 0.0
    return epsilon_two_gaussians(mean_in=float(mu), std_in=1.0, mean_out=0.0, std_out=1.0, delta=delta)


@dataclass(frozen=True)
class GaussianFitEstimate:
    """Gaussians fitted to the statistics of inserted and of never-inserted canaries.

    ``mu`` = (mean_in - mean_out) / pooled std: with equal variances (what the Gaussian mechanism
    gives in high dimension, Andrew et al. Thm. 3.1) the pair is mu-Gaussian DP and ``epsilon``
    its eps at delta. ``mu_low``/``mu_high`` is the two-sided ``confidence`` interval of mu from
    the noncentral t distribution of the two-sample t statistic (exact for Gaussian statistics),
    and ``epsilon_low``/``epsilon_high`` its image. ``epsilon_separate_variances``: the paper's
    estimator with each Gaussian's own variance; it is biased upwards with few canaries (any
    sampling difference between the two standard deviations reads as privacy loss).
    """

    n_in: int
    n_out: int
    mean_in: float
    std_in: float
    mean_out: float
    std_out: float
    mu: float
    mu_low: float
    mu_high: float
    epsilon: float
    epsilon_low: float
    epsilon_high: float
    epsilon_separate_variances: float
    delta: float
    confidence: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _mu_interval(t_obs: float, df: int, scale: float, confidence: float) -> tuple[float, float]:
    """Two-sided ``confidence`` interval for mu from the observed two-sample t statistic.

    t = mu_hat / scale follows the noncentral t distribution with df degrees of freedom and
    noncentrality mu / scale; each end solves P[T >= t_obs] = tail or P[T <= t_obs] = tail.
    Where scipy's noncentral t cannot be evaluated (huge noncentrality), the normal
    approximation T ~ N(nc, 1 + nc^2 / (2 df)) is used instead."""
    tail = (1 - confidence) / 2

    def end(upper: bool) -> float:
        def f(mu: float) -> float:
            nc = mu / scale
            return (stats.nct.cdf(t_obs, df, nc) if upper else stats.nct.sf(t_obs, df, nc)) - tail
        lo, hi = (t_obs - 40) * scale, (t_obs + 40) * scale
        try:
            fl, fh = f(lo), f(hi)
            if np.isfinite(fl) and np.isfinite(fh) and fl * fh < 0:
                return float(optimize.brentq(f, lo, hi, xtol=1e-10))
        except (ValueError, FloatingPointError):
            pass
        z = stats.norm.isf(tail) * math.sqrt(1 + t_obs**2 / (2 * df))
        return (t_obs + z) * scale if upper else (t_obs - z) * scale

    return end(upper=False), end(upper=True)


def gaussian_fit_estimate(inserted, null, *, delta: float, confidence: float = 0.95) -> GaussianFitEstimate:
    """Fit both canary sets (see ``GaussianFitEstimate``); each needs at least 2 statistics."""
    a, b = np.asarray(inserted, dtype=np.float64), np.asarray(null, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        raise _bad("canaries", (a.size, b.size), "need at least 2 inserted and 2 null canary statistics")
    if not 0 < confidence < 1:
        raise _bad("confidence", confidence, "must be in (0, 1)")
    k1, k0 = a.size, b.size
    m1, m0 = float(a.mean()), float(b.mean())
    s1, s0 = float(a.std(ddof=1)), float(b.std(ddof=1))
    pooled = math.sqrt(((k1 - 1) * s1**2 + (k0 - 1) * s0**2) / (k1 + k0 - 2))
    if not pooled > 0:
        raise DPError("canary statistics have zero spread: cannot fit Gaussians")
    mu = (m1 - m0) / pooled
    scale = math.sqrt(1 / k1 + 1 / k0)
    mu_lo, mu_hi = _mu_interval(mu / scale, k1 + k0 - 2, scale, confidence)
    lo_abs = 0.0 if mu_lo <= 0 <= mu_hi else min(abs(mu_lo), abs(mu_hi))
    hi_abs = max(abs(mu_lo), abs(mu_hi))
    sep = epsilon_two_gaussians(mean_in=m1, std_in=max(s1, 1e-300), mean_out=m0, std_out=max(s0, 1e-300),
                                delta=delta)
    return GaussianFitEstimate(
        n_in=k1, n_out=k0, mean_in=m1, std_in=s1, mean_out=m0, std_out=s0, mu=mu, mu_low=mu_lo, mu_high=mu_hi,
        epsilon=epsilon_gdp(abs(mu), delta), epsilon_low=epsilon_gdp(lo_abs, delta),
        epsilon_high=epsilon_gdp(hi_abs, delta),
        epsilon_separate_variances=sep, delta=delta, confidence=confidence)


def one_run_p_value(*, m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P-value of v or more correct guesses out of r, m canaries, if the run were (eps, delta)-DP.

    Steinke, Nasr, Jagielski 2023, Theorem 3: with f(w) = P[Binomial(r, e^eps/(1+e^eps)) >= w],
    P[W >= v] <= f(v) + 2 m delta max_{1 <= i <= v} (f(v - i) - f(v)) / i.
    """
    if not (0 <= v <= r <= m):
        raise _bad("v", (m, r, v), "need 0 <= v <= r <= m (correct guesses, guesses, canaries)")
    q = float(special.expit(eps))
    f_v = float(stats.binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(1.0, f_v)
    i = np.arange(1, v + 1)
    gaps = (stats.binom.sf(v - i - 1, r, q) - f_v) / i
    return min(1.0, f_v + 2 * m * delta * float(np.max(gaps)))


def one_run_epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, significance: float) -> float:
    """The largest eps whose (eps, delta) claim the guesses reject at level ``significance``
    (0 when even eps = 0 is not rejected). Rejecting eps rejects every smaller eps too, since
    (eps', delta)-DP with eps' < eps implies (eps, delta)-DP; the p-value grows with eps."""
    p = lambda e: one_run_p_value(m=m, r=r, v=v, eps=e, delta=delta)  # noqa: E731
    if r == 0 or p(0.0) > significance:
        return 0.0
    hi = 1.0
    while p(hi) <= significance:
        hi *= 2
        if hi > 1e3:
            return math.inf
    return float(optimize.brentq(lambda e: p(e) - significance, 0.0, hi, xtol=1e-9))


@dataclass(frozen=True)
class OneRunAudit:
    """The best of a few fixed guess sizes; each is tested at significance / (number of sizes)
    (Bonferroni), so ``epsilon_lower_bound`` holds with probability >= ``confidence``."""

    m: int
    included: int
    guesses: int
    correct: int
    epsilon_lower_bound: float
    delta: float
    confidence: float
    per_guess_size: list

    def as_dict(self) -> dict:
        return dict(self.__dict__)


GUESS_FRACTIONS = (0.05, 0.1, 0.25, 0.5)  # k+ = k- = fraction * m


def one_run_audit(scores, included, *, delta: float, confidence: float = 0.95,
                  guess_fractions=GUESS_FRACTIONS) -> OneRunAudit:
    """Guess "in" for the k highest scores and "out" for the k lowest, for k = f * m."""
    s, inc = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    m = s.size
    if m < 2 or inc.shape != s.shape:
        raise _bad("scores", m, "need at least 2 canaries and one inclusion flag per score")
    order = np.argsort(s, kind="stable")
    sig = (1 - confidence) / len(guess_fractions)
    rows = []
    for f in guess_fractions:
        k = min(max(1, int(f * m)), m // 2)
        correct = int(inc[order[m - k:]].sum() + (~inc[order[:k]]).sum())
        eps = one_run_epsilon_lower_bound(m=m, r=2 * k, v=correct, delta=delta, significance=sig)
        rows.append({"k_in": k, "k_out": k, "correct": correct, "epsilon_lower_bound": eps})
    best = max(rows, key=lambda row: row["epsilon_lower_bound"])
    return OneRunAudit(m=m, included=int(inc.sum()), guesses=2 * best["k_in"], correct=best["correct"],
                       epsilon_lower_bound=best["epsilon_lower_bound"], delta=delta, confidence=confidence,
                       per_guess_size=rows)
