"""Privacy accountants: compose events, report epsilon at delta.

Two kinds (``AccountantKind``):

- RDP: our own math, pure functions below.
  * Poisson-subsampled Gaussian: Mironov, Talwar, Zhang (2019), "Renyi Differential Privacy of
    the Sampled Gaussian Mechanism", arXiv:1908.10530, Sec. 3.3: the integer-order binomial sum
    and, for fractional orders, the two convergent series split at z0. Unsampled (q = 1):
    alpha / (2 z^2) (Mironov 2017, "Renyi Differential Privacy", Prop. 7).
  * Distributed discrete Gaussian (DDG): Kairouz, Liu, Steinke (ICML 2021, arXiv:2102.06387v4),
    Proposition 14 / Eq. (17): for all alpha >= 1 the sum of n discrete Gaussians satisfies
    RDP eps(alpha) = min(alpha/2 * s2^2 + tau*d,
                         alpha/2 * (s2^2 + 2*s1*tau + tau^2*d),
                         alpha/2 * (s2 + sqrt(d)*tau)^2)
    with s2 = Delta_2 / sigma, s1 = Delta_1 / sigma (sigma of the whole sum) and
    tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma_client^2 k / (k+1)).
    The paper gives no subsampled bound for the DDG. When it is Poisson-sampled we use the
    general upper bound for Poisson-subsampled RDP mechanisms of Zhu and Wang (ICML 2019,
    "Poisson Subsampled Renyi Differential Privacy"; the bound with the factor 3), which holds
    for any mechanism given its RDP at integer orders; this is also what the DDG authors' own
    accounting code does. It is an upper bound at integer orders; at a fractional order we use
    the value at the next integer (RDP is non-decreasing in the order), and we never report
    more than the unsampled bound.
  * Conversion to (eps, delta): the improved bound of Balle et al. (AISTATS 2020, "Hypothesis
    Testing Interpretations and Renyi Differential Privacy", Thm. 21) and Canonne, Kamath,
    Steinke (NeurIPS 2020, Prop. 12): eps = rdp + log((a-1)/a) - (log delta + log a)/(a-1),
    minimised over the orders a.
- PLD: Google's ``dp_accounting`` privacy loss distributions, and PRV: Opacus's PRVAccountant
  (Gopi, Lee, Wutschitz, NeurIPS 2021), for Gaussian and Poisson-sampled Gaussian histories, both
  numerically tight upper bounds with a bounded grid (``dp.tight``); an unsampled Gaussian history
  is computed in closed form instead (exact). The smaller of that and the RDP bound is reported
  (both are upper bounds). A history these cannot take (a DDG event, replace-one with sampling)
  or one too large for the grid limit (``AccountantLimitError``) is reported with RDP, and
  ``EpsilonResult.note`` says why. dp_accounting and Opacus are imported only on these paths.

Neighbouring relation (``Adjacency``). Every epsilon is for one relation. Gaussian events (noise
added centrally, or Opacus' DP-SGD) are proved for add-remove and zero-out alike (the sum moves
by at most the clip norm and the noise is the same). REPLACE_ONE doubles the sensitivity; with
Poisson sampling we then use the joint convexity of exp((a-1) D_a) (an f-divergence, Csiszar
1967): the pair is a q-mixture of the doubled-sensitivity pair with a common part, so
exp((a-1) eps'(a)) <= 1 - q + q exp((a-1) eps_2C(a)). The DDG sum is proved for zero-out only
(KLS 2021: the client stays and adds its noise share); add-remove would also remove that share
(and, with a fixed cohort, bring in another client), which no analysis here covers, so an
accountant refuses it (``DPConfigError``).
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from scipy import special

from dp.errors import AccountantLimitError, DPConfigError, DPError
from dp.events import (
    Adjacency,
    ComposedEvent,
    DistributedDiscreteGaussianEvent,
    DPEvent,
    GaussianEvent,
    PoissonSampledEvent,
    UnitOfPrivacy,
    check_count,
    check_delta,
    check_positive,
    check_sampling_rate,
    coerce_adjacency,
    event_from_dict,
)

__all__ = [
    "AccountantKind",
    "Accountant",
    "coerce_kind",
    "coerce_unit",
    "default_adjacency",
    "EpsilonResult",
    "DEFAULT_RDP_ORDERS",
    "compute_epsilon",
    "privacy_spent",
    "rdp_poisson_gaussian",
    "rdp_ddg",
    "rdp_poisson_subsampled_general",
    "rdp_to_epsilon",
]


class AccountantKind(enum.Enum):
    RDP = "rdp"
    PRV = "prv"
    PLD = "pld"


# Orders near 1 serve large epsilons, large orders small ones; fractional orders matter most
# between 1 and 11 (MTZ 2019).
DEFAULT_RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10 for x in range(1, 100)]
    + [float(a) for a in range(11, 64)]
    + [72.0, 80.0, 96.0, 128.0, 192.0, 256.0, 384.0, 512.0, 1024.0]
)

_STATE_VERSION = 1
_SERIES_LOG_CUTOFF = -30.0  # stop the series below e^-30 (A_alpha >= 1); the tail is bounded
_SERIES_MAX_TERMS = 10_000_000


# --- RDP of the Poisson-subsampled Gaussian (Mironov, Talwar, Zhang 2019) ----------------------


def _log_abs_binom(alpha: float, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log|C(alpha, k)| and its sign, for real alpha > 0 and integers k >= 0."""
    x = alpha - k + 1.0
    log_abs = special.gammaln(alpha + 1.0) - special.gammaln(k + 1.0) - special.gammaln(x)
    return log_abs, special.gammasgn(x)


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    """log A_alpha for integer alpha: sum_k C(a,k) (1-q)^(a-k) q^k exp((k^2-k)/(2 sigma^2))."""
    k = np.arange(alpha + 1, dtype=np.float64)
    log_c, _ = _log_abs_binom(float(alpha), k)
    terms = log_c + k * math.log(q) + (alpha - k) * math.log1p(-q) + (k * k - k) / (2 * sigma**2)
    return float(special.logsumexp(terms))


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    """log A_alpha for fractional alpha (MTZ 2019, Sec. 3.3), as an upper bound.

    A_alpha = E_{z~N(0,s^2)}[((1-q) + q exp((2z-1)/(2 s^2)))^alpha]. Split the integral at
    z0 = s^2 log(1/q - 1) + 1/2, where the two summands are equal, and expand by the generalized
    binomial theorem in the small one. Both series alternate in sign with non-increasing terms
    once k > alpha, so truncating one after term k is off by less than term k+1: we add the
    first omitted term of each series, which makes the result an upper bound.
    """
    z0 = sigma**2 * math.log(1.0 / q - 1.0) + 0.5
    log_q, log_1q = math.log(q), math.log1p(-q)
    logs: list[np.ndarray] = []
    signs: list[np.ndarray] = []
    start, size = 0, 256
    while True:
        k = np.arange(start, start + size, dtype=np.float64)
        log_c, sign = _log_abs_binom(alpha, k)
        m = alpha - k
        # z < z0: C(a,k) q^k (1-q)^(a-k) e^{(k^2-k)/2s^2} P[N(k, s^2) < z0]
        t0 = log_c + k * log_q + m * log_1q + (k * k - k) / (2 * sigma**2)
        t0 = t0 + special.log_ndtr((z0 - k) / sigma)
        # z > z0: C(a,k) q^(a-k) (1-q)^k e^{(m^2-m)/2s^2} P[N(m, s^2) > z0], m = a - k
        t1 = log_c + m * log_q + k * log_1q + (m * m - m) / (2 * sigma**2)
        t1 = t1 + special.log_ndtr((m - z0) / sigma)
        logs += [t0, t1]
        signs += [sign, sign]
        start += size
        tail_max = max(float(t0[-1]), float(t1[-1]))
        if start > alpha + 1 and max(float(t0.max()), float(t1.max())) < _SERIES_LOG_CUTOFF:
            break
        if start >= _SERIES_MAX_TERMS:
            raise DPError(
                f"RDP series did not converge for q={q!r}, noise_multiplier={sigma!r}, "
                f"order={alpha!r}"
            )
        size *= 2
    # Upper bound: add the first omitted term of each series (bounded by the last kept one).
    logs.append(np.array([tail_max + math.log(2.0)]))
    signs.append(np.array([1.0]))
    log_a, sign_a = special.logsumexp(
        np.concatenate(logs), b=np.concatenate(signs), return_sign=True
    )
    if sign_a <= 0:  # cannot happen for a divergence; guard against silent nonsense
        raise DPError(f"RDP series cancelled to a non-positive sum at order {alpha!r}")
    return float(log_a)


