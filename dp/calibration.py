"""Calibration: the least noise that meets a target (epsilon, delta).

Both searches keep the invariant eps(hi) <= target < eps(lo) and narrow the bracket until
hi - lo <= rtol * hi, then return ``hi``: the answer always meets the target, and anything below
``lo`` (at least 1 - rtol of it) does not (epsilon is non-increasing in the noise).

The DDG helpers fix the one sensitivity definition the distributed mechanism and the accountant
share: ``ddg_l2_sensitivity`` bounds the L2 norm of one client's integer vector after clipping to
``l2_clip``, scaling by ``scale`` (integer units per real unit, 1/gamma in the paper), rotating
(orthogonal, so the norm is unchanged; ``dim`` is the padded length) and conditional randomized
rounding with parameter ``beta`` (Kairouz, Liu, Steinke 2021, Sec. 4: the client re-rounds
until the norm bound below holds, so the bound is hard).
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Callable

from dp.errors import DPConfigError
from dp.events import (
    Adjacency,
    DistributedDiscreteGaussianEvent,
    DPEvent,
    GaussianEvent,
    PoissonSampledEvent,
    UnitOfPrivacy,
    check_count,
    check_delta,
    check_positive,
    check_sampling_rate,
)

if TYPE_CHECKING:  # dp.accounting (scipy) is imported where used: a protocol step that calibrates nothing loads no scipy
    from dp.accounting import AccountantKind

__all__ = [
    "DEFAULT_BETA",
    "calibrate_noise_multiplier",
    "calibrate_ddg",
    "ddg_l2_sensitivity",
    "make_ddg_event",
    "dp_sgd_sampling_rate",
    "dp_sgd_steps",
]

# e^{-1/2}: a common choice in DDG implementations; any beta in [0, 1) works (0: plain rounding).
DEFAULT_BETA = math.exp(-0.5)

_Z_MIN, _Z_MAX = 1e-2, 1e4
_DDG_SIGMA_MIN = 0.5  # KLS 2021 Prop. 14 needs a per-client parameter >= 1/2
_DDG_SIGMA_MAX = 1e12


def _check_rtol(rtol: float) -> float:
    rtol = check_positive("rtol", rtol)
    if rtol >= 0.5:
        raise DPConfigError(f"rtol must be < 0.5, got {rtol!r}")
    return rtol


class _AboveCeiling(Exception):
    pass


class _AtFloor(Exception):
    pass


def _search(
    eps_of: Callable[[float], float],
    target: float,
    start: float,
    *,
    factor: float,
    floor: float,
    ceiling: float,
    rtol: float,
) -> float:
    """Smallest x in [floor, ceiling] with eps_of(x) <= target, to rtol (eps_of non-increasing).

    Brackets by steps of ``factor`` from ``start``, then refines: log(eps) is close to linear in
    log(x), so interpolate and probe a quarter tolerance either side of the guess (two calls
    usually close the bracket); a bisection step follows whenever that misses.
    """
    x, e = start, eps_of(start)
    if e > target:
        while e > target:
            lo, e_lo = x, e
            x *= factor
            if x > ceiling:
                raise _AboveCeiling
            e = eps_of(x)
        hi, e_hi = x, e
    else:
        while e <= target:
            hi, e_hi = x, e
            if x <= floor:
                raise _AtFloor
            x = max(x / factor, floor)
            e = eps_of(x)
        lo, e_lo = x, e
    while hi - lo > rtol * hi:
        probes: list[float | None] = []
        if 0.0 < e_hi <= target < e_lo:
            w = math.log(e_lo / target) / math.log(e_lo / e_hi)
            guess = lo * (hi / lo) ** w
            probes = [guess * (1 - rtol / 4), guess * (1 + rtol / 4)]
        for probe in probes + [None]:
            if hi - lo <= rtol * hi:
                break
            x = 0.5 * (lo + hi) if probe is None else probe
            if not lo < x < hi:
                continue
            e = eps_of(x)
            if e <= target:
                hi, e_hi = x, e
            else:
                lo, e_lo = x, e
    return hi


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    steps: int,
    accountant: AccountantKind | str = "rdp",
    rtol: float = 1e-4,
    adjacency: Adjacency | str = Adjacency.ADD_REMOVE,
) -> float:
    """Smallest noise multiplier z with epsilon(q, z, steps, delta) <= target_epsilon (to rtol),
    epsilon under ``adjacency`` (add-remove and zero-out agree; replace-one doubles C)."""
    from dp.accounting import Accountant, AccountantKind, coerce_kind

    target = check_positive("target_epsilon", target_epsilon)
    delta = check_delta(delta)
    q = check_sampling_rate(sampling_rate)
    steps = check_count(steps, "steps")
    kind = coerce_kind(accountant)
    rtol = _check_rtol(rtol)

    def eps_of(z: float) -> float:
        acc = Accountant(kind, adjacency=adjacency)
        acc.compose(PoissonSampledEvent(q, GaussianEvent(z)), count=steps)
        return acc.get_epsilon(delta)

    start, factor = 1.0, 2.0
    if kind is not AccountantKind.RDP:
        # PRV and PLD never report more than RDP, so the (cheap) RDP answer meets the target:
        # start there and step down in small factors.
        start = calibrate_noise_multiplier(
            target_epsilon=target, delta=delta, sampling_rate=q, steps=steps, rtol=rtol,
            adjacency=adjacency,
        )
        factor = 1.0 / 0.9
    try:
        return _search(
            eps_of, target, start, factor=factor, floor=_Z_MIN, ceiling=_Z_MAX, rtol=rtol
        )
    except _AboveCeiling:
        raise DPConfigError(
            f"target_epsilon={target_epsilon!r} at delta={delta!r} needs a noise multiplier "
            f"above {_Z_MAX:g} (sampling_rate={q!r}, steps={steps!r})"
        ) from None
    except _AtFloor:
        raise DPConfigError(
            f"target_epsilon={target_epsilon!r} is met by every noise multiplier down to "
            f"{_Z_MIN:g} (delta={delta!r}, sampling_rate={q!r}, steps={steps!r}); "
            "calibration below that is not supported"
        ) from None


def dp_sgd_sampling_rate(*, num_examples: int, batch_size: int) -> float:
    """The sampling rate Opacus records for each DP-SGD step, i.e. the rate a charge uses.

    With L = ceil(num_examples / batch_size) batches, Opacus samples at 1/L but runs and accounts
    int(1 / (1/L)) steps per epoch at rate 1 / that count; for some L (93, 99, 105, 117, 123,
    186, ...) float rounding makes it L - 1, so the charged rate is 1/(L-1) > 1/L. A budget
    check must use this rate, not 1/L (``dp.opacus_adapter.train_dp_sgd`` records it).
    """
    n = check_count(num_examples, "num_examples")
    b = check_count(batch_size, "batch_size")
    batches = math.ceil(n / b)
    return 1.0 / int(1.0 / (1.0 / batches))


def dp_sgd_steps(*, num_examples: int, batch_size: int, epochs: int) -> int:
    """Noisy steps ``train_dp_sgd`` takes for ``epochs`` epochs: epochs * ceil(n / B)."""
    n = check_count(num_examples, "num_examples")
    b = check_count(batch_size, "batch_size")
    return check_count(epochs, "epochs") * math.ceil(n / b)


def ddg_l2_sensitivity(
    *, l2_clip: float, scale: float, dim: int, beta: float = DEFAULT_BETA
) -> float:
    """Bound Delta_2 on the L2 norm of one client's scaled, rotated, rounded integer vector.

    With c = l2_clip * scale: rounding moves each coordinate by less than 1, so c + sqrt(dim)
    always holds; with beta > 0 the conditional rounding of KLS 2021 (Sec. 4) guarantees
    sqrt(c^2 + dim/4 + sqrt(2 log(1/beta)) * (c + sqrt(dim)/2)). We take the smaller one.
    """
    c = check_positive("l2_clip", l2_clip) * check_positive("scale", scale)
    d = check_count(dim, "dim")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 <= beta < 1.0:
        raise DPConfigError(f"beta must be in [0, 1), got {beta!r}")
    beta = float(beta)
    plain = c + math.sqrt(d)
    if beta == 0.0:
        return plain
    conditional = math.sqrt(
        c * c + d / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (c + math.sqrt(d) / 2.0)
    )
    return min(plain, conditional)


def make_ddg_event(
    *,
    l2_clip: float,
    scale: float,
    dim: int,
    num_clients: int,
    client_sigma: float,
    beta: float = DEFAULT_BETA,
) -> DistributedDiscreteGaussianEvent:
    """The DDG event of one round: ``client_sigma`` per client, summed over ``num_clients``."""
    n = check_count(num_clients, "num_clients")
    s = check_positive("client_sigma", client_sigma)
    return DistributedDiscreteGaussianEvent(
        l2_sensitivity=ddg_l2_sensitivity(l2_clip=l2_clip, scale=scale, dim=dim, beta=beta),
        sigma=s * math.sqrt(n),
        dim=dim,
        num_clients=n,
    )


def calibrate_ddg(
    *,
    target_epsilon: float,
    delta: float,
    l2_clip: float,
    scale: float,
    dim: int,
    num_clients: int,
    beta: float = DEFAULT_BETA,
    sampling_rate: float = 1.0,
    steps: int = 1,
    rtol: float = 1e-4,
    adjacency: Adjacency | str = Adjacency.ZERO_OUT,
) -> float:
    """Per-client discrete Gaussian parameter (integer units) meeting (target_epsilon, delta).

    ``num_clients`` is the smallest number of noisy shares in any released sum (secagg's
    ``min_survivors``), ``steps`` the number of rounds, ``sampling_rate`` the Poisson rate at
    which clients join a round (1 = every round has them all; then no amplification is
    claimed). Accounted with RDP (the only DDG analysis here); unit of privacy: one client;
    ``adjacency`` zero-out (default) or replace-one (add-remove raises DPConfigError).
    The answer is at least 0.5, the smallest parameter the DDG analysis covers.
    """
    target = check_positive("target_epsilon", target_epsilon)
    delta = check_delta(delta)
    q = check_sampling_rate(sampling_rate)
    steps = check_count(steps, "steps")
    rtol = _check_rtol(rtol)
    n = check_count(num_clients, "num_clients")
    make_ddg_event(  # validates l2_clip, scale, dim, beta before the search
        l2_clip=l2_clip, scale=scale, dim=dim, num_clients=n, client_sigma=1.0, beta=beta
    )

    def eps_of(client_sigma: float) -> float:
        event: DPEvent = make_ddg_event(
            l2_clip=l2_clip,
            scale=scale,
            dim=dim,
            num_clients=n,
            client_sigma=client_sigma,
            beta=beta,
        )
        if q < 1.0:
            event = PoissonSampledEvent(q, event)
        from dp.accounting import Accountant, AccountantKind

        acc = Accountant(AccountantKind.RDP, unit=UnitOfPrivacy.CLIENT, adjacency=adjacency)
        acc.compose(event, count=steps)
        return acc.get_epsilon(delta)

    try:
        return _search(
            eps_of,
            target,
            _DDG_SIGMA_MIN,
            factor=2.0,
            floor=_DDG_SIGMA_MIN,
            ceiling=_DDG_SIGMA_MAX,
            rtol=rtol,
        )
    except _AtFloor:
        return _DDG_SIGMA_MIN
    except _AboveCeiling:
        raise DPConfigError(
            f"target_epsilon={target_epsilon!r} at delta={delta!r} is out of reach for the "
            f"DDG with l2_clip={l2_clip!r}, scale={scale!r}, dim={dim!r}, num_clients={n!r}"
        ) from None
