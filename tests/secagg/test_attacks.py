"""The malicious-server attacks of issue 11, driven against the real ClientParty / ServerParty.

Each attack is run as the issue describes it; the test asserts that the attacker, trying to
compute inputs and partial sums from everything it obtained, recovers nothing (typed refusal or
abort), and where a weakened setting (the explicitly insecure test setting, or semi-honest mode
against a deviating server) lets it through, that it does recover: so the attacker is real and
these tests can fail.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from secagg.client import ClientParty
from secagg.config import ClientPolicy, GraphKind, Mode, RoundConfig
from secagg.errors import ConfigError, RefusedRequestError, RoundMismatchError
from secagg.graph import choose_k_t
from secagg.hazmat.sign import SigningKey
from secagg.server import ServerParty
from secagg.simulate import DropoutSchedule, simulate
from secagg.tools import attacks

from .helpers import make_round


def scripted(n, *, k, t, active, attacks_=(), target=0, corrupt=(), c=0, change=None, seed=0, insecure=False,
             min_survivors=2):
    """One attack trial with chosen parameters (the campaign's driver and attacker)."""
    rng = np.random.default_rng(seed)
    keys = {u: SigningKey.from_private(rng.bytes(32)) for u in range(n)}
    graph = GraphKind.COMPLETE if k >= n - 1 else GraphKind.SPARSE
    cfg = RoundConfig(session_id=rng.bytes(32), client_ids=tuple(range(n)), dim=4, bits=16, threshold=t,
                      min_survivors=min_survivors, graph=graph, k=None if graph is GraphKind.COMPLETE else k,
                      verify_keys={u: s.public for u, s in keys.items()} if active else None,
                      max_corrupt_neighbours=c, insecure_weak_threshold=insecure)
    inputs = {u: rng.integers(0, 2**16, size=4, dtype=np.uint64).astype(np.uint32) for u in range(n)}
    trial = attacks.Trial(0, n, graph, cfg.k, t, c, cfg.mode, tuple(attacks_), change, target, tuple(corrupt))
    return attacks.execute(trial, cfg, keys, inputs, rng)


def test_the_attacker_computes_the_sum_of_an_honest_round_and_nothing_less():
    for active in (False, True):
        tr = scripted(12, k=6, t=4, active=active)
        assert tr.outcome == "exact" and tr.recovered == [] and not tr.refusals


# ------------------------------------------------------------------ attack 1: withheld shares, one list

@pytest.mark.parametrize("n,dropout,corrupt,kt", [(100, 0.1, 0.05, (16, 6)), (20, 0.1, 0.05, (4, 2)),
                                                  (10, 0.3, 0.05, (6, 3)), (1000, 0.3, 0.05, (74, 24))])
def test_withholding_configs_of_the_issue_are_refused_in_active_mode(n, dropout, corrupt, kt):
    """The semi-honest rule's (k, t) all have 2t <= k: RoundConfig refuses them in active mode."""
    k, t = choose_k_t(n, dropout=dropout, corrupt=corrupt)
    assert (k, t) == kt
    keys = {u: bytes([1]) * 31 + bytes([u % 256]) for u in range(n)}
    with pytest.raises(ConfigError, match=r"active mode needs 2t > k \+ c"):
        RoundConfig.new(client_ids=range(n), dim=4, bits=16, threshold=t, min_survivors=2,
                        graph=GraphKind.SPARSE if k < n - 1 else GraphKind.COMPLETE, k=k, verify_keys=keys)


def test_withholding_at_the_active_rules_parameters_recovers_nothing():
    """n = 100, choose_k_t(active=True): (26, 16), c = 5. The target masks with only t neighbours
    (A), A is declared dropped (A's own members are shown A as survivors), and c corrupt neighbours
    of the target hand the server everything: the server gets fewer than t shares of b_target."""
    choice = choose_k_t(100, dropout=0.1, corrupt=0.05, active=True)
    assert tuple(choice) == (26, 16) and choice.corrupt_neighbours == 5
    cfg_probe = RoundConfig(session_id=bytes(32), client_ids=tuple(range(100)), dim=4, bits=16, threshold=16,
                            min_survivors=2, graph=GraphKind.SPARSE, k=26)
    corrupt = cfg_probe.neighbours(0)[:5]
    tr = scripted(100, k=26, t=16, c=5, active=True, attacks_=("withhold",), corrupt=corrupt, seed=5)
    assert tr.recovered == [] and tr.outcome == "aborted"
    assert tr.refusals["RefusedRequestError"] >= 1   # the target refuses the list; nobody can unmask it


def test_withholding_recovers_the_input_when_2t_is_at_most_k():
    """The same attack where the rule is switched off: semi-honest mode at n = 5, t = 2 (the issue's
    case; outside what that mode claims), and active mode with the insecure test setting."""
    tr = scripted(5, k=4, t=2, active=False, attacks_=("withhold",), seed=1)
    assert tr.outcome == "recovered" and "[0]" in tr.recovered[0]
    tr = scripted(12, k=11, t=5, active=True, attacks_=("withhold",), seed=2, insecure=True)
    assert tr.outcome == "recovered"


# ------------------------------------------------------------------ attack 2: per-client parameters

def test_per_client_threshold_is_caught_by_the_round_digest():
    """n = 100, (k, t) = (12, 7), active: the target is given t = 1 under the same session id and the
    genuine verify keys. Its round digest differs, so the first signed advertisement of a neighbour
    makes it abort (RoundMismatchError), and its own advertisement is refused by the server."""
    cfg, inputs, keys = make_round(100, t=7, k=12, graph=GraphKind.SPARSE, active=True, seed=3)
    weak = RoundConfig(**{**{f: getattr(cfg, f) for f in ("session_id", "client_ids", "dim", "bits", "graph", "k",
                                                            "verify_keys", "min_survivors")},
                          "threshold": 1, "insecure_weak_threshold": True})
    assert weak.round_digest != cfg.round_digest
    server = ServerParty(cfg)
    target = ClientParty(weak, 0, inputs[0], signing_key=keys[0])
    with pytest.raises(RoundMismatchError):
        server.receive(target.start())
    honest = {u: ClientParty(cfg, u, inputs[u], signing_key=keys[u]) for u in cfg.neighbours(0)}
    peers = tuple(c.start().peer_keys() for c in honest.values())
    from secagg.messages import KeysBroadcast
    with pytest.raises(RoundMismatchError, match=f"neighbour {min(honest)}"):
        target.receive(KeysBroadcast(cfg.session_id, 0, peers))
    with pytest.raises(Exception, match="aborted"):
        target.receive(KeysBroadcast(cfg.session_id, 0, peers))


@pytest.mark.parametrize("change", attacks.SETUP_CHANGES)
def test_per_client_setups_recover_nothing(change):
    for active in (False, True):
        tr = scripted(14, k=6, t=4, active=active, attacks_=("per_client_setup",), change=change, seed=7,
                      min_survivors=4)
        assert tr.recovered == [] and tr.outcome == "aborted", (change, active, tr.refusals)


def test_two_disjoint_survivor_lists_do_not_both_collect_neighbour_signatures():
    """n = 100, (12, 7): half the clients are shown the target as a survivor, half as dropped."""
    tr = scripted(100, k=12, t=7, active=True, attacks_=("split_lists",), seed=8)
    assert tr.recovered == [] and tr.refusals["RefusedRequestError"] > 0


# ------------------------------------------------------------------ attack 3: server-supplied verify keys

def test_a_setup_with_the_servers_verify_keys_is_refused_naming_the_client():
    cfg, _, keys = make_round(6, t=4, active=True, seed=9)
    policy = ClientPolicy(verify_keys=cfg.verify_keys, min_threshold=4, min_k=5, min_survivors=2, min_bits=32)
    policy.check(cfg)
    fake = dict(cfg.verify_keys)
    fake[3] = SigningKey.from_private(bytes(32)).public
    fake[5] = SigningKey.from_private(bytes([1]) * 32).public
    forged = RoundConfig.new(client_ids=cfg.client_ids, dim=cfg.dim, bits=32, threshold=4, min_survivors=2,
                             verify_keys=fake, session_id=cfg.session_id)
    with pytest.raises(RefusedRequestError, match="verify key of client 3 differs"):
        policy.check(forged)
    semi = RoundConfig.new(client_ids=cfg.client_ids, dim=cfg.dim, bits=32, threshold=4, min_survivors=2,
                           session_id=cfg.session_id)
    with pytest.raises(RefusedRequestError, match="semi-honest"):
        policy.check(semi)
    for field, value, floor in [("threshold", 3, "threshold t=3"), ("min_survivors", 1 + 0, None),
                                ("bits", 16, "bits=16")]:
        if floor is None:
            continue
        weaker = RoundConfig.new(**{"client_ids": cfg.client_ids, "dim": cfg.dim, "bits": 32, "threshold": 4,
                                    "min_survivors": 2, "verify_keys": cfg.verify_keys, field: value,
                                    "insecure_weak_threshold": field == "threshold"})
        with pytest.raises(RefusedRequestError, match=floor if field != "threshold" else "insecure|threshold"):
            policy.check(weaker)


def test_key_substitution_recovers_nothing_in_active_mode_and_everything_in_semi_honest_mode():
    tr = scripted(8, k=7, t=5, active=True, attacks_=("key_substitution",), seed=10)
    assert tr.recovered == [] and tr.refusals["AuthenticationError"] >= 1
    tr = scripted(8, k=7, t=5, active=False, attacks_=("key_substitution",), seed=10)
    assert tr.outcome == "recovered"   # semi-honest mode trusts the relay: documented, out of its model


# ------------------------------------------------------------------ attack 4: disconnected survivors

def _two_components(cfg):
    """Clients whose dropout splits the Harary ring into two arcs of equal size."""
    ring, half, n = cfg.neighbour_graph.ring, cfg.k // 2, cfg.n
    return {ring[i] for i in range(half)} | {ring[(n // 2 + i) % n] for i in range(half)}


@pytest.mark.parametrize("n,k,t", [(8, 2, 2), (12, 4, 2)])
def test_disconnected_survivors_abort_the_round(n, k, t):
    """n = 8, k = 2 (t = 1 is refused now: ConfigError) and n = 12, k = 4, t = 2: clients dropping
    after sharing split the survivors' graph in two; the honest server aborts before any share is
    revealed (the sum of each component would be the partial sum the issue recovered)."""
    if k == 2:
        with pytest.raises(ConfigError, match="threshold must be in"):
            make_round(n, t=1, k=k, graph=GraphKind.SPARSE)
    cfg, inputs, _ = make_round(n, t=t, k=k, graph=GraphKind.SPARSE, seed=11)
    gone = _two_components(cfg)
    survivors = set(cfg.client_ids) - gone
    assert len(cfg.neighbour_graph.components(survivors)) == 2
    res = simulate(cfg, inputs, dropouts=DropoutSchedule.at(MASKED_INPUT=gone))
    if k == 2:   # t = k = 2: each dropped client leaves a neighbour short of t: aborted anyway
        assert res.aborted is not None
    else:
        assert res.aborted is not None and "disconnected" in str(res.aborted)
    assert res.aggregate is None


def test_a_client_refuses_a_list_whose_component_is_below_min_survivors():
    tr = scripted(16, k=4, t=3, active=True, attacks_=("disconnected",), seed=12, min_survivors=6)
    assert tr.recovered == [] and tr.refusals["RefusedRequestError"] > 0


# ------------------------------------------------------------------ the campaign

def _check(r, trials):
    assert r["trials"] == trials and r["recovered"] == 0, r["failures"]
    assert set(r) >= {"trials", "recovered", "aborted", "exact"}
    # not vacuous: every attack ran, most were refused, some rounds ended exactly, and out of the
    # model (semi-honest mode against a deviating server) the same attacker does recover inputs
    assert set(r["by_attack"]) == set(attacks.ATTACKS)
    assert r["aborted"] >= trials // 3 and r["recovered_out_of_model"] >= 1


def test_campaign_200_trials(tmp_path):
    out = tmp_path / "a.json"
    assert attacks.main(["--trials", "200", "--seed", "11", "--max-n", "16", "--json", str(out)]) == 0
    _check(json.loads(out.read_text()), 200)


@pytest.mark.slow
def test_campaign_2000_trials():
    _check(attacks.campaign(2000, 2000), 2000)
