"""`python -m fl_core audit`: the report, the server-view check, the canaries, and that it can fail.

Small runs in witness mode (secure_randomness = false), each run once per module. The runs that
must be flagged break the run itself, in test-only ways: the DDG noise sampler replaced by zeros
(privacy.json still claims epsilon), the mask PRG replaced by a no-op, an unmasked input planted
into the kept transcript, a forged unmask response.
"""

import hashlib
import json
import math
import shutil

import numpy as np
import pytest

import dp.distributed
import dp.xnoise
import secagg.hazmat.prg as prg
from tests.fl_core.overrides import config_with
from fl_core.audit.checks import (audit_run, correlation_p_value, holm, render_markdown, uniformity_p_value,
                                  witness_inputs, write_audit)
from fl_core.run.canaries import AUDIT_DIR, read_messages, read_trajectory, write_messages
from fl_core.cli import main as cli_main
from fl_core.run.loop import run
from fl_core.run.observer import StopAfterRelease, StopRun
from secagg import wire
from secagg.messages import MaskedInput, UnmaskResponse

QUIET = dict(progress=False, log=lambda m: None)

# Client-level DP at epsilon = 3 with 60 canaries (30 per round, like the clients' rate 1/2) in a
# 4810-parameter model. Noise on, the canaries measure mu ~ 0.5 * sqrt(6) / z ~ 0.33 with standard
# error sqrt(1/60 + 1/1000) = 0.13, far from the mu ~ 0.72 whose eps is 3; noise off, the only
# thing hiding a canary is the other canaries, mu ~ sqrt(d / 60) ~ 9 (eps > 30 needs mu > 4.6).
CLIENT = {"rounds": 6, "clients_per_round": 5, "secure_randomness": False, "seed": 0,
          "data": {"num_clients": 10}, "model": {"hidden": 64},
          "local": {"epochs": 1, "batch_size": 16, "momentum": 0.0}, "server": {"optimizer": "fedavg"},
          "dp": {"mode": "client", "target_epsilon": 3.0, "l2_clip": 0.5},
          "secagg": {"graph": "sparse", "min_survivors": 0.8, "dropout": {"masked_input": 0.05}},
          "audit": {"canaries": 60, "record_rounds": 1}}
TINY = {"rounds": 2, "clients_per_round": 4, "secure_randomness": False, "seed": 1,
        "data": {"num_clients": 6}, "model": {"hidden": 8},
        "local": {"epochs": 1, "batch_size": 16, "momentum": 0.0}, "dp": {"mode": "none"},
        "secagg": {"min_survivors": 0.5}}


def cfg_of(base, **over):
    return config_with(base, **over)


def zero_noise(shape, sigma, *, gen):
    return np.zeros(shape, dtype=np.int64)


def remove_client_noise(mp: pytest.MonkeyPatch) -> None:
    """Every client's DDG share becomes zero: drawn at encoding and drawn again from its seed."""
    mp.setattr(dp.distributed, "discrete_gaussian", zero_noise)
    mp.setattr(dp.xnoise, "discrete_gaussian", zero_noise)


def no_masks(acc, *, plus=(), minus=(), bits):
    return None


@pytest.fixture(scope="module")
def client_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("client_on")
    run(cfg_of(CLIENT), out, **QUIET)
    return out


@pytest.fixture(scope="module")
def client_report(client_run):
    rep = audit_run(client_run, log=lambda m: None)
    write_audit(client_run, rep)
    return rep


@pytest.fixture(scope="module")
def noiseless_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("client_noise_off")
    with pytest.MonkeyPatch.context() as mp:
        remove_client_noise(mp)
        run(cfg_of(CLIENT), out, **QUIET)
    return out


@pytest.fixture(scope="module")
def unmasked_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("unmasked")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prg, "add_masks", no_masks)  # clients send x_u; the server removes nothing
        run(cfg_of(TINY), out, **QUIET)
    return out