@functools.lru_cache(maxsize=512)
def _rdp_poisson_gaussian_cached(q: float, sigma: float, orders: tuple[float, ...]) -> np.ndarray:
    a = np.asarray(orders, dtype=np.float64)
    if q == 1.0:
        out = a / (2 * sigma**2)
    else:
        out = np.empty_like(a)
        for i, alpha in enumerate(orders):  # a loop over orders, not over vector coordinates
            if float(alpha).is_integer():
                log_a = _log_a_int(q, sigma, int(alpha))
            else:
                log_a = _log_a_frac(q, sigma, float(alpha))
            out[i] = max(log_a, 0.0) / (alpha - 1)
    out.setflags(write=False)
    return out


def _check_orders(orders: Iterable[float]) -> tuple[float, ...]:
    try:
        out = tuple(float(a) for a in orders)
    except (TypeError, ValueError):
        raise DPConfigError(f"orders must be a sequence of numbers > 1, got {orders!r}") from None
    if not out or any(not math.isfinite(a) or a <= 1 for a in out):
        raise DPConfigError(
            f"orders must be a non-empty sequence of finite numbers > 1, got {orders!r}"
        )
    return out


def rdp_poisson_gaussian(
    *, sampling_rate: float, noise_multiplier: float, orders: Iterable[float] = DEFAULT_RDP_ORDERS
) -> np.ndarray:
    """RDP of one step of the Poisson-subsampled Gaussian at each order (MTZ 2019)."""
    q = check_sampling_rate(sampling_rate)
    z = check_positive("noise_multiplier", noise_multiplier)
    return _rdp_poisson_gaussian_cached(q, z, _check_orders(orders))


