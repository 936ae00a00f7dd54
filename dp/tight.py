"""Numerically tight epsilons for Gaussian histories, each with a bound on memory and time.

Three computations, all upper bounds on epsilon at delta (``dp.accounting`` reports the smallest
of them and RDP, and says which produced the answer):

- ``gaussian_epsilon``: an unsampled Gaussian history is exactly one Gaussian mechanism with
  mu = sqrt(sum_i count_i / z_i^2) (Dong, Roth, Su, "Gaussian Differential Privacy", JRSS-B 2022,
  Cor. 3.3); its curve is delta(eps) = Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu) (Balle and
  Wang, ICML 2018, Thm. 8), solved for eps in log space. Exact, O(1) memory, any step count.
- ``pld_epsilon``: Google's ``dp_accounting`` PLD (Koskela et al. 2020; Doroshenko et al., PETS
  2022, "Connect the Dots"), pessimistic discretization, so the answer is an upper bound at any
  grid. The grid is refined to 1e-4 in loss, or coarsened until the composed distribution has at
  most ``MAX_GRID_POINTS`` points (its FFT then needs < 1 GiB); a coarser grid only loosens the
  bound. When even a grid of 0.5 does not fit, ``AccountantLimitError``.
- ``prv_epsilon``: Opacus' PRV accountant (Gopi, Lee, Wutschitz, NeurIPS 2021). Its upper bound is
  the estimate plus ``eps_error``; Opacus' default 0.01 swamps small epsilons, so we ask for
  min(0.01, 1% of a reference epsilon, the RDP bound) and widen it only as far as the grid must
  to stay within ``MAX_GRID_POINTS``; past max(0.01, 1% of the reference),
  ``AccountantLimitError``.

Inputs are (noise_multiplier, sampling_rate, count) triples: sampling rate 1 means unsampled.
PLD and PRV answers are remembered per (history, delta, grid limit): a run's report asks for the
same history several times (clients with equal data and visits, the audit after the run), and
each answer takes up to seconds.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import optimize, special

from dp.errors import AccountantLimitError, DPError
from dp.events import check_delta

__all__ = ["MAX_GRID_POINTS", "gaussian_mu", "gaussian_epsilon", "pld_epsilon", "prv_epsilon"]

#: Largest discretization grid any accountant call may build (2^23 points: each complex FFT
#: buffer is 128 MiB; dp_accounting and Opacus hold a few at once).
MAX_GRID_POINTS = 1 << 23
_PLD_FINEST = 1e-4  # dp_accounting's default grid
_PLD_COARSEST = 0.5
_PLD_TAIL = 1e-15  # dp_accounting's default truncated tail mass per composition
_PRV_MAX_ERROR = 0.01  # Opacus' default eps_error: we never accept more

Triple = tuple[float, float, int]


def gaussian_mu(history: Sequence[Triple]) -> float:
    """mu of the Gaussian mechanism equal to composing unsampled Gaussians (DRS 2022, Cor. 3.3)."""
    if any(q != 1.0 for _, q, _ in history):
        raise DPError(f"gaussian_mu needs unsampled events (q = 1), got {list(history)!r}")
    return math.sqrt(sum(count / (z * z) for z, _, count in history))


def _log_gaussian_delta(eps: float, mu: float) -> float:
    """log delta(eps) of mu-GDP: log(Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu))."""
    a = special.log_ndtr(mu / 2 - eps / mu)
    b = eps + special.log_ndtr(-mu / 2 - eps / mu)
    return float(a + np.log1p(-np.exp(min(b - a, 0.0))))


def gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon of a mu-GDP mechanism (the Gaussian with sensitivity/sigma = mu) at delta."""
    delta = check_delta(delta)
    if not (math.isfinite(mu) and mu > 0):
        raise DPError(f"mu must be a finite number > 0, got {mu!r}")
    target = math.log(delta)
    if _log_gaussian_delta(0.0, mu) <= target:
        return 0.0
    hi = max(1.0, mu * mu)
    while _log_gaussian_delta(hi, mu) > target:
        hi *= 2.0
    return float(optimize.brentq(lambda e: _log_gaussian_delta(e, mu) - target, 0.0, hi,
                                 xtol=1e-12, rtol=1e-12))


def _pld_lib():
    from dp_accounting.pld import common, privacy_loss_distribution  # noqa: PLC0415 - lazy

    return common, privacy_loss_distribution


def _composed_points(pld, count: int) -> int:
    """Grid points dp_accounting allocates to compose ``pld`` with itself ``count`` times."""
    common, _ = _pld_lib()
    total = 0
    for pmf in {id(pld._pmf_remove): pld._pmf_remove, id(pld._pmf_add): pld._pmf_add}.values():
        probs = pmf.to_dense_pmf()._probs  # dp_accounting has no public accessor for these
        if count == 1:
            total = max(total, len(probs))
            continue
        lo, hi = common.compute_self_convolve_bounds(probs, count, _PLD_TAIL)
        total = max(total, hi - lo + 1, len(probs))
    return total