def copy_run(src, dst):
    shutil.copytree(src, dst)
    for name in ("audit.json", "audit.md", "audit_digests.md"):
        (dst / name).unlink(missing_ok=True)
    return dst


def replace_message(run_dir, round_no, pick, new_bytes_of, *, update_transcript=True):
    """Replace the first kept message ``pick`` accepts by ``new_bytes_of(message)``; optionally
    make transcript.jsonl agree, as a server that forges both would."""
    path = run_dir / AUDIT_DIR / f"round_{round_no:04d}.msgs"
    msgs = read_messages(path)
    i = next(i for i, (s, u, b) in enumerate(msgs) if pick(s, u, wire.decode(b)))
    s, u, b = msgs[i]
    msgs[i] = (s, u, new_bytes_of(wire.decode(b)))
    write_messages(path, msgs)
    if update_transcript:
        lines = [json.loads(line) for line in (run_dir / "transcript.jsonl").read_text().splitlines()]
        for rec in lines:
            if rec["round"] == round_no:
                rec["messages"][i] = [s, u, hashlib.sha256(msgs[i][2]).hexdigest()]
        (run_dir / "transcript.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    return u


# ---------------------------------------------------------------- statistics


def test_uniformity_test_passes_uniform_words_and_fails_unmasked_ones():
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**32, size=8192, dtype=np.uint64).astype(np.uint32)
    assert uniformity_p_value(words, 32)[0] > 1e-3
    small = (rng.normal(0, 1e6, size=8192).astype(np.int64) & 0xFFFFFFFF).astype(np.uint32)  # centered ints
    assert uniformity_p_value(small, 32)[0] < 1e-12
    low_zero = words & np.uint32(0xFFFFFF00)  # top bits uniform, bottom byte unmasked zeros
    assert uniformity_p_value(low_zero, 32)[0] < 1e-12
    four = rng.integers(0, 16, size=500).astype(np.uint32)
    p, bins = uniformity_p_value(four, 4)
    assert bins == 16 and p > 1e-3


def test_uniformity_p_values_are_uniform_under_the_null():
    """200 seeded uniform inputs: about 10 p-values below 0.05 expected; Binomial(200, 0.05) lies in
    [2, 22] with probability > 0.999. (The Bonferroni combination makes the test a little
    conservative, so fewer is fine.)"""
    small = sum(uniformity_p_value(np.random.default_rng(s).integers(0, 2**32, 2048, dtype=np.uint64), 32)[0] < 0.05
                for s in range(200))
    assert small <= 22


def test_correlation_test():
    rng = np.random.default_rng(1)
    x = (rng.normal(0, 1000, size=4096).astype(np.int64) & 0xFFFFFFFF).astype(np.uint32)
    y = rng.integers(0, 2**32, size=4096, dtype=np.uint64).astype(np.uint32)
    r, p = correlation_p_value(x, y, 32)
    assert abs(r) < 5 / math.sqrt(4096) and p > 1e-3
    assert correlation_p_value(x, x, 32) == (1.0, 0.0)
    # an 8-bit "mask" (std 74) on inputs of std 1000 leaves r ~ 0.997
    weak = ((x.astype(np.uint64) + rng.integers(0, 2**8, size=4096).astype(np.uint64)) & 0xFFFFFFFF).astype(np.uint32)
    assert correlation_p_value(x, weak, 32)[1] < 1e-12


def test_holm_known_answer():
    # sorted: 0.005 <= 0.05/4 and 0.01 <= 0.05/3 are rejected; 0.03 > 0.05/2 stops the procedure
    assert holm([0.01, 0.04, 0.03, 0.005], alpha=0.05) == [True, False, False, True]
    assert holm([0.2, 0.3], alpha=0.05) == [False, False]


# ---------------------------------------------------------------- a good run