# --- RDP of the distributed discrete Gaussian (Kairouz, Liu, Steinke 2021) ---------------------


def _ddg_tau(client_sigma: float, num_clients: int) -> float:
    """tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k/(k+1)) (KLS 2021, Theorem 1)."""
    if num_clients == 1:
        return 0.0
    k = np.arange(1, num_clients, dtype=np.float64)
    return float(10.0 * np.sum(np.exp(-2.0 * math.pi**2 * client_sigma**2 * k / (k + 1.0))))


def _ddg_rdp_unsampled(event: DistributedDiscreteGaussianEvent, a: np.ndarray) -> np.ndarray:
    d = event.dim
    l2 = event.l2_sensitivity
    # Integer vectors have |v_i| <= v_i^2, so ||v||_1 <= ||v||_2^2; and ||v||_1 <= sqrt(d)||v||_2.
    l1 = min(l2 * l2, math.sqrt(d) * l2)
    if event.l1_sensitivity is not None:
        l1 = min(l1, event.l1_sensitivity)
    s2 = l2 / event.sigma
    s1 = l1 / event.sigma
    tau = _ddg_tau(event.client_sigma, event.num_clients)
    # Proposition 14 / Eq. (17) of arXiv:2102.06387v4.
    term1 = a / 2 * s2**2 + tau * d
    term2 = a / 2 * (s2**2 + 2 * s1 * tau + tau**2 * d)
    term3 = a / 2 * (s2 + math.sqrt(d) * tau) ** 2
    return np.minimum(np.minimum(term1, term2), term3)


