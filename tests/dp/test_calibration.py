"""Calibration round trips: the answer meets the target, 0.99 of it does not."""

from __future__ import annotations

import math

import pytest

from dp.accounting import Accountant, AccountantKind, compute_epsilon
from dp.calibration import (
    DEFAULT_BETA,
    calibrate_ddg,
    calibrate_noise_multiplier,
    ddg_l2_sensitivity,
    make_ddg_event,
)
from dp.errors import DPConfigError
from dp.events import PoissonSampledEvent, UnitOfPrivacy


@pytest.mark.parametrize(
    "target,q,steps,delta",
    [
        (3.0, 256 / 60000, 14063, 1e-5),  # MNIST DP-SGD scale (TF Privacy tutorial settings)
        (1.0, 0.01, 1000, 1e-5),
        (8.0, 0.1, 50, 1e-6),
        (2.0, 1.0, 1, 1e-5),  # one unsampled release
    ],
)
def test_noise_multiplier_round_trip_rdp(target, q, steps, delta):
    z = calibrate_noise_multiplier(target_epsilon=target, delta=delta, sampling_rate=q, steps=steps)
    assert compute_epsilon(sampling_rate=q, noise_multiplier=z, steps=steps, delta=delta) <= target
    assert compute_epsilon(sampling_rate=q, noise_multiplier=0.99 * z, steps=steps, delta=delta) > target


def test_noise_multiplier_round_trip_prv():
    kw = dict(sampling_rate=0.01, steps=1000, delta=1e-5, accountant=AccountantKind.PRV)
    z = calibrate_noise_multiplier(target_epsilon=2.0, **kw)
    assert compute_epsilon(noise_multiplier=z, **kw) <= 2.0
    assert compute_epsilon(noise_multiplier=0.99 * z, **kw) > 2.0
    # PRV is tighter, so it needs less noise than RDP for the same target.
    assert z < calibrate_noise_multiplier(target_epsilon=2.0, sampling_rate=0.01, steps=1000, delta=1e-5)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(target_epsilon=0.0), "target_epsilon"),
        (dict(target_epsilon=-1.0), "target_epsilon"),
        (dict(delta=0.0), "delta"),
        (dict(delta=1.0), "delta"),
        (dict(sampling_rate=0.0), "sampling_rate"),
        (dict(sampling_rate=1.5), "sampling_rate"),
        (dict(steps=0), "steps"),
        (dict(rtol=0.0), "rtol"),
        (dict(accountant="gdp"), "accountant"),
    ],
)
def test_noise_multiplier_bad_parameters(kwargs, name):
    args = dict(target_epsilon=1.0, delta=1e-5, sampling_rate=0.01, steps=100)
    args.update(kwargs)
    with pytest.raises(DPConfigError) as info:
        calibrate_noise_multiplier(**args)
    assert name in str(info.value)


def test_noise_multiplier_out_of_range_targets():
    with pytest.raises(DPConfigError, match="above"):
        calibrate_noise_multiplier(target_epsilon=1e-6, delta=1e-5, sampling_rate=1.0, steps=100_000)
    with pytest.raises(DPConfigError, match="every noise multiplier"):
        calibrate_noise_multiplier(target_epsilon=1e4, delta=1e-5, sampling_rate=0.001, steps=1)


# --- distributed discrete Gaussian ------------------------------------------------------------


def test_ddg_l2_sensitivity_known_answers():
    # c = l2_clip * scale = 100, d = 10^4, beta = e^{-1/2} so sqrt(2 log(1/beta)) = 1:
    # sqrt(c^2 + d/4 + (c + sqrt(d)/2)) = sqrt(10000 + 2500 + 150) = sqrt(12650) = 112.4722,
    # below the deterministic c + sqrt(d) = 200.
    assert DEFAULT_BETA == pytest.approx(math.exp(-0.5))
    assert ddg_l2_sensitivity(l2_clip=0.5, scale=200.0, dim=10_000) == pytest.approx(math.sqrt(12650))
    assert ddg_l2_sensitivity(l2_clip=0.5, scale=200.0, dim=10_000, beta=0.0) == pytest.approx(200.0)
    # d = 1: sqrt(10000 + 0.25 + 100.5) = 100.50249 < 101.
    assert ddg_l2_sensitivity(l2_clip=1.0, scale=100.0, dim=1) == pytest.approx(math.sqrt(10100.75))
    # c = d = 1 and beta = 1e-10: sqrt(2 log 1e10) = 6.7861, so the conditional bound
    # sqrt(1 + 0.25 + 6.7861 * 1.5) = 3.381 loses to the deterministic 1 + 1 = 2.
    assert ddg_l2_sensitivity(l2_clip=1.0, scale=1.0, dim=1, beta=1e-10) == pytest.approx(2.0)