def test_report_of_a_private_run(client_run, client_report):
    rep = client_report
    saved = json.loads((client_run / "audit.json").read_text())
    assert isinstance(saved["server_view_ok"], bool) and isinstance(saved["flagged"], bool)
    assert saved["theoretical_epsilon"] == pytest.approx(3.0, rel=1e-6)
    assert saved["delta"] == 1e-5
    assert not rep["flagged"], rep["reasons"]
    # (1) with DP on, the canary estimate stays at or below the claim
    assert 0 <= rep["empirical_epsilon"] <= rep["theoretical_epsilon"]
    cc = rep["empirical"]["client_canaries"]
    assert cc["inserted"] == 60 and cc["null"] == 1000 and cc["participation_mean"] == pytest.approx(3.0)
    assert cc["final_model"]["epsilon_low"] <= 3.0
    assert cc["null_vs_exact_cosine_distribution"]["p"] > 1e-3  # never-inserted canaries look random
    view = rep["server_view"]
    assert rep["server_view_ok"] and view["witness"]["ok"]
    assert {"digests", "well_formed", "uniformity", "no_double_reveal", "independence"} <= set(view["checks"])
    assert all(c["ok"] for c in view["checks"].values())
    assert view["checks"]["independence"]["inputs_tested"] == view["rounds"][0]["masked_inputs"] > 30
    # the ledger composes to the claim
    assert rep["ledger_epsilon"]["tightest"] == pytest.approx(3.0, rel=1e-6)
    assert rep["ledger_epsilon"]["releases"] == 6
    sa = rep["secure_aggregation"]
    assert sa["mode"] == "semi-honest" and sa["rounds"] and all("security_log2" in r for r in sa["rounds"])
    assert rep["dropouts"]["below_calibration"] == []
    assert len(rep["transcript"]) == 6 and all(t["messages"] > 0 for t in rep["transcript"])
    md = (client_run / "audit.md").read_text()
    for heading in ("## 1. Guarantees", "## 2. Dropouts", "## 3. Secure aggregation", "## 4. What the server saw",
                    "## 5. Empirical privacy", "## 6. Digests"):
        assert heading in md
    # verdict and guarantees first; the per-message digests in their own file, not in audit.md
    assert md.index("**Verdict") < md.index("## 1. Guarantees") < md.index("## 2. Dropouts")
    first = rep["transcript"][0]["digests"][0][2]
    assert first not in md and len(md.splitlines()) < 200
    digests = (client_run / "audit_digests.md").read_text()
    assert all(d in digests for t in rep["transcript"] for _, _, d in t["digests"])  # every message digest is listed
    # the guarantee states the one epsilon of privacy.json with its accountant
    claim = json.loads((client_run / "privacy.json").read_text())
    assert f"({claim['epsilon']:.4g}, 1e-05)-differential privacy" in md
    assert f"**reported** (privacy.json, {claim['epsilon_accountant'].upper()})" in md


def test_auditing_a_run_without_dp_says_there_is_no_guarantee(tmp_path):
    run(cfg_of(TINY), tmp_path, **QUIET)
    write_audit(tmp_path, audit_run(tmp_path, log=lambda m: None))
    md = (tmp_path / "audit.md").read_text()
    head = md[:md.index("## 1. Guarantees")]
    assert "no differential privacy: there is no DP guarantee to audit" in head


def test_trajectory_holds_the_model_before_and_after_every_round(client_run, client_report):
    traj = read_trajectory(client_run, client_report["empirical"]["client_canaries"]["dim"])
    assert traj.shape[0] == 7
    import torch
    from fl_core.config import load_config
    from fl_core.learn.models import build_model
    from fl_core.learn.params import model_to_vector
    cfg = load_config(client_run / "config.resolved.toml")
    model = build_model(cfg.model.name, in_features=64, hidden=cfg.model.hidden)
    model.load_state_dict(torch.load(client_run / "model.pt"))
    assert np.array_equal(traj[-1], model_to_vector(model))


def test_cli_exit_status_and_summary(client_run, noiseless_run, capsys):
    assert cli_main(["audit", str(client_run)]) == 0
    out = capsys.readouterr().out
    assert "not flagged" in out and "theoretical epsilon 3" in out
    assert cli_main(["audit", str(noiseless_run)]) == 1
    assert "FLAGGED" in capsys.readouterr().out