def rdp_poisson_subsampled_general(
    *, sampling_rate: float, base_rdp: np.ndarray, alpha: int
) -> float:
    """Zhu & Wang (ICML 2019) general upper bound on Poisson-subsampled RDP at integer alpha.

    ``base_rdp[l]`` is the base mechanism's RDP at integer order l (entries 0 and 1 unused). The
    bound is log((1-q)^(a-1)(aq - q + 1) + C(a,2) q^2 (1-q)^(a-2) e^{eps(2)}
    + 3 sum_{l=3}^{a} C(a,l) q^l (1-q)^(a-l) e^{(l-1) eps(l)}) / (a - 1).
    """
    q = check_sampling_rate(sampling_rate)
    alpha = check_count(alpha, "alpha", minimum=2)
    base_rdp = np.asarray(base_rdp, dtype=np.float64)
    if base_rdp.ndim != 1 or base_rdp.size <= alpha or np.any(np.isnan(base_rdp[2 : alpha + 1])):
        raise DPConfigError(
            f"base_rdp must list the RDP at orders 0..{alpha} (at least), got shape "
            f"{base_rdp.shape}"
        )
    if q == 1.0:
        return float(base_rdp[alpha])
    log_q, log_1q = math.log(q), math.log1p(-q)
    ell = np.arange(2, alpha + 1, dtype=np.float64)
    log_c, _ = _log_abs_binom(float(alpha), ell)
    terms = log_c + ell * log_q + (alpha - ell) * log_1q + (ell - 1) * base_rdp[2 : alpha + 1]
    weights = np.full(ell.shape, 3.0)
    weights[0] = 1.0
    first = (alpha - 1) * log_1q + math.log(alpha * q - q + 1)
    log_a = special.logsumexp(np.concatenate([[first], terms]), b=np.concatenate([[1.0], weights]))
    return float(log_a) / (alpha - 1)


@functools.lru_cache(maxsize=256)
def _rdp_ddg_cached(
    event: DistributedDiscreteGaussianEvent, q: float, orders: tuple[float, ...]
) -> np.ndarray:
    a = np.asarray(orders, dtype=np.float64)
    out = _ddg_rdp_unsampled(event, a)
    if q < 1.0:
        top = max(2, math.ceil(max(orders)))
        base = np.zeros(top + 1)
        base[2:] = _ddg_rdp_unsampled(event, np.arange(2, top + 1, dtype=np.float64))
        sampled = {
            n: rdp_poisson_subsampled_general(sampling_rate=q, base_rdp=base, alpha=n)
            for n in sorted({max(2, math.ceil(x)) for x in orders})
        }
        # RDP is non-decreasing in the order, so the bound at ceil(alpha) covers alpha.
        out = np.minimum(out, np.array([sampled[max(2, math.ceil(x))] for x in orders]))
    out.setflags(write=False)
    return out


def rdp_ddg(
    event: DistributedDiscreteGaussianEvent,
    *,
    sampling_rate: float = 1.0,
    orders: Iterable[float] = DEFAULT_RDP_ORDERS,
) -> np.ndarray:
    """RDP of one DDG sum (KLS 2021 Prop. 14), optionally Poisson-sampled (Zhu & Wang 2019)."""
    if not isinstance(event, DistributedDiscreteGaussianEvent):
        raise DPConfigError(f"event must be a DistributedDiscreteGaussianEvent, got {event!r}")
    return _rdp_ddg_cached(event, check_sampling_rate(sampling_rate), _check_orders(orders))


# --- conversion ------------------------------------------------------------------------------


