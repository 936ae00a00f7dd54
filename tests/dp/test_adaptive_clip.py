"""Adaptive clipping (Andrew et al. 2021) inside the DDG secure sum: math, accounting, convergence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.adaptive_clip import (AdaptiveClipConfig, ClipTracker, bit_weight, client_vector,
                              joint_l2_clip, joint_noise_multiplier, plan_ddg, split_sum)
from dp.distributed import DDGConfig, decode_sum, encode_client, modular_sum
from dp.errors import DPConfigError
from dp.noise import NoiseGenerator

ROT = b"q" * 32


@given(z=st.floats(0.05, 20), ratio=st.floats(0.51, 50))
@settings(max_examples=60, deadline=None)
def test_bit_weight_gives_the_requested_count_noise(z, ratio):
    sb = ratio * z
    beta = bit_weight(unit_sigma=z, bit_noise=sb)
    assert joint_l2_clip(beta) * z / beta == pytest.approx(sb, rel=1e-9)


@given(sigma=st.floats(0.05, 20), beta=st.floats(0.01, 10))
@settings(max_examples=60, deadline=None)
def test_joint_sensitivity_matches_andrew_et_al_composition(sigma, beta):
    """Noise sigma on [u/C, beta(b-1/2)] = Andrew's pair (z_u = sigma, sigma_b = sigma/beta)."""
    assert joint_noise_multiplier(sigma, sigma / beta) == pytest.approx(
        sigma / joint_l2_clip(beta), rel=1e-9)


def test_bit_weight_refuses_a_too_quiet_count():
    with pytest.raises(DPConfigError, match="bit_noise=0.5"):
        bit_weight(unit_sigma=1.0, bit_noise=0.5)


def test_config_validates():
    with pytest.raises(DPConfigError, match="target_quantile=1.5"):
        AdaptiveClipConfig(initial_clip=1.0, target_quantile=1.5)
    with pytest.raises(DPConfigError, match="initial_clip"):
        AdaptiveClipConfig(initial_clip=0.0)


def test_client_vector_norm_bit_and_inverse():
    beta, clip = 0.3, 2.0
    small, big = np.full(4, 0.5), np.full(4, 5.0)  # norms 1 and 10
    vs, vb = client_vector(small, clip=clip, beta=beta), client_vector(big, clip=clip, beta=beta)
    assert vs[-1] == beta / 2 and vb[-1] == -beta / 2
    for v in (vs, vb):
        assert np.linalg.norm(v) <= joint_l2_clip(beta) + 1e-12
    update, fraction = split_sum(vs + vb, clip=clip, beta=beta, survivors=2)
    assert fraction == pytest.approx(0.5)
    assert np.allclose(update, small + big * clip / 10.0)


def test_the_bit_costs_budget_through_the_sensitivity():
    """At the same target the bit-carrying plan's noise is J times the plain plan's (or more)."""
    base = DDGConfig(l2_clip=1.0, bits=20, dim=200, num_clients=100, min_survivors=80,
                     epsilon=2.0, delta=1e-5)
    ap = plan_ddg(base, AdaptiveClipConfig(initial_clip=1.0, bit_noise=80 / 20))
    plain = base.plan()
    assert ap.plan.config.l2_clip == pytest.approx(joint_l2_clip(ap.beta))
    assert ap.plan.config.dim == 201
    assert ap.plan.central_sigma >= plain.central_sigma * joint_l2_clip(ap.beta) * 0.99
    assert ap.bit_noise == pytest.approx(4.0, rel=0.05)


@pytest.mark.parametrize("quantile", [0.3, 0.5, 0.8])
def test_clip_converges_to_the_quantile_with_noisy_counts(quantile):
    """Norms ~ lognormal(0, 1): the gamma-quantile is exp(Phi^-1(gamma)); 1000 clients a round."""
    from scipy.stats import norm as normal

    rng = np.random.default_rng(7)
    tracker = ClipTracker(AdaptiveClipConfig(initial_clip=0.05, target_quantile=quantile,
                                             learning_rate=0.2, bit_noise=1000 / 20))
    clips = []
    for _ in range(300):
        norms = rng.lognormal(0.0, 1.0, size=1000)
        count = np.sum(norms <= tracker.clip) + rng.normal(0, 1000 / 20)
        clips.append(tracker.update(count / 1000))
    truth = math.exp(normal.ppf(quantile))
    assert abs(np.mean(clips[-100:]) / truth - 1) < 0.1
    assert abs(clips[0] / truth - 1) > 0.5  # it did move there


def test_clip_converges_through_the_ddg_secure_sum():
    """End to end: bits inside the DDG vectors, decoded, split, tracked; norms ~ 2 * Exp(1)."""
    n, dim = 40, 7
    base = DDGConfig(l2_clip=1.0, bits=24, dim=dim, num_clients=n, min_survivors=n,
                     noise_multiplier=0.5)
    ap = plan_ddg(base, AdaptiveClipConfig(initial_clip=0.1, bit_noise=n / 20))
    tracker = ClipTracker(AdaptiveClipConfig(initial_clip=0.1, learning_rate=0.3,
                                             bit_noise=n / 20))
    rng = np.random.default_rng(3)
    gen = NoiseGenerator(b"g" * 32)
    clips = []
    for _ in range(60):
        dirs = rng.normal(size=(n, dim))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        updates = dirs * rng.exponential(2.0, size=(n, 1))
        words = [encode_client(client_vector(u, clip=tracker.clip, beta=ap.beta), plan=ap.plan,
                               rotation_seed=ROT, gen=gen) for u in updates]
        decoded = decode_sum(modular_sum(words, bits=ap.plan.bits), plan=ap.plan, rotation_seed=ROT)
        _, fraction = split_sum(decoded, clip=tracker.clip, beta=ap.beta, survivors=n)
        clips.append(tracker.update(fraction))
    median = 2.0 * math.log(2.0)
    assert abs(np.mean(clips[-20:]) / median - 1) < 0.2
