"""Excess-noise removal: exact subtraction, the noise left, its accounting, the removal rule."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from dp.accounting import Accountant, AccountantKind
from dp.calibration import make_ddg_event
from dp.distributed import DDGConfig, decode_sum, from_words, modular_sum
from dp.errors import DPConfigError, DPError
from dp.events import UnitOfPrivacy
from dp.noise import NoiseGenerator
from dp.xnoise import encode_client, noise_left, noise_share, remove_excess, tolerated_corrupt
from secagg.errors import ConfigError
from secagg.excess import excess_owners

ROT = b"r" * 32


def _plan(n=20, m=14, dim=64, bits=24):
    return DDGConfig(l2_clip=1.0, bits=bits, dim=dim, num_clients=n, min_survivors=m,
                     noise_multiplier=1.0).plan()


def _eps(event, delta=1e-5):
    acc = Accountant(AccountantKind.RDP, unit=UnitOfPrivacy.CLIENT)
    acc.compose(event)
    return acc.get_epsilon(delta)


def test_excess_owners_rule():
    assert excess_owners((1, 3, 5, 7, 9), min_survivors=3) == (7, 9)
    assert excess_owners((1, 3, 5), min_survivors=3) == ()
    with pytest.raises(ConfigError, match="fewer than min_survivors=4"):
        excess_owners((1, 3, 5), min_survivors=4)
    with pytest.raises(ConfigError, match="strictly increasing"):
        excess_owners((3, 1, 5), min_survivors=2)


def test_noise_share_is_reproducible_and_seed_specific():
    plan = _plan()
    a, b = noise_share(plan, b"a" * 32), noise_share(plan, b"a" * 32)
    assert np.array_equal(a, b) and a.shape == (plan.padded_dim,)
    assert not np.array_equal(a, noise_share(plan, b"b" * 32))
    with pytest.raises(DPConfigError, match="32 bytes"):
        noise_share(plan, b"short")


def test_removal_leaves_exactly_the_kept_shares():
    """The decoded integer sum minus the rounded inputs is the kept clients' noise, bit for bit."""
    plan = _plan()
    rng = np.random.default_rng(1)
    survivors = tuple(range(19))  # client 19 dropped
    seeds = {u: os.urandom(32) for u in survivors}
    xs = {u: rng.normal(size=plan.config.dim) for u in survivors}
    words = {u: encode_client(xs[u], plan=plan, rotation_seed=ROT, noise_seed=seeds[u],
                              gen=NoiseGenerator(bytes([u]) * 32)) for u in survivors}
    rounded = {u: from_words(words[u], plan.bits) - noise_share(plan, seeds[u]) for u in survivors}
    total = modular_sum([words[u] for u in survivors], bits=plan.bits)
    excess = excess_owners(survivors, min_survivors=plan.config.min_survivors)
    assert len(excess) == 19 - 14
    cleaned = remove_excess(total, plan=plan, seeds={u: seeds[u] for u in excess})
    residual = from_words(cleaned, plan.bits) - sum(rounded.values())
    kept = [u for u in survivors if u not in excess]
    assert np.array_equal(residual, sum(noise_share(plan, seeds[u]) for u in kept))
    # and the decoded estimate is the survivors' sum plus that noise
    est = decode_sum(cleaned, plan=plan, rotation_seed=ROT)
    assert est.shape == (plan.config.dim,)


def test_removal_brings_the_variance_down_to_min_survivors():
    """Without removal a sum over s survivors carries s shares; with it, exactly m."""
    plan = _plan(n=30, m=10, dim=4096)
    s = 25
    seeds = [os.urandom(32) for _ in range(s)]
    full = sum(noise_share(plan, sd) for sd in seeds)
    kept = full - sum(noise_share(plan, sd) for sd in seeds[10:])
    var1 = plan.client_sigma ** 2
    # 5 standard errors of a variance estimate from 4096 Gaussian samples: 5 * sqrt(2/4096)
    assert abs(np.var(full) / (s * var1) - 1) < 5 * (2 / 4096) ** 0.5
    assert abs(np.var(kept) / (10 * var1) - 1) < 5 * (2 / 4096) ** 0.5
    left = noise_left(plan, survivors=s, removed=s - 10)
    assert left.kept == 10 and left.variance == pytest.approx(10 * (plan.gamma * plan.client_sigma) ** 2)


def test_noise_left_charges_the_planned_event_and_refuses_over_removal():
    plan = _plan()
    for s in (14, 17, 20):
        left = noise_left(plan, survivors=s, removed=s - 14)
        assert left.event == plan.event
    with pytest.raises(DPError, match="at most 3 are excess"):
        noise_left(plan, survivors=17, removed=4)
    with pytest.raises(DPError, match="fewer than min_survivors"):
        noise_left(plan, survivors=13, removed=0)


def test_dropouts_during_removal_leave_more_noise_and_less_epsilon():
    """A seed that could not be rebuilt stays in the sum: the charged event has more noise."""
    plan = _plan(n=50, m=20)
    full = noise_left(plan, survivors=40, removed=20)
    short = noise_left(plan, survivors=40, removed=17)  # 3 excess owners' seeds lost
    assert short.kept == 23 and short.variance > full.variance
    assert short.event.sigma > full.event.sigma
    assert _eps(short.event) <= _eps(full.event)


def test_colluders_are_subtracted_from_the_kept_shares():
    """A plan calibrated for m - c honest shares charges kept - c after removal."""
    base = _plan(n=20, m=14)
    event = make_ddg_event(l2_clip=1.0, scale=1 / base.gamma, dim=base.padded_dim,
                           num_clients=12, client_sigma=base.client_sigma, beta=base.config.beta)
    plan = dataclasses.replace(base, event=event)
    assert tolerated_corrupt(plan) == 2
    left = noise_left(plan, survivors=18, removed=4)
    assert (left.kept, left.honest) == (14, 12) and left.event == event


def test_bench_xnoise_writes_the_documented_keys(tmp_path):
    import json

    from dp.tools.bench import main

    out = tmp_path / "x.json"
    assert main(["xnoise", "--clients", "12", "--dim", "256", "--planned-dropout", "0.4",
                 "--actual-dropout", "0.1", "--repeats", "1", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    for key in ("mse_xnoise", "mse_min_survivors", "mse_ideal", "extra_round_seconds",
                "extra_bytes"):
        assert key in got
    assert (got["min_survivors"], got["survivors"]) == (8, 11)
    assert got["extra_bytes"] > 0
    # nominal noise: removal gives the ideal's variance up to the granularity's difference
    assert got["nominal_variance_min_survivors"] / got["nominal_variance_xnoise"] == \
        pytest.approx(11 / 8)
