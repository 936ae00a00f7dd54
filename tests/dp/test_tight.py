"""PLD and PRV accountants with bounded grids, the exact unsampled Gaussian, and adjacency.

References: Google's dp_accounting PLD accountant used directly (its defaults), and the exact
Gaussian curve evaluated here by plain bisection on scipy's norm.cdf (no log space).
"""

from __future__ import annotations

import math

import pytest
from scipy import stats

from dp import tight
from dp.accounting import Accountant, AccountantKind
from dp.calibration import calibrate_noise_multiplier
from dp.cli import main
from dp.errors import AccountantLimitError, DPConfigError
from dp.events import (Adjacency, DistributedDiscreteGaussianEvent, GaussianEvent,
                       PoissonSampledEvent, UnitOfPrivacy)


def reference_pld(q: float, z: float, steps: int, delta: float) -> float:
    import dp_accounting as dpa

    acc = dpa.pld.PLDAccountant()
    event = dpa.GaussianDpEvent(z) if q == 1 else dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z))
    acc.compose(dpa.SelfComposedDpEvent(event, steps))
    return acc.get_epsilon(delta)


def plain_gaussian_epsilon(mu: float, delta: float) -> float:
    def d(e: float) -> float:
        return stats.norm.cdf(mu / 2 - e / mu) - math.exp(e) * stats.norm.cdf(-mu / 2 - e / mu)

    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if d(mid) > delta else (lo, mid)
    return hi


def spent(kind: str, q: float, z: float, steps: int, delta: float = 1e-5, **kw):
    acc = Accountant(kind, **kw)
    acc.compose(PoissonSampledEvent(q, GaussianEvent(z)), count=steps)
    return acc.get_privacy_spent(delta)