def rdp_to_epsilon(
    orders: Iterable[float], rdp: Iterable[float], delta: float, *, improved: bool = True
) -> tuple[float, float]:
    """(epsilon, best order) from RDP values at the given orders.

    ``improved=True``: Balle et al. 2020 Thm. 21 / Canonne-Kamath-Steinke 2020 Prop. 12.
    ``improved=False``: the classic eps = rdp + log(1/delta)/(a-1) (Mironov 2017, Prop. 3), which
    is what the moments accountant of Abadi et al. (2016) used; kept for comparisons.
    """
    delta = check_delta(delta)
    a = np.asarray(_check_orders(orders), dtype=np.float64)
    r = np.asarray(list(rdp), dtype=np.float64)
    if r.shape != a.shape:
        raise DPConfigError(f"rdp has {r.size} values but there are {a.size} orders")
    if np.any(np.isnan(r)) or np.any(r < 0):
        raise DPConfigError(f"rdp values must be >= 0, got {r!r}")
    if improved:
        eps = r + np.log1p(-1.0 / a) - (math.log(delta) + np.log(a)) / (a - 1)
    else:
        eps = r - math.log(delta) / (a - 1)
    i = int(np.argmin(eps))
    return max(float(eps[i]), 0.0), float(a[i])


# --- the accountant --------------------------------------------------------------------------


@dataclass(frozen=True)
class EpsilonResult:
    """A guarantee as it should be reported: epsilon with its delta, accountant and unit."""

    epsilon: float
    delta: float
    accountant: AccountantKind  # the accountant that produced epsilon
    requested: AccountantKind  # the accountant that was asked
    unit: UnitOfPrivacy
    order: float | None = None  # best RDP order, for RDP results
    note: str | None = None  # e.g. why PRV fell back to RDP
    adjacency: Adjacency | None = None  # the neighbouring relation epsilon is proved for


# A flattened piece of history: (base event, sampling rate, count).
_Atom = tuple[DPEvent, float, int]


def _flatten(event: Any, count: int) -> list[_Atom]:
    if isinstance(event, ComposedEvent):
        return _flatten(event.event, count * event.count)
    if isinstance(event, PoissonSampledEvent):
        return [(event.event, event.sampling_rate, count)]
    if isinstance(event, (GaussianEvent, DistributedDiscreteGaussianEvent)):
        return [(event, 1.0, count)]
    raise DPConfigError(f"cannot account for event {event!r}: not a known DPEvent")


def _doubled(base: DPEvent) -> DPEvent:
    """The event with its sensitivity doubled (what replace-one moves the sum by)."""
    if isinstance(base, GaussianEvent):
        return GaussianEvent(base.noise_multiplier / 2.0)
    l1 = None if base.l1_sensitivity is None else 2.0 * base.l1_sensitivity
    return DistributedDiscreteGaussianEvent(
        l2_sensitivity=2.0 * base.l2_sensitivity, sigma=base.sigma, dim=base.dim,
        num_clients=base.num_clients, l1_sensitivity=l1)


def _unsampled_rdp(base: DPEvent, orders: tuple[float, ...]) -> np.ndarray:
    if isinstance(base, GaussianEvent):
        return _rdp_poisson_gaussian_cached(1.0, base.noise_multiplier, orders)
    return _rdp_ddg_cached(base, 1.0, orders)


def _atom_rdp(atom: _Atom, orders: tuple[float, ...],
              adjacency: Adjacency = Adjacency.ZERO_OUT) -> np.ndarray:
    base, q, count = atom
    if adjacency is Adjacency.ADD_REMOVE and isinstance(base, DistributedDiscreteGaussianEvent):
        raise DPConfigError(
            "adjacency 'add-remove' is not covered for the distributed discrete Gaussian: a "
            "departing client takes its noise share with it (the sum then has one share fewer) "
            "and, with a fixed cohort, another client takes its place; no analysis of either is "
            "implemented here. Use 'zero-out' or 'replace-one'")
    if adjacency is Adjacency.REPLACE_ONE:
        per = _unsampled_rdp(_doubled(base), orders)
        if q < 1.0:  # joint convexity of exp((a-1) D_a): see the module docstring
            a = np.asarray(orders, dtype=np.float64)
            per = np.logaddexp(math.log1p(-q), math.log(q) + (a - 1.0) * per) / (a - 1.0)
    elif isinstance(base, GaussianEvent):
        per = _rdp_poisson_gaussian_cached(q, base.noise_multiplier, orders)
    else:
        per = _rdp_ddg_cached(base, q, orders)
    return count * per


