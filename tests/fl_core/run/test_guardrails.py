"""Guard-rails at start: signal to noise and the probability that a round aborts (issue 14, part 7)."""

import json
import math

import pytest

from fl_core.config import config_from_dict
from fl_core.run import rundir
from fl_core.run.guardrails import ABORT_WARN_ABOVE, SNR_WARN_BELOW, abort_probability, signal_to_noise
from fl_core.run.loop import run


def test_signal_to_noise_known_answer():
    # the config that could not learn: 8 updates of norm <= 1 against std 1.43 over 16,384 coordinates
    g = signal_to_noise(summands=8, l2_clip=1.0, noise_std=1.43, dim=16_384, what="x")
    assert g.value == pytest.approx(8 / (1.43 * 128)) and g.value < SNR_WARN_BELOW and g.warning
    assert "WARNING: the noise swamps the signal" in g.message
    assert not signal_to_noise(summands=90, l2_clip=0.5, noise_std=1.0, dim=1000, what="x").warning


def test_abort_probability_known_answers():
    g = abort_probability(clients=7, min_survivors=7, drop_before_input=0.1)
    assert g.value == pytest.approx(1 - 0.9 ** 7) and g.warning and g.value > ABORT_WARN_ABOVE
    assert abort_probability(clients=10, min_survivors=5, drop_before_input=0.0).value == 0.0
    # Poisson: survivors ~ Binomial(20, 0.5 * 0.9); P(< 3)
    p = 0.45
    want = sum(math.comb(20, k) * p ** k * (1 - p) ** (20 - k) for k in range(3))
    assert abort_probability(clients=20, min_survivors=3, drop_before_input=0.1, sampling_rate=0.5).value == \
        pytest.approx(want)


def _cfg(**over):
    d = {"rounds": 15, "clients_per_round": 7, "secure_randomness": False, "seed": 0,
         "data": {"num_clients": 10}, "model": {"hidden": 8},
         "local": {"epochs": 1, "lr": 0.1, "batch_size": 16, "momentum": 0.0}}
    d.update(over)
    return config_from_dict(d)


def test_a_config_that_aborts_most_rounds_is_warned_about_and_recorded(tmp_path):
    lines = []
    cfg = _cfg(dp={"mode": "none"}, secagg={"min_survivors": 1.0, "dropout": {"masked_input": 0.1}})
    run(cfg, tmp_path, progress=False, log=lines.append)
    first_round = next(i for i, x in enumerate(lines) if x.startswith("round"))
    (warn,) = [x for x in lines[:first_round] if x.startswith("aborted rounds")]
    assert "WARNING" in warn and f"{1 - 0.9 ** 7:.3g}" in warn
    (rail,) = [g for g in json.loads((tmp_path / rundir.PRIVACY).read_text())["guard_rails"]
               if g["check"] == "abort_probability"]
    assert rail["warning"] and rail["value"] == pytest.approx(1 - 0.9 ** 7)
    aborted = sum(1 for m in rundir.read_jsonl(tmp_path / rundir.METRICS) if m["aborted"])
    assert 3 <= aborted <= 13  # Binomial(15, 0.52): the prediction is what happens
    assert "aborted rounds:" in (tmp_path / rundir.REPORT).read_text()


def test_a_config_whose_noise_swamps_the_signal_is_warned_about(tmp_path):
    lines = []
    cfg = _cfg(rounds=1, model={"hidden": 256}, dp={"mode": "client", "target_epsilon": 1.0, "l2_clip": 1.0},
               secagg={"min_survivors": 0.8})
    run(cfg, tmp_path, progress=False, log=lines.append)
    (warn,) = [x for x in lines if x.startswith("signal to noise")]
    assert "WARNING: the noise swamps the signal" in warn
    rails = json.loads((tmp_path / rundir.PRIVACY).read_text())["guard_rails"]
    snr = next(g for g in rails if g["check"] == "signal_to_noise")
    assert snr["warning"] and snr["value"] < SNR_WARN_BELOW and snr["inputs"]["dim"] > 16_000


def test_dp_sgd_guard_rail_counts_the_rounds_local_steps(tmp_path):
    lines = []
    cfg = _cfg(rounds=1, clients_per_round=5, dp={"mode": "sample", "target_epsilon": 3.0, "l2_clip": 1.0})
    run(cfg, tmp_path, progress=False, log=lines.append)
    snr = next(g for g in json.loads((tmp_path / rundir.PRIVACY).read_text())["guard_rails"]
               if g["check"] == "signal_to_noise")
    steps = snr["inputs"]["summands"] // 16
    assert steps >= 5 and snr["inputs"]["noise_std"] == pytest.approx(
        math.sqrt(steps) * json.loads((tmp_path / rundir.PRIVACY).read_text())["mechanisms"][0]["parameters"]
        ["noise_multiplier"])


def test_abort_probability_of_a_10000_client_population_matches_scipy():
    # the cross-device examples: math.comb(10000, k) * p**k overflowed a float
    from scipy import stats

    g = abort_probability(clients=10_000, min_survivors=180, drop_before_input=0.05, sampling_rate=0.03)
    assert g.value == pytest.approx(stats.binom.cdf(179, 10_000, 0.03 * 0.95), rel=1e-9)
    assert abort_probability(clients=10_000, min_survivors=9_000, drop_before_input=0.05).value == pytest.approx(
        stats.binom.cdf(8_999, 10_000, 0.95), rel=1e-9)