def test_cli_pld_target_within_half_percent_of_dp_accounting(capsys) -> None:
    assert main(["epsilon", "--sampling-rate", "0.01", "--noise-multiplier", "1.0", "--steps",
                 "1000", "--delta", "1e-5", "--accountant", "pld", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    ref = reference_pld(0.01, 1.0, 1000, 1e-5)
    assert out["accountant"] == "pld"
    assert abs(out["epsilon"] - ref) <= 0.005 * ref
    # and PLD is tighter than our RDP there (that is why it exists)
    assert out["epsilon"] < spent("rdp", 0.01, 1.0, 1000).epsilon


@pytest.mark.parametrize("mu", [0.1, 1.0, 3.0, 10.0])
def test_exact_gaussian_matches_plain_bisection(mu: float) -> None:
    assert tight.gaussian_epsilon(mu, 1e-5) == pytest.approx(plain_gaussian_epsilon(mu, 1e-5),
                                                             rel=1e-9, abs=1e-9)


def test_unsampled_history_is_the_composed_gaussian_and_matches_dp_accounting() -> None:
    r = spent("pld", 1.0, 2.0, 10)
    assert r.accountant is AccountantKind.PLD and "exact" in r.note
    assert r.epsilon == pytest.approx(tight.gaussian_epsilon(math.sqrt(10) / 2.0, 1e-5))
    assert r.epsilon == pytest.approx(reference_pld(1.0, 2.0, 10, 1e-5), rel=5e-3)


@pytest.mark.parametrize("kind", ["pld", "prv"])
def test_q1_z05_10000_steps_answers_without_a_grid(kind: str) -> None:
    # Opacus' PRV was OOM-killed at 24 GB here; the closed form needs no grid at all.
    r = spent(kind, 1.0, 0.5, 10_000)
    assert r.accountant.value == kind
    assert r.epsilon == pytest.approx(tight.gaussian_epsilon(200.0, 1e-5))
    assert r.epsilon < spent("rdp", 1.0, 0.5, 10_000).epsilon


def test_prv_small_epsilon_is_not_swamped_by_a_fixed_error() -> None:
    # Opacus' fixed eps_error 0.01 gave ~0.0104 here; PLD says ~0.0012.
    pld = spent("pld", 0.001, 5.0, 10).epsilon
    prv = spent("prv", 0.001, 5.0, 10)
    assert prv.accountant is AccountantKind.PRV
    assert prv.epsilon <= 1.25 * pld


@pytest.mark.slow
def test_pld_refuses_a_grid_past_its_limit_with_a_typed_error() -> None:
    with pytest.raises(AccountantLimitError, match="grid points"):
        tight.pld_epsilon([(0.1, 0.5, 10**7)], 1e-5)


@pytest.mark.slow
def test_prv_refuses_a_grid_past_its_limit_and_the_accountant_falls_back() -> None:
    with pytest.raises(AccountantLimitError, match="grid points"):
        tight.prv_epsilon([(0.5, 0.5, 10_000)], 1e-5, reference_epsilon=1.0)
    r = spent("prv", 0.5, 0.5, 10_000)
    assert r.accountant is AccountantKind.RDP and "fell back to RDP" in r.note


def test_noise_calibration_with_pld_meets_the_target() -> None:
    # rtol 1e-3 (default 1e-4): each step of the search is a PLD of 1000 steps; the half as many
    # steps still land within 0.1% of the smallest z, far inside the gap to RDP's (~6%)
    z = calibrate_noise_multiplier(target_epsilon=2.0, delta=1e-5, sampling_rate=0.01,
                                   steps=1000, accountant="pld", rtol=1e-3)
    assert spent("pld", 0.01, z, 1000).epsilon <= 2.0
    assert z < calibrate_noise_multiplier(target_epsilon=2.0, delta=1e-5, sampling_rate=0.01,
                                          steps=1000)


# --- adjacency -----------------------------------------------------------------------------

def test_default_adjacency_follows_the_unit() -> None:
    assert Accountant().adjacency is Adjacency.ADD_REMOVE
    assert Accountant(unit=UnitOfPrivacy.CLIENT).adjacency is Adjacency.ZERO_OUT
    assert spent("rdp", 0.1, 1.0, 5).adjacency is Adjacency.ADD_REMOVE


@pytest.mark.parametrize("kind", ["rdp", "pld"])
def test_replace_one_unsampled_doubles_the_sensitivity(kind: str) -> None:
    rep = spent(kind, 1.0, 4.0, 3, adjacency="replace-one")
    assert rep.adjacency is Adjacency.REPLACE_ONE
    assert rep.epsilon == pytest.approx(spent(kind, 1.0, 2.0, 3).epsilon)


def test_replace_one_sampled_lies_between_add_remove_and_no_amplification() -> None:
    acc = Accountant()
    acc.compose(PoissonSampledEvent(0.01, GaussianEvent(1.0)), count=100)
    rep = acc.get_epsilon(1e-5, adjacency=Adjacency.REPLACE_ONE)
    assert acc.get_epsilon(1e-5) < rep < spent("rdp", 1.0, 0.5, 100).epsilon


def ddg() -> DistributedDiscreteGaussianEvent:
    return DistributedDiscreteGaussianEvent(l2_sensitivity=100.0, sigma=400.0, dim=64,
                                            num_clients=10)


def test_ddg_add_remove_is_refused_before_anything_is_composed() -> None:
    acc = Accountant(unit=UnitOfPrivacy.CLIENT, adjacency="add-remove")
    with pytest.raises(DPConfigError, match="noise share"):
        acc.compose(ddg())
    assert len(acc) == 0
    zero = Accountant(unit=UnitOfPrivacy.CLIENT)
    zero.compose(ddg())
    with pytest.raises(DPConfigError, match="add-remove"):
        zero.get_epsilon(1e-5, adjacency="add-remove")


def test_ddg_replace_one_is_the_doubled_event() -> None:
    e = ddg()
    doubled = DistributedDiscreteGaussianEvent(l2_sensitivity=200.0, sigma=400.0, dim=64,
                                               num_clients=10)
    a = Accountant(unit=UnitOfPrivacy.CLIENT)
    a.compose(e, count=5)
    b = Accountant(unit=UnitOfPrivacy.CLIENT)
    b.compose(doubled, count=5)
    assert a.get_epsilon(1e-5, adjacency="replace-one") == pytest.approx(b.get_epsilon(1e-5))
    assert a.get_epsilon(1e-5, adjacency="replace-one") > a.get_epsilon(1e-5)


def test_adjacency_survives_a_checkpoint() -> None:
    acc = Accountant(unit=UnitOfPrivacy.CLIENT, adjacency="replace-one")
    acc.compose(ddg())
    again = Accountant.from_state_dict(acc.state_dict())
    assert again.adjacency is Adjacency.REPLACE_ONE
    assert again.get_epsilon(1e-5) == acc.get_epsilon(1e-5)


def test_bad_adjacency_is_a_typed_error() -> None:
    with pytest.raises(DPConfigError, match="'sideways'"):
        Accountant(adjacency="sideways")


# --- bounded time and memory, measured on a real process ------------------------------------


def _cli_process(q: float, z: float, steps: int, kind: str):
    """``python -m dp epsilon`` in its own process: (exit status, stdout, wall seconds, peak RSS MiB)."""
    import os
    import resource
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "dp", "epsilon", "--sampling-rate", str(q), "--noise-multiplier", str(z),
           "--steps", str(steps), "--delta", "1e-5", "--accountant", kind, "--json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(root)})
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux: the largest child so far
    return p.returncode, p.stdout, p.stderr, wall, (peak if peak > before else None)


@pytest.mark.parametrize("kind", ["rdp", "pld", "prv"])
def test_cli_q1_z05_10000_steps_is_cheap_in_process(kind: str) -> None:
    # the cheap version: the case through the CLI, each accountant, a result with its source
    import io
    import json

    out = io.StringIO()
    assert main(["epsilon", "--sampling-rate", "1", "--noise-multiplier", "0.5", "--steps", "10000",
                 "--delta", "1e-5", "--accountant", kind, "--json"], stdout=out) == 0
    res = json.loads(out.getvalue())
    assert res["accountant"] == kind and math.isfinite(res["epsilon"]) and res["epsilon"] > 0
    if kind != "rdp":
        assert res["epsilon"] == pytest.approx(tight.gaussian_epsilon(200.0, 1e-5))


@pytest.mark.slow
@pytest.mark.parametrize("q,z,steps", [(1.0, 0.5, 10_000), (0.5, 0.5, 10_000), (0.1, 0.8, 10_000)])
@pytest.mark.parametrize("kind", ["rdp", "pld", "prv"])
def test_cli_hard_cases_end_within_60_s_and_6_gb(kind: str, q: float, z: float, steps: int) -> None:
    # Full version, one process per case (benchmarks/accountant_limits.py records the figures):
    # an epsilon (exit 0) or a one-line typed error (exit 2), in under 60 s and 6 GB.
    import json

    code, stdout, stderr, wall, peak_kib = _cli_process(q, z, steps, kind)
    assert code in (0, 2), stderr
    if code == 0:
        assert math.isfinite(json.loads(stdout)["epsilon"])
    else:
        assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("python -m dp: error:")
    assert wall < 60
    if peak_kib is not None:  # the largest child of this test process so far: an upper bound
        assert peak_kib < 6 * 1024 * 1024