def coerce_kind(kind: Any) -> AccountantKind:
    """An ``AccountantKind`` from itself or its value ("rdp", "prv", "pld")."""
    return _coerce_kind(kind)


def coerce_unit(unit: Any) -> UnitOfPrivacy:
    """A ``UnitOfPrivacy`` from itself or its value ("example", "client")."""
    return _coerce_unit(unit)


def default_adjacency(unit: UnitOfPrivacy | str) -> Adjacency:
    """Add-remove for examples (what DP-SGD's analysis proves), zero-out for clients (DDG)."""
    return Adjacency.ADD_REMOVE if _coerce_unit(unit) is UnitOfPrivacy.EXAMPLE \
        else Adjacency.ZERO_OUT


def _coerce_kind(kind: Any) -> AccountantKind:
    if isinstance(kind, AccountantKind):
        return kind
    try:
        return AccountantKind(kind)
    except ValueError:
        choices = [k.value for k in AccountantKind]
        raise DPConfigError(f"accountant must be one of {choices}, got {kind!r}") from None


def _coerce_unit(unit: Any) -> UnitOfPrivacy:
    if isinstance(unit, UnitOfPrivacy):
        return unit
    try:
        return UnitOfPrivacy(unit)
    except ValueError:
        choices = [u.value for u in UnitOfPrivacy]
        raise DPConfigError(f"unit must be one of {choices}, got {unit!r}") from None


