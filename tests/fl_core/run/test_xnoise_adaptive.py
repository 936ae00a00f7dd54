"""Excess-noise removal and adaptive clipping in the secure round and the run loop."""

import json

import numpy as np
import pytest
import torch

from dp.distributed import DDGConfig
from fl_core.run.loop import run
from fl_core.run.observer import StopAfterRelease, StopRun
from fl_core.secure.round import SecureRoundSpec, secure_mean
from secagg.config import GraphKind

from .test_run import cfg_of

QUIET = dict(progress=False, log=lambda m: None)


def _noise_variance(excess_noise: bool, enabled: bool = True) -> tuple[float, int]:
    n, m, dim = 12, 6, 2048
    plan = DDGConfig(l2_clip=1.0, bits=24, dim=dim, num_clients=n, min_survivors=m,
                     noise_multiplier=1.0).plan()
    spec = SecureRoundSpec(enabled=enabled, graph=GraphKind.COMPLETE, bits=24, min_survivors=m,
                           max_clients=n)
    updates = {u: np.zeros(dim) for u in range(n)}
    out = secure_mean(updates, {u: 1 for u in range(n)}, spec=spec, ddg=plan, round_seed=b"s" * 32,
                      rng=np.random.default_rng(0), secure_randomness=False,
                      excess_noise=excess_noise)
    total = out.mean_update.astype(np.float64) * len(out.survivors)
    per_share = (plan.gamma * plan.client_sigma) ** 2
    return float(np.var(total)) / per_share, out.noise_removed


@pytest.mark.parametrize("enabled", [True, False])
def test_secure_round_leaves_min_survivors_noise_shares(enabled):
    """12 survivors, min_survivors 6: 12 shares without removal, 6 with (5 standard errors)."""
    tol = 5 * (2 / 2048) ** 0.5
    with_removal, removed = _noise_variance(True, enabled)
    without, none_removed = _noise_variance(False, enabled)
    assert (removed, none_removed) == (6, 0)
    assert abs(with_removal / 6 - 1) < tol
    assert abs(without / 12 - 1) < tol


def test_client_dp_run_charges_the_noise_left(tmp_path):
    over = dict(dp={"mode": "client", "target_epsilon": 8.0}, rounds=3,
                secagg={"min_survivors": 0.6, "dropout": {"masked_input": 0.1}})
    on = run(cfg_of(**over), tmp_path / "on", **QUIET)
    off = run(cfg_of(**{**over, "dp": {**over["dp"], "excess_noise": False}}), tmp_path / "off", **QUIET)
    rows = [json.loads(x) for x in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    assert [r["noise_shares_left"] for r in rows] == [6, 6, 6]  # ceil(0.6 * 10)
    assert all(r["survivors"] >= 6 for r in rows) and any(r["survivors"] > 6 for r in rows)
    assert on.epsilon == pytest.approx(off.epsilon, rel=1e-9)  # the same event: m shares left
    assert "noise_shares_left" not in json.loads((tmp_path / "off" / "metrics.jsonl").read_text().splitlines()[0])


def test_adaptive_clip_moves_and_survives_a_resume(tmp_path):
    cfg = cfg_of(dp={"mode": "client", "target_epsilon": 8.0, "l2_clip": 5.0,
                     "adaptive_clip": {"enabled": True, "target_quantile": 0.5, "learning_rate": 0.5,
                                       "bit_noise": 2.0}},
                 secagg={"min_survivors": 0.8})
    full = run(cfg, tmp_path / "full", **QUIET)
    clips = [m["clip"] for m in full.metrics]
    assert clips[0] == 5.0 and len(set(clips)) == len(clips)  # moved every round
    assert all(0.0 <= m["unclipped_fraction"] <= 1.5 for m in full.metrics)
    with pytest.raises(StopRun):
        run(cfg, tmp_path / "cut", observer=StopAfterRelease(2), **QUIET)
    resumed = run(cfg, tmp_path / "cut", resume=True, **QUIET)
    assert [m["clip"] for m in resumed.metrics] == clips
    m1, m2 = torch.load(tmp_path / "full" / "model.pt"), torch.load(tmp_path / "cut" / "model.pt")
    for k in m1:
        assert torch.equal(m1[k], m2[k]), k


def test_adaptive_clip_needs_client_mode():
    from fl_core.errors import ConfigFieldError

    with pytest.raises(ConfigFieldError, match="dp.adaptive_clip.enabled"):
        cfg_of(dp={"mode": "none", "adaptive_clip": {"enabled": True}})