# ---------------------------------------------------------------- runs the audit must flag


def test_noise_silently_removed_is_flagged(noiseless_run):
    rep = audit_run(noiseless_run, log=lambda m: None)
    assert rep["theoretical_epsilon"] == pytest.approx(3.0, rel=1e-6)  # privacy.json still claims it
    assert rep["flagged"]
    # (2) far above the claim: more than 10x, and so is the low end of its interval
    assert rep["empirical_epsilon"] > 10 * rep["theoretical_epsilon"]
    assert rep["empirical"]["client_canaries"]["final_model"]["epsilon_low"] > rep["theoretical_epsilon"]
    assert any("canary estimate" in r for r in rep["reasons"])
    # the masking was fine: the server view passes, but the witness shows the run differs from its config
    assert rep["server_view_ok"]
    assert rep["server_view"]["witness"]["ok"] is False


def test_masking_off_fails_the_server_view(unmasked_run):
    rep = audit_run(unmasked_run, log=lambda m: None)
    assert rep["server_view_ok"] is False and rep["flagged"]
    checks = rep["server_view"]["checks"]
    n = rep["server_view"]["rounds"][0]["masked_inputs"]
    assert not checks["uniformity"]["ok"] and len(checks["uniformity"]["rejected"]) == n
    assert not checks["independence"]["ok"] and len(checks["independence"]["rejected"]) == n
    assert checks["digests"]["ok"]  # the transcript is faithful: it is the content that is wrong
    assert rep["theoretical_epsilon"] is None  # dp.mode = none: nothing is claimed


def test_one_planted_unmasked_input_is_caught(client_run, tmp_path):
    d = copy_run(client_run, tmp_path / "planted")
    truth = witness_inputs(d, [0], log=lambda m: None)[0]
    victim = replace_message(d, 1, lambda s, u, m: isinstance(m, MaskedInput) and u in truth,
                             lambda m: wire.encode(MaskedInput(m.session_id, m.sender, m.bits, truth[m.sender])))
    rep = audit_run(d, log=lambda m: None)
    assert rep["flagged"] and not rep["server_view_ok"]
    checks = rep["server_view"]["checks"]
    assert checks["digests"]["ok"]  # the forger also fixed transcript.jsonl
    assert [x["client"] for x in checks["uniformity"]["rejected"]] == [victim]
    assert rep["server_view"]["witness"]["ok"]  # the run itself was re-derived; only the view was forged
    assert [x["client"] for x in checks["independence"]["rejected"]] == [victim]


def test_a_transcript_that_disagrees_with_the_log_is_caught(client_run, tmp_path):
    d = copy_run(client_run, tmp_path / "edited")
    replace_message(d, 1, lambda s, u, m: isinstance(m, MaskedInput),
                    lambda m: wire.encode(MaskedInput(m.session_id, m.sender, m.bits, m.words ^ np.uint32(1))),
                    update_transcript=False)
    rep = audit_run(d, use_witness=False, log=lambda m: None)
    assert not rep["server_view"]["checks"]["digests"]["ok"] and rep["flagged"]


def test_a_double_reveal_is_caught(client_run, tmp_path):
    d = copy_run(client_run, tmp_path / "double")

    def forge(m):  # claim the first revealed b-share was a share of the mask key: both secrets of a survivor
        s0 = m.shares[0]
        shares = (type(s0)(s0.owner, 2, s0.share),) + m.shares[1:]
        return wire.encode(UnmaskResponse(m.session_id, m.sender, shares))

    replace_message(d, 1, lambda s, u, m: isinstance(m, UnmaskResponse) and m.shares, forge)
    rep = audit_run(d, use_witness=False, log=lambda m: None)
    checks = rep["server_view"]["checks"]
    assert not checks["no_double_reveal"]["ok"] and rep["flagged"]