class Accountant:
    """Composes events and reports (epsilon, delta), with history and a JSON-able state.

    ``compose`` checks the whole event (and that it can be accounted for) before it changes
    anything. History is kept as ``ComposedEvent``s; consecutive identical events are merged.
    """

    def __init__(
        self,
        kind: AccountantKind | str = AccountantKind.RDP,
        *,
        unit: UnitOfPrivacy | str = UnitOfPrivacy.EXAMPLE,
        orders: Iterable[float] | None = None,
        adjacency: Adjacency | str | None = None,
    ) -> None:
        self._kind = _coerce_kind(kind)
        self._unit = _coerce_unit(unit)
        self._orders = DEFAULT_RDP_ORDERS if orders is None else _check_orders(orders)
        self._adjacency = (default_adjacency(self._unit) if adjacency is None
                           else coerce_adjacency(adjacency))
        self._history: list[ComposedEvent] = []

    @property
    def kind(self) -> AccountantKind:
        return self._kind

    @property
    def unit(self) -> UnitOfPrivacy:
        return self._unit

    @property
    def orders(self) -> tuple[float, ...]:
        return self._orders

    @property
    def adjacency(self) -> Adjacency:
        """The neighbouring relation this accountant's epsilon is for."""
        return self._adjacency

    @property
    def history(self) -> tuple[ComposedEvent, ...]:
        return tuple(self._history)

    def __len__(self) -> int:
        return len(self._history)

    def compose(self, event: DPEvent, *, count: int = 1) -> None:
        """Record ``event`` run ``count`` times. Validates first; on error nothing changes."""
        count = check_count(count)
        for atom in _flatten(event, count):
            # raises before any state change if unaccountable
            _atom_rdp(atom, self._orders, self._adjacency)
        last = self._history[-1] if self._history else None
        if last is not None and last.event == event:
            self._history[-1] = ComposedEvent(event, last.count + count)
        else:
            self._history.append(ComposedEvent(event, count))

    def copy(self) -> "Accountant":
        other = Accountant(self._kind, unit=self._unit, orders=self._orders,
                           adjacency=self._adjacency)
        other._history = list(self._history)
        return other

    def _atoms(self) -> list[_Atom]:
        atoms: list[_Atom] = []
        for entry in self._history:
            atoms += _flatten(entry.event, entry.count)
        return atoms

    def rdp(self, adjacency: Adjacency | str | None = None) -> np.ndarray:
        """Total RDP at ``self.orders`` (any kind of accountant can report it)."""
        adj = self._adjacency if adjacency is None else coerce_adjacency(adjacency)
        total = np.zeros(len(self._orders))
        for atom in self._atoms():
            total = total + _atom_rdp(atom, self._orders, adj)
        return total

    def gaussian_history(self) -> list[tuple[float, float, int]] | None:
        """(noise multiplier, sampling rate, count) per distinct Gaussian step, merged; None
        when the history holds a DDG event."""
        merged: dict[tuple[float, float], int] = {}
        for base, q, count in self._atoms():
            if not isinstance(base, GaussianEvent):
                return None
            key = (base.noise_multiplier, q)
            merged[key] = merged.get(key, 0) + count
        return [(z, q, c) for (z, q), c in merged.items()]

    def get_privacy_spent(
        self, delta: float, *, adjacency: Adjacency | str | None = None
    ) -> EpsilonResult:
        """epsilon at ``delta`` with the accountant that produced it.

        ``adjacency`` (default: the accountant's) asks for the epsilon under another relation,
        e.g. replace-one beside the zero-out epsilon a run promises.
        """
        delta = check_delta(delta)
        adj = self._adjacency if adjacency is None else coerce_adjacency(adjacency)
        atoms = self._atoms()
        common = dict(delta=delta, requested=self._kind, unit=self._unit, adjacency=adj)
        if not atoms:
            return EpsilonResult(epsilon=0.0, accountant=self._kind, **common)
        eps, order = rdp_to_epsilon(self._orders, self.rdp(adj), delta)
        note = None
        if self._kind is not AccountantKind.RDP:
            tight, note = self._tight_epsilon(delta, adj, eps)
            if tight is not None and tight <= eps:
                return EpsilonResult(epsilon=tight, accountant=self._kind, note=note, **common)
            if tight is not None:
                # Both are upper bounds; the tight one carries its discretisation error, which
                # can exceed RDP's slack when epsilon is tiny.
                note = f"RDP bound was tighter than the {self._kind.value.upper()} upper bound " \
                       f"({tight:.6g})"
        return EpsilonResult(
            epsilon=eps, accountant=AccountantKind.RDP, order=order, note=note, **common
        )

    def _tight_epsilon(self, delta: float, adj: Adjacency, rdp_eps: float
                       ) -> tuple[float | None, str | None]:
        """(PLD/PRV epsilon or None, note); None with the note saying why RDP is used."""
        from dp import tight  # noqa: PLC0415 - keeps scipy.optimize off the import path

        name = self._kind.value.upper()
        history = self.gaussian_history()
        if history is None:
            return None, (f"{name} accountant fell back to RDP: the history holds a distributed "
                          "discrete Gaussian event, which only the RDP analysis of Kairouz et "
                          "al. (2021) covers")
        if adj is Adjacency.REPLACE_ONE:
            if any(q < 1.0 for _, q, _ in history):
                return None, (f"{name} accountant fell back to RDP: replace-one with Poisson "
                              "sampling is bounded here only through RDP (joint convexity)")
            history = [(z / 2.0, q, c) for z, q, c in history]
        try:
            if all(q == 1.0 for _, q, _ in history):
                eps = tight.gaussian_epsilon(tight.gaussian_mu(history), delta)
                return eps, ("unsampled Gaussian history: exact closed form (Balle and Wang "
                             "2018) of the composed Gaussian (Dong, Roth, Su 2022)")
            if self._kind is AccountantKind.PLD:
                eps, interval = tight.pld_epsilon(history, delta)
                return eps, f"dp_accounting PLD, pessimistic grid {interval:.3g}"
            eps, err = tight.prv_epsilon(history, delta, reference_epsilon=rdp_eps)
            return eps, f"Opacus PRV upper bound with eps_error {err:.3g}"
        except AccountantLimitError as exc:
            return None, f"{name} accountant fell back to RDP: {exc}"

    def get_epsilon(self, delta: float, *, adjacency: Adjacency | str | None = None) -> float:
        return self.get_privacy_spent(delta, adjacency=adjacency).epsilon

    # --- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-able state: kind, unit, orders and the history of events."""
        return {
            "version": _STATE_VERSION,
            "kind": self._kind.value,
            "unit": self._unit.value,
            "orders": list(self._orders),
            "adjacency": self._adjacency.value,
            "history": [{"event": e.event.to_dict(), "count": e.count} for e in self._history],
        }

    def load_state_dict(self, state: Any) -> None:
        """Replace the history (and unit, orders) by ``state``; validates all of it first."""
        if not isinstance(state, dict):
            raise DPConfigError(f"accountant state must be a dict, got {state!r}")
        if state.get("version") != _STATE_VERSION:
            raise DPConfigError(
                f"accountant state version must be {_STATE_VERSION}, got {state.get('version')!r}"
            )
        kind = _coerce_kind(state.get("kind"))
        if kind is not self._kind:
            raise DPConfigError(
                f"accountant state is for kind {kind.value!r}, this accountant is "
                f"{self._kind.value!r}"
            )
        unit = _coerce_unit(state.get("unit"))
        orders = _check_orders(state.get("orders", ()))
        adjacency = (default_adjacency(unit) if state.get("adjacency") is None
                     else coerce_adjacency(state["adjacency"]))
        raw = state.get("history")
        if not isinstance(raw, list):
            raise DPConfigError(f"accountant state history must be a list, got {raw!r}")
        history = []
        for item in raw:
            if not isinstance(item, dict) or set(item) != {"event", "count"}:
                raise DPConfigError(f"history entries need keys event and count, got {item!r}")
            entry = ComposedEvent(event_from_dict(item["event"]), item["count"])
            for atom in _flatten(entry.event, entry.count):
                _atom_rdp(atom, orders, adjacency)
            history.append(entry)
        self._unit, self._orders, self._history = unit, orders, history
        self._adjacency = adjacency

    @classmethod
    def from_state_dict(cls, state: Any) -> "Accountant":
        if not isinstance(state, dict):
            raise DPConfigError(f"accountant state must be a dict, got {state!r}")
        acc = cls(_coerce_kind(state.get("kind")))
        acc.load_state_dict(state)
        return acc


