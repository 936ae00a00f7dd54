"""The random fault campaign (``python -m secagg.faults``) and its judge.

200 random rounds of up to 24 clients (the attack campaign's default size) run in the default suite
and 5000 of up to 60 clients (the campaign's default) in a ``slow`` test: every one must end with
the exact sum or a typed abort (wrong = crashed = leaked = 0). The judge itself is tested to fail
on a wrong sum, a crash, a leak, a state change on rejection and a false accusation, and fault-free
trials are checked against the independent oracle in helpers.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from secagg.tools import faults
from secagg.client import ClientParty
from secagg.errors import RemoteProtocolError
from secagg.messages import ShareKind

from .helpers import expected_outcome, make_round

SEED = 20251126


def _check_campaign(trials, seed, max_n=60):
    fault_free = []

    def on_trial(spec, rep, net, drops):
        if not net.faults:
            expected = expected_outcome(rep.config, drops)
            got = None if rep.result is None else rep.result.survivors
            fault_free.append((spec.index, expected, got))
    r = faults.campaign(trials, seed, max_n=max_n, on_trial=on_trial)
    assert r["wrong"] == 0 and r["crashed"] == 0 and r["leaked"] == 0, r["failures"]
    assert r["trials"] == trials == sum(r[k] for k in faults.OUTCOMES)
    # not vacuous: most rounds finish, some abort, faults of every kind hit and were caught
    assert r["exact"] + r["exact_altered_input"] >= trials // 3 and r["aborted"] >= trials // 20
    assert set(r["faults_injected"]) == set(faults.FAULT_KINDS)
    assert {"DecodeError", "AuthenticationError", "WrongSessionError", "UnexpectedMessageError",
            "DuplicateMessageError", "UnknownClientError"} <= set(r["rejections_by_error"])
    assert set(r["tampered_but_accepted_by_type"]) - {"MaskedInput", "AdvertiseKeys", "ShareKeys", "UnmaskResponse",
                                                      "KeysBroadcast", "ConsistencyRequest", "UnmaskRequest"} == set()
    # fault-free trials: exactly the survivors (or the abort) that the independent oracle predicts
    assert len(fault_free) >= trials // 10
    for index, expected, got in fault_free:
        assert got == expected, (index, expected, got)
    return r


def test_campaign_200_trials():
    # n log-uniform in [3, 24]: sparse degrees up to 16 as at n <= 60, in a third of the time
    r = _check_campaign(200, SEED, max_n=24)
    assert r["max_n"] == 24


@pytest.mark.slow
def test_campaign_5000_trials():
    # the same seed as benchmarks/results/faults_5000.json (`python -m secagg.faults --trials 5000 --seed 5000`)
    _check_campaign(5000, 5000)


def test_trials_are_reproducible():
    for i in (3, 17):
        a = faults.run_trial(SEED, i)
        b = faults.run_trial(SEED, i)
        assert a[0] == b[0] and a[1].outcome() == b[1].outcome() and a[2].faults == b[2].faults
        if a[1].result is not None:
            np.testing.assert_array_equal(a[1].result.aggregate, b[1].result.aggregate)


def test_cli_writes_json_with_the_required_keys(tmp_path, capsys):
    out = tmp_path / "f.json"
    assert faults.main(["--trials", "6", "--seed", "4", "--max-n", "12", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert {"trials", "exact", "aborted", "wrong", "crashed", "seconds", "breakdown"} <= set(r)
    assert r["trials"] == 6 and r["wrong"] == r["crashed"] == 0
    assert "wrong" in capsys.readouterr().out  # the table


# ------------------------------------------------------------------ the judge can fail

def _clean():
    cfg, inputs, _ = make_round(5, t=3, dim=8, bits=16, seed=1)
    rep = faults.run_round(cfg, inputs)
    assert rep.outcome() == "exact"
    return rep


def test_judge_flags_a_wrong_sum():
    rep = _clean()
    rep.result.aggregate[3] ^= 1
    assert rep.outcome() == "wrong" and "aggregate differs" in rep.problems()[0]


def test_judge_flags_a_sum_over_too_few_and_a_false_accusation():
    rep = _clean()
    rep.result.survivors = rep.result.survivors[:1]
    assert rep.outcome() == "wrong"
    rep = _clean()
    rep.result.forged_shares_from = (2,)
    assert rep.outcome() == "wrong" and "named as forgers" in rep.problems()[0]


def test_judge_flags_both_shares_revealed():
    rep = _clean()
    rep.revealed[(0, ShareKind.MASK_KEY)] = {1, 2, 3}   # t = 3 holders revealed s_0^SK as well as b_0
    assert rep.leaked() == [0] and rep.outcome() == "wrong"


def test_judge_flags_untyped_errors_and_state_changes(monkeypatch):
    cfg, inputs, _ = make_round(5, t=3, dim=8, bits=16, seed=2)

    def boom(self, msg):
        raise KeyError("bug")
    monkeypatch.setattr(ClientParty, "_on_unmask", boom)
    rep = faults.run_round(cfg, inputs)
    assert rep.outcome() == "crashed" and "KeyError" in rep.crashes[0]
    monkeypatch.undo()

    def moves_then_rejects(self, msg):
        self.stage = type(self.stage).DONE
        raise RemoteProtocolError("rejected, but the stage moved")
    monkeypatch.setattr(ClientParty, "_on_shares", moves_then_rejects)
    rep = faults.run_round(cfg, inputs)
    assert rep.outcome() == "crashed" and "changed stage" in rep.crashes[0]