def test_a_privacy_json_that_understates_epsilon_is_flagged(client_run, tmp_path):
    d = copy_run(client_run, tmp_path / "understated")
    priv = json.loads((d / "privacy.json").read_text())
    priv["epsilon"] = 1.0
    (d / "privacy.json").write_text(json.dumps(priv))
    rep = audit_run(d, use_witness=False, log=lambda m: None)
    assert rep["flagged"] and any("ledger" in r for r in rep["reasons"])


def test_a_wrong_epsilon_in_privacy_json_is_flagged_by_the_cross_check(client_run, tmp_path):
    """A claim 2% above the truth passes the ledger check (it is not an understatement) but not
    the cross-check by a second implementation; the true claim passes both."""
    rep = audit_run(client_run, use_witness=False, log=lambda m: None)
    assert rep["epsilon_crosscheck"]["ok"] is True and not any("recomputation" in r for r in rep["reasons"])
    d = copy_run(client_run, tmp_path / "overstated")
    priv = json.loads((d / "privacy.json").read_text())
    priv["epsilon"] *= 1.02
    (d / "privacy.json").write_text(json.dumps(priv))
    rep = audit_run(d, use_witness=False, log=lambda m: None)
    cross = rep["epsilon_crosscheck"]
    assert cross["ok"] is False and cross["relative_difference"] > 0.01
    assert rep["flagged"] and any("recomputation" in r and "more than 1%" in r for r in rep["reasons"])
    assert not any("ledger" in r for r in rep["reasons"])
    assert "**DISAGREE**" in render_markdown(rep)


def test_nothing_recorded_means_no_server_view(tmp_path):
    run(cfg_of(TINY, audit={"record_rounds": 0}), tmp_path, **QUIET)
    rep = audit_run(tmp_path, log=lambda m: None)
    assert rep["server_view_ok"] is False and rep["flagged"]
    assert "nothing to check" in rep["server_view"]["why"]


# ---------------------------------------------------------------- other modes


def test_secure_randomness_run_is_checked_without_a_witness(tmp_path):
    run(cfg_of(TINY, secure_randomness=True), tmp_path, **QUIET)
    rep = audit_run(tmp_path, log=lambda m: None)
    checks = rep["server_view"]["checks"]
    assert rep["server_view_ok"] and not rep["flagged"]
    assert checks["uniformity"]["ok"] and checks["independence"]["ok"] is None
    assert "secure_randomness" in checks["independence"]["why"]


def test_sample_level_one_run_audit(tmp_path):
    cfg = cfg_of(TINY, rounds=1, clients_per_round=3, dp={"mode": "sample", "target_epsilon": 3.0, "l2_clip": 1.0},
                 audit={"canary_examples": 60})
    run(cfg, tmp_path, **QUIET)
    rep = audit_run(tmp_path, log=lambda m: None)
    write_audit(tmp_path, rep)
    ec = rep["empirical"]["example_canaries"]
    assert ec["m"] == 60 and 0 < ec["included"] < 60
    assert 0 <= rep["empirical_epsilon"] <= rep["theoretical_epsilon"] and not rep["flagged"], rep["reasons"]
    assert rep["mode"] == "sample" and rep["unit_of_privacy"] == "example"
    # the per-client DP-SGD steps in the ledger compose to the worst client's claim under the claim's
    # accountant (one epsilon everywhere: the budget's accountant), and the tightest is not above it
    assert rep["epsilon_accountant"] == "rdp"
    assert rep["ledger_epsilon"]["rdp"] == pytest.approx(rep["theoretical_epsilon"], rel=1e-9)
    assert rep["ledger_epsilon"]["tightest"] <= rep["theoretical_epsilon"]
    assert "Sample-level canary examples" in (tmp_path / "audit.md").read_text()


def test_resumed_run_keeps_a_consistent_record(tmp_path):
    cfg = cfg_of(TINY, rounds=3)
    with pytest.raises(StopRun):
        run(cfg, tmp_path, observer=StopAfterRelease(1), **QUIET)
    run(cfg, tmp_path, resume=True, **QUIET)
    meta = json.loads((tmp_path / AUDIT_DIR / "meta.json").read_text())
    assert read_trajectory(tmp_path, meta["dim"]).shape[0] == 4
    rep = audit_run(tmp_path, log=lambda m: None)
    assert not rep["flagged"], rep["reasons"]
    assert rep["server_view"]["witness"]["ok"]