def privacy_spent(
    *,
    sampling_rate: float,
    noise_multiplier: float,
    steps: int,
    delta: float,
    accountant: AccountantKind | str = AccountantKind.RDP,
    adjacency: Adjacency | str = Adjacency.ADD_REMOVE,
) -> EpsilonResult:
    """``compute_epsilon`` with the accountant that produced it (and why, after a fallback)."""
    event = PoissonSampledEvent(sampling_rate, GaussianEvent(noise_multiplier))
    steps = check_count(steps, "steps")
    delta = check_delta(delta)
    acc = Accountant(accountant, adjacency=adjacency)
    acc.compose(event, count=steps)
    return acc.get_privacy_spent(delta)


def compute_epsilon(
    *,
    sampling_rate: float,
    noise_multiplier: float,
    steps: int,
    delta: float,
    accountant: AccountantKind | str = AccountantKind.RDP,
    adjacency: Adjacency | str = Adjacency.ADD_REMOVE,
) -> float:
    """epsilon of ``steps`` Poisson-sampled Gaussian steps (DP-SGD or DP-FedAvg rounds)."""
    return privacy_spent(sampling_rate=sampling_rate, noise_multiplier=noise_multiplier, steps=steps,
                         delta=delta, accountant=accountant, adjacency=adjacency).epsilon
