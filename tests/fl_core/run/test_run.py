"""The training loop end to end: accuracy, resume, budget stop, outputs, CLI errors."""

import json

import numpy as np
import pytest
import torch

from fl_core.cli import main as cli_main
from fl_core.config import default_config, load_config
from fl_core.run.loop import run
from tests.fl_core.overrides import config_with
from fl_core.run.observer import StopAfterRelease, StopRun

FAST = {"rounds": 4, "clients_per_round": 10, "secure_randomness": False,
        "data": {"num_clients": 20}, "model": {"hidden": 16},
        "local": {"epochs": 1, "lr": 0.1, "batch_size": 16, "momentum": 0.0}}


def cfg_of(**over):
    return config_with(FAST, **over)


@pytest.mark.plots  # checks plots.png among the files of a run
def test_nonprivate_secure_run_reaches_90_percent(tmp_path):
    cfg = cfg_of(rounds=6, dp={"mode": "none"}, server={"optimizer": "fedavg", "lr": 1.0}, model={"hidden": 64},
                 local={"epochs": 3, "lr": 0.2, "momentum": 0.9},
                 secagg={"graph": "sparse", "dropout": {"masked_input": 0.1}})
    s = run(cfg, tmp_path, progress=False, log=lambda m: None)
    assert s.final_accuracy >= 0.90, s.final_accuracy
    assert s.epsilon is None
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all({"round", "accuracy", "loss", "epsilon", "delta", "sampled", "survivors"} <= set(r) for r in rows)
    assert any(r["survivors"] < r["sampled"] for r in rows)  # dropouts happened and were survived
    for name in ("config.resolved.toml", "privacy.json", "plots.png", "model.pt", "transcript.jsonl"):
        assert (tmp_path / name).exists(), name
    assert load_config(tmp_path / "config.resolved.toml") == cfg


def test_weighted_mean_equals_plain_fedavg_without_secagg_noise(tmp_path):
    """Secure aggregation changes nothing but rounding: same model as the plain (insecure) sum."""
    a = run(cfg_of(rounds=2, dp={"mode": "none"}), tmp_path / "a", progress=False, log=lambda m: None)
    b = run(cfg_of(rounds=2, dp={"mode": "none"}, secagg={"enabled": False}), tmp_path / "b",
            progress=False, log=lambda m: None)
    ma, mb = torch.load(tmp_path / "a" / "model.pt"), torch.load(tmp_path / "b" / "model.pt")
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k])
    assert a.final_accuracy == b.final_accuracy


@pytest.mark.parametrize("mode", ["client", "none"])
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, mode):
    cfg = cfg_of(dp={"mode": mode, "target_epsilon": 8.0}, secagg={"min_survivors": 0.8})
    full = run(cfg, tmp_path / "full", progress=False, log=lambda m: None)
    with pytest.raises(StopRun):
        run(cfg, tmp_path / "cut", progress=False, log=lambda m: None, observer=StopAfterRelease(2))
    resumed = run(cfg, tmp_path / "cut", resume=True, progress=False, log=lambda m: None)
    m1, m2 = torch.load(tmp_path / "full" / "model.pt"), torch.load(tmp_path / "cut" / "model.pt")
    for k in m1:
        assert torch.equal(m1[k], m2[k]), k
    assert resumed.epsilon == full.epsilon
    strip = lambda ms: [{k: v for k, v in m.items() if "seconds" not in k} for m in ms]  # noqa: E731
    assert strip(resumed.metrics) == strip(full.metrics)
    assert [m["round"] for m in resumed.metrics] == [1, 2, 3, 4]  # no round lost or counted twice


def test_fresh_noise_release_lost_in_a_crash_is_still_charged(tmp_path):
    cfg = cfg_of(secure_randomness=True, dp={"mode": "client", "target_epsilon": 8.0})
    with pytest.raises(StopRun):
        run(cfg, tmp_path, progress=False, log=lambda m: None, observer=StopAfterRelease(1))
    notes = []
    s = run(cfg, tmp_path, resume=True, progress=False, log=notes.append)
    privacy = json.loads((tmp_path / "privacy.json").read_text())
    # the budget (= the target for 4 releases) is spent by rounds 1, 2 (lost), 2 (re-run) and 3
    assert privacy["mechanisms"][0]["parameters"]["releases_charged"] == 4
    assert any("charged" in n for n in notes)
    assert s.stopped_by_budget and s.rounds_run == 3 and s.epsilon <= 8.0 + 1e-9


def test_run_stops_before_exceeding_the_budget(tmp_path):
    cfg = cfg_of(rounds=10, dp={"mode": "client", "target_epsilon": None, "noise_multiplier": 2.0,
                                "epsilon_budget": 4.0})
    s = run(cfg, tmp_path, progress=False, log=lambda m: None)
    assert s.stopped_by_budget and 0 < s.rounds_run < 10
    assert s.epsilon <= 4.0
    privacy = json.loads((tmp_path / "privacy.json").read_text())
    assert privacy["unit_of_privacy"] == "client" and privacy["delta"] == 1e-5


def test_sample_level_dp_run_records_per_client_epsilon(tmp_path):
    cfg = cfg_of(rounds=2, dp={"mode": "sample", "target_epsilon": 3.0, "l2_clip": 1.0})
    s = run(cfg, tmp_path, progress=False, log=lambda m: None)
    privacy = json.loads((tmp_path / "privacy.json").read_text())
    mech = privacy["mechanisms"][0]
    assert mech["unit_of_privacy"] == "example"
    assert 0 < s.epsilon <= 3.0 and s.epsilon == pytest.approx(mech["epsilon_worst_client"])
    assert len(mech["epsilon_per_client"]) >= 10


def test_cli_names_every_bad_field(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = 0\n[local]\nlr = -1\n[dp]\ndelta = 2\n[nosuch]\nx = 1\n")
    assert cli_main(["run", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    for field in ("rounds", "local.lr", "dp.delta", "nosuch"):
        assert field in err, field


def test_default_example_is_valid_and_matches_examples_dir():
    from pathlib import Path
    cfg = default_config()
    assert cfg.dp.mode.value == "client" and cfg.data.dataset.value == "digits"
    shipped = Path(__file__).parents[3] / "examples" / "digits_default.toml"
    assert load_config(shipped) == cfg


def test_personalization_every_r_rounds_and_at_the_end(tmp_path):
    cfg = cfg_of(rounds=4, dp={"mode": "none"}, data={"partition": "dirichlet", "alpha": 0.1},
                 personalize={"steps": 5, "every": 2})
    run(cfg, tmp_path, progress=False, log=lambda m: None)
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [("personalization" in r) for r in rows] == [False, True, False, False]
    final = json.loads((tmp_path / "personalization.json").read_text())
    assert len(final["personal_acc"]) == 20 and 0 <= final["worst10_personal"] <= final["mean_personal"] <= 1


def test_metrics_report_seconds_in_training_and_in_secure_aggregation(tmp_path):
    run(cfg_of(rounds=2, dp={"mode": "none"}), tmp_path, progress=False, log=lambda m: None)
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        assert r["training_seconds"] > 0 and r["secure_aggregation_seconds"] > 0
        assert r["training_seconds"] + r["secure_aggregation_seconds"] <= r["seconds"]
