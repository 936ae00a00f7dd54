"""Recompute an epsilon with an implementation other than the one that produced it.

An audit should not trust one piece of code for its headline number. ``recheck`` takes a history,
the accountant that produced the claimed epsilon, and answers with a second computation:

- our RDP of Gaussian histories -> Google's ``dp_accounting`` RDP accountant (same orders);
- dp_accounting's PLD (or our closed form for unsampled Gaussians) -> Opacus' PRV for sampled
  histories (asked for an error of 0.2% of the claim), dp_accounting's PLD for unsampled ones;
- Opacus' PRV -> dp_accounting's PLD;
- our RDP of the distributed discrete Gaussian (KLS 2021 Prop. 14; Zhu-Wang when sampled) ->
  the same formulas written again here in 50-digit ``mpmath``, from the paper, at the same orders.

``CrossCheck.ok`` is False when the two differ by more than ``TOLERANCE`` (1%) relative to the
claim. Histories no second implementation covers (replace-one with sampling) say so in ``note``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from dp import tight
from dp.accounting import DEFAULT_RDP_ORDERS, Accountant, AccountantKind, coerce_kind
from dp.errors import AccountantLimitError
from dp.events import (Adjacency, ComposedEvent, DistributedDiscreteGaussianEvent, DPEvent,
                       PoissonSampledEvent, UnitOfPrivacy, check_delta)

__all__ = ["TOLERANCE", "CrossCheck", "recheck"]

TOLERANCE = 0.01


@dataclass(frozen=True)
class CrossCheck:
    claimed: float
    epsilon: float | None  # the second implementation's value (None: not checked)
    implementation: str
    relative_difference: float | None
    ok: bool | None  # None when not checked
    note: str | None = None

    def as_dict(self) -> dict:
        return {"claimed": self.claimed, "recomputed": self.epsilon,
                "implementation": self.implementation,
                "relative_difference": self.relative_difference, "ok": self.ok, "note": self.note}


def _result(claimed: float, eps: float | None, impl: str, note: str | None = None) -> CrossCheck:
    if eps is None:
        return CrossCheck(claimed, None, impl, None, None, note)
    rel = abs(eps - claimed) / max(claimed, 1e-12)
    return CrossCheck(claimed, eps, impl, rel, rel <= TOLERANCE, note)


def _dp_accounting_rdp(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    import dp_accounting as dpa  # noqa: PLC0415 - optional heavy import

    acc = dpa.rdp.RdpAccountant(orders=list(DEFAULT_RDP_ORDERS))
    for z, q, count in history:
        ev = dpa.GaussianDpEvent(z) if q == 1.0 else dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z))
        acc.compose(dpa.SelfComposedDpEvent(ev, count))
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # its fractional-order series warns and skips a few orders
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(acc.get_epsilon(delta))
    finally:
        absl.setLevel(level)


# --- the DDG again, in mpmath, from the paper -------------------------------------------------


class _MpDDG:
    """KLS 2021 (arXiv:2102.06387v4) Prop. 14 / Eq. (17) for one event, in mpmath."""

    def __init__(self, event: DistributedDiscreteGaussianEvent, mp, scale: int = 1) -> None:
        self.mp = mp
        d = mp.mpf(event.dim)
        l2 = scale * mp.mpf(event.l2_sensitivity)
        l1 = min(l2 * l2, mp.sqrt(d) * l2)
        if event.l1_sensitivity is not None:
            l1 = min(l1, scale * mp.mpf(event.l1_sensitivity))
        sig = mp.mpf(event.sigma)
        s_c = sig / mp.sqrt(event.num_clients)
        self.tau = 10 * mp.fsum(mp.exp(-2 * mp.pi ** 2 * s_c ** 2 * k / (k + 1))
                                for k in range(1, event.num_clients))
        self.d, self.s2, self.s1 = d, l2 / sig, l1 / sig

    def rdp(self, alpha):
        mp, d, tau, s2, s1 = self.mp, self.d, self.tau, self.s2, self.s1
        return min(alpha / 2 * s2 ** 2 + tau * d,
                   alpha / 2 * (s2 ** 2 + 2 * s1 * tau + tau ** 2 * d),
                   alpha / 2 * (s2 + mp.sqrt(d) * tau) ** 2)

    def zhu_wang(self, q, alpha: int):
        """Zhu & Wang (ICML 2019) Poisson-subsampled RDP upper bound at integer ``alpha``."""
        mp = self.mp
        q = mp.mpf(q)
        total = (1 - q) ** (alpha - 1) * (alpha * q - q + 1)
        total += mp.binomial(alpha, 2) * q ** 2 * (1 - q) ** (alpha - 2) * mp.exp(self.rdp(2))
        for ell in range(3, alpha + 1):
            total += 3 * mp.binomial(alpha, ell) * q ** ell * (1 - q) ** (alpha - ell) * mp.exp(
                (ell - 1) * self.rdp(ell))
        return mp.log(total) / (alpha - 1)


#: Sampled DDG histories are checked at orders up to this (the Zhu-Wang sum is O(order) in
#: mpmath); the optimum order of any practical epsilon lies far below.
_MP_SAMPLED_MAX_ORDER = 128


def _mp_ddg_epsilon(atoms, delta: float, replace_one: bool) -> float:
    import mpmath  # noqa: PLC0415 - a test/audit dependency

    if replace_one and any(q < 1 for _, q, _ in atoms):
        raise AccountantLimitError("replace-one with sampling: no second implementation")
    with mpmath.workdps(50):
        mp = mpmath.mp
        models = [(_MpDDG(base, mp, 2 if replace_one else 1), q, count) for base, q, count in atoms]
        sampled = any(q < 1 for _, q, _ in atoms)
        best = None
        for a in DEFAULT_RDP_ORDERS:
            if sampled and a > _MP_SAMPLED_MAX_ORDER:
                continue
            alpha = mp.mpf(a)
            rdp = mp.mpf(0)
            for model, q, count in models:
                per = model.rdp(alpha)
                if q < 1:
                    per = min(per, model.zhu_wang(q, max(2, math.ceil(a))))
                rdp += count * per
            eps = rdp + mp.log((alpha - 1) / alpha) - (mp.log(delta) + mp.log(alpha)) / (alpha - 1)
            best = eps if best is None or eps < best else best
        return max(float(best), 0.0)


def _atoms(events: Sequence[DPEvent]):
    out = []

    def walk(e, count):
        if isinstance(e, ComposedEvent):
            walk(e.event, count * e.count)
        elif isinstance(e, PoissonSampledEvent):
            out.append((e.event, e.sampling_rate, count))
        else:
            out.append((e, 1.0, count))

    for e in events:
        walk(e, 1)
    return out


def recheck(events: Sequence[DPEvent], delta: float, *, claimed: float,
            produced_by: AccountantKind | str, unit: UnitOfPrivacy | str = UnitOfPrivacy.EXAMPLE,
            adjacency: Adjacency | str | None = None, exact: bool = False) -> CrossCheck:
    """A second epsilon for ``events`` at ``delta``, by another implementation than
    ``produced_by`` (``exact``: the claim came from the closed form of unsampled Gaussians)."""
    delta = check_delta(delta)
    kind = coerce_kind(produced_by)
    acc = Accountant(AccountantKind.RDP, unit=unit, adjacency=adjacency)
    for e in events:
        acc.compose(e)
    replace = acc.adjacency is Adjacency.REPLACE_ONE
    if not events:
        return _result(claimed, 0.0, "empty history")
    history = acc.gaussian_history()
    try:
        if history is None:
            if kind is not AccountantKind.RDP:  # pragma: no cover - DDG is RDP only
                return _result(claimed, None, "none", "a DDG epsilon comes from RDP only")
            return _result(claimed, _mp_ddg_epsilon(_atoms(events), delta, replace),
                           "KLS 2021 Prop. 14 (and Zhu-Wang) re-implemented in 50-digit mpmath")
        if replace:
            if any(q < 1 for _, q, _ in history):
                return _result(claimed, None, "none",
                               "replace-one with Poisson sampling: no second implementation")
            history = [(z / 2, q, c) for z, q, c in history]
        if kind is AccountantKind.RDP:
            return _result(claimed, _dp_accounting_rdp(history, delta), "dp_accounting RDP")
        sampled = any(q < 1 for _, q, _ in history)
        if kind is AccountantKind.PLD and sampled and not exact:
            eps, err = tight.prv_epsilon(history, delta, reference_epsilon=0.2 * claimed)
            return _result(claimed, eps, f"Opacus PRV (eps_error {err:.3g})")
        eps, interval = tight.pld_epsilon(history, delta)
        return _result(claimed, eps, f"dp_accounting PLD (grid {interval:.3g})")
    except AccountantLimitError as exc:
        return _result(claimed, None, "none", f"second implementation out of its limits: {exc}")