def test_config_rules_for_canaries():
    from fl_core.errors import ConfigFieldError
    with pytest.raises(ConfigFieldError, match="audit.canaries"):
        cfg_of(TINY, audit={"canaries": 10})  # dp.mode = none
    with pytest.raises(ConfigFieldError, match="audit.canary_examples"):
        cfg_of(CLIENT, audit={"canary_examples": 10})
    with pytest.raises(ConfigFieldError, match="audit.record_rounds"):
        cfg_of(TINY, audit={"record_rounds": -1})


# ---------------------------------------------------------------- the targets (slow: run with -m slow)

EXAMPLES = __import__("pathlib").Path(__file__).parents[3] / "examples"


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_eps3_example_estimate_stays_below_the_claim_and_noise_off_exceeds_10x(seed, tmp_path):
    """examples/audit_eps3.toml over 5 seeds: the canary estimate <= 3 with the noise on, > 30 with
    the noise removed (and flagged). Expected from the design: mu ~ 0.33 +- 0.1 (eps ~ 1.2) on,
    mu ~ sqrt(9610 / 100) ~ 7-8 (eps ~ 50) off."""
    import dataclasses
    from fl_core.config import load_config
    cfg = dataclasses.replace(load_config(EXAMPLES / "audit_eps3.toml"), seed=seed)
    run(cfg, tmp_path / "on", **QUIET)
    on = audit_run(tmp_path / "on", log=lambda m: None)
    with pytest.MonkeyPatch.context() as mp:
        remove_client_noise(mp)
        run(cfg, tmp_path / "off", **QUIET)
    off = audit_run(tmp_path / "off", log=lambda m: None)
    print(f"seed {seed}: on {on['empirical_epsilon']:.3f}, off {off['empirical_epsilon']:.1f}")
    assert not on["flagged"] and on["empirical_epsilon"] <= on["theoretical_epsilon"] == pytest.approx(3.0)
    assert off["flagged"] and off["empirical_epsilon"] > 10 * off["theoretical_epsilon"]


@pytest.mark.slow
def test_default_example_audit_takes_under_two_minutes(tmp_path):
    import time
    from fl_core.config import default_config
    run(default_config(), tmp_path, **QUIET)
    t0 = time.perf_counter()
    rep = audit_run(tmp_path, log=lambda m: None)
    write_audit(tmp_path, rep)
    seconds = time.perf_counter() - t0
    print(f"default example audit: {seconds:.1f} s")
    assert seconds < 120
    assert rep["server_view_ok"] and not rep["flagged"], rep["reasons"]


def test_the_committed_example_report_states_what_the_code_now_promises(tmp_path):
    """examples/audit_eps3_report is what users read first: its relation, trust statement and the
    honest-survivor calibration must be the ones a run of examples/audit_eps3.toml writes today
    (one round suffices: none of these depend on the number of rounds)."""
    import dataclasses
    from fl_core.config import load_config
    report = EXAMPLES / "audit_eps3_report"
    committed = json.loads((report / "audit.json").read_text())["mechanisms"][0]
    cfg = dataclasses.replace(load_config(EXAMPLES / "audit_eps3.toml"), rounds=1)
    run(cfg, tmp_path, **QUIET)
    now = json.loads((tmp_path / "privacy.json").read_text())["mechanisms"][0]
    for key in ("adjacency", "neighbouring_relation", "trust"):
        assert committed[key] == now[key], key
    for key in ("calibrated_for_survivors", "calibrated_for_honest_survivors", "tolerated_colluding_clients"):
        assert committed["parameters"][key] == now["parameters"][key], key
    text = (report / "audit.md").read_text()
    assert now["trust"] in text and now["neighbouring_relation"] in text