def _history_key(history: Sequence[Triple]) -> tuple[Triple, ...]:
    return tuple((float(z), float(q), int(c)) for z, q, c in history)


def pld_epsilon(history: Sequence[Triple], delta: float) -> tuple[float, float]:
    """(epsilon, grid interval used) from dp_accounting's PLD, bounded by ``MAX_GRID_POINTS``."""
    return _pld_epsilon(_history_key(history), check_delta(delta), MAX_GRID_POINTS)


@functools.lru_cache(maxsize=256)
def _pld_epsilon(history: tuple[Triple, ...], delta: float, max_points: int) -> tuple[float, float]:
    _, pld_lib = _pld_lib()
    unsampled = [h for h in history if h[1] == 1.0]
    sampled = [h for h in history if h[1] != 1.0]
    parts: list[Triple] = list(sampled)
    if unsampled:  # one Gaussian with the composed mu: exact, one grid
        parts.append((1.0 / gaussian_mu(unsampled), 1.0, 1))
    interval = _PLD_FINEST
    while True:
        if interval > _PLD_COARSEST:
            raise AccountantLimitError(
                f"PLD accountant: the history {list(history)!r} needs more than "
                f"{max_points} grid points even at a grid of {_PLD_COARSEST} in loss")
        singles, points = [], 0
        for z, q, count in parts:
            # A single Gaussian's loss grid spans about 2 * 8.3 / z in loss (tails of 1e-16):
            # refuse to build one far larger than the limit before allocating it.
            if 17.0 / z / interval > 4 * max_points:
                points = math.inf
                break
            single = pld_lib.from_gaussian_mechanism(
                standard_deviation=z, sampling_prob=q, value_discretization_interval=interval)
            singles.append((single, count))
            points += _composed_points(single, count)
        if points <= max_points:
            break
        interval *= min(max(2.0, 1.1 * points / max_points), 1e6)
    total = None
    for single, count in singles:
        composed = single.self_compose(count) if count > 1 else single
        total = composed if total is None else total.compose(composed)
    eps = float(total.get_epsilon_for_delta(delta))
    if not math.isfinite(eps):
        raise DPError(f"PLD accountant returned epsilon {eps!r} for history {list(history)!r}")
    return max(eps, 0.0), interval


def prv_epsilon(history: Sequence[Triple], delta: float, *, reference_epsilon: float
                ) -> tuple[float, float]:
    """(epsilon upper bound, eps_error used) from Opacus' PRV, bounded by ``MAX_GRID_POINTS``.

    ``reference_epsilon`` (any upper bound, e.g. RDP's) sets the error we ask for: 1% of it.
    """
    return _prv_epsilon(_history_key(history), check_delta(delta), float(reference_epsilon), MAX_GRID_POINTS)


@functools.lru_cache(maxsize=256)
def _prv_epsilon(history: tuple[Triple, ...], delta: float, reference_epsilon: float, max_points: int
                 ) -> tuple[float, float]:
    from opacus.accountants import PRVAccountant  # noqa: PLC0415 - Opacus only on this path
    from opacus.accountants.analysis.prv import (  # noqa: PLC0415
        PoissonSubsampledGaussianPRV, compute_safe_domain_size)

    steps = sum(c for _, _, c in history)
    delta_error = delta / 1000  # Opacus' default
    prvs = [PoissonSubsampledGaussianPRV(q, z) for z, q, _ in history]
    counts = [c for _, _, c in history]
    eps_error = min(_PRV_MAX_ERROR, 0.01 * max(reference_epsilon, 1e-6))
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # log(1 - q) at q = 1 inside Opacus
        warnings.simplefilter("ignore", UserWarning)  # its RDP domain bound's order warnings
        width = 2 * compute_safe_domain_size(prvs, counts, eps_error=eps_error,
                                             delta_error=delta_error)
        spread = math.sqrt(steps * math.log(12 / delta_error) / 2)
        # Opacus' grid: mesh = eps_error / spread over a domain of this width (+ margin).
        needed = width * spread / max_points * 1.05
        eps_error = max(eps_error, needed)
        limit = max(_PRV_MAX_ERROR, 0.01 * reference_epsilon)
        if eps_error > limit:
            raise AccountantLimitError(
                f"PRV accountant: the history {list(history)!r} needs an error above "
                f"{limit:.3g} in epsilon ({eps_error:.3g}) to fit {max_points} "
                "grid points")
        acc = PRVAccountant()
        acc.history = [(z, q, c) for z, q, c in history]
        try:
            eps = float(acc.get_epsilon(delta=delta, eps_error=eps_error))
        except (ValueError, ArithmeticError, RuntimeError) as exc:
            raise DPError(f"PRV accountant failed for history {acc.history!r}: {exc}") from exc
    if not math.isfinite(eps):  # its domain (from an RDP bound) did not reach this epsilon
        raise AccountantLimitError(f"PRV accountant returned epsilon {eps!r} for history "
                                   f"{acc.history!r}: its grid does not reach that far")
    return max(eps, 0.0), eps_error