@pytest.mark.parametrize("beta", [-0.1, 1.0, math.nan, True, "0.5"])
def test_ddg_l2_sensitivity_rejects_bad_beta(beta):
    with pytest.raises(DPConfigError) as info:
        ddg_l2_sensitivity(l2_clip=1.0, scale=10.0, dim=10, beta=beta)
    assert "beta" in str(info.value) and repr(beta) in str(info.value)


def _ddg_epsilon(client_sigma, *, q=1.0, steps=1, delta=1e-5, **kw):
    event = make_ddg_event(client_sigma=client_sigma, **kw)
    acc = Accountant(unit=UnitOfPrivacy.CLIENT)
    acc.compose(event if q == 1.0 else PoissonSampledEvent(q, event), count=steps)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize(
    "target,q,steps,n",
    [(3.0, 1.0, 1, 100), (1.0, 1.0, 10, 20), (4.0, 0.1, 200, 50), (10.0, 1.0, 1, 1000)],
)
def test_ddg_round_trip(target, q, steps, n):
    geometry = dict(l2_clip=1.0, scale=64.0, dim=2**14, num_clients=n)
    sigma = calibrate_ddg(target_epsilon=target, delta=1e-5, sampling_rate=q, steps=steps, **geometry)
    assert _ddg_epsilon(sigma, q=q, steps=steps, **geometry) <= target
    assert _ddg_epsilon(0.99 * sigma, q=q, steps=steps, **geometry) > target


def test_ddg_with_large_noise_matches_the_gaussian_calibration():
    # With per-client sigma >> 1, tau ~ e^{-pi^2 sigma^2} vanishes and the DDG's RDP is the
    # Gaussian's with noise multiplier sqrt(n) sigma / Delta_2 (KLS 2021, Prop. 14).
    geometry = dict(l2_clip=1.0, scale=2000.0, dim=2**10, num_clients=100)
    sigma = calibrate_ddg(target_epsilon=2.0, delta=1e-5, **geometry)
    delta2 = ddg_l2_sensitivity(l2_clip=1.0, scale=2000.0, dim=2**10)
    z = calibrate_noise_multiplier(target_epsilon=2.0, delta=1e-5, sampling_rate=1.0, steps=1)
    assert sigma * math.sqrt(100) / delta2 == pytest.approx(z, rel=1e-3)


def test_ddg_minimum_parameter_when_any_noise_suffices():
    # The analysis needs sigma >= 1/2 per client; a loose target is met there already.
    sigma = calibrate_ddg(target_epsilon=1e6, delta=1e-5, l2_clip=1.0, scale=1.0, dim=4, num_clients=1000)
    assert sigma == 0.5


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(l2_clip=0.0), "l2_clip"),
        (dict(scale=-1.0), "scale"),
        (dict(dim=0), "dim"),
        (dict(num_clients=0), "num_clients"),
        (dict(beta=1.5), "beta"),
        (dict(target_epsilon=math.inf), "target_epsilon"),
        (dict(sampling_rate=0.0), "sampling_rate"),
        (dict(steps=-1), "steps"),
    ],
)
def test_ddg_bad_parameters(kwargs, name):
    args = dict(target_epsilon=1.0, delta=1e-5, l2_clip=1.0, scale=10.0, dim=100, num_clients=10)
    args.update(kwargs)
    with pytest.raises(DPConfigError) as info:
        calibrate_ddg(**args)
    assert name in str(info.value)
