"""End-to-end rounds: exact sums under dropouts at every stage, aborts, and the parties' refusals."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

from secagg import wire
from secagg.client import ClientParty
from secagg.config import GraphKind, RoundConfig
from secagg.errors import (AbortedError, AuthenticationError, ConfigError, DuplicateMessageError, InputError,
                           LocalProtocolError, RefusedRequestError, RemoteProtocolError,
                           UnexpectedMessageError, UnknownClientError, WrongSessionError)
from secagg.messages import EncryptedShare, ForwardedShares, MaskedInput, UnmaskRequest
from secagg.server import ServerParty
from secagg.state import Stage
from secagg.simulate import DropoutSchedule, ProtocolStage, Transcript, plain_sum, simulate

from .helpers import expected_outcome, make_round

GRAPHS = [(GraphKind.COMPLETE, None), (GraphKind.SPARSE, 8)]


def run_and_check(cfg, inputs, schedule, keys=None):
    result = simulate(cfg, inputs, dropouts=schedule, signing_keys=keys)
    expected = expected_outcome(cfg, schedule)
    if expected is None:
        assert result.aborted is not None and result.aggregate is None
    else:
        assert result.aborted is None, result.aborted
        assert result.survivors == expected
        np.testing.assert_array_equal(result.aggregate, plain_sum(inputs, expected, cfg.bits))
    return result, expected


@pytest.mark.parametrize("graph,k", GRAPHS)
@pytest.mark.parametrize("n", [3, 4, 9, 20, 50])
def test_exact_sum_without_dropouts(n, graph, k):
    cfg, inputs, _ = make_round(n, graph=graph, k=k, bits=20, seed=n)
    result, expected = run_and_check(cfg, inputs, DropoutSchedule.none())
    assert expected == tuple(range(n))


@pytest.mark.parametrize("graph,k", GRAPHS)
@pytest.mark.parametrize("stage", list(ProtocolStage))
@pytest.mark.parametrize("n", [4, 12, 50])
def test_exact_sum_with_dropouts_before_every_stage(n, stage, graph, k):
    cfg, inputs, _ = make_round(n, graph=graph, k=k, bits=32, seed=3 * n + int(stage))
    dropped = {1} if n < 10 else {1, 5, n - 1}
    result, expected = run_and_check(cfg, inputs, DropoutSchedule({stage: frozenset(dropped)}))
    assert expected is not None, "this schedule is recoverable and must give the exact sum"
    if stage <= ProtocolStage.MASKED_INPUT:
        assert not set(result.survivors) & dropped
    else:  # dropped after sending the masked input: still in the sum
        assert set(dropped) <= set(result.survivors)


@pytest.mark.parametrize("graph,k", GRAPHS)
def test_dropped_after_sharing_has_pairwise_masks_removed(graph, k):
    """Dropped right before stage 2: its neighbours' pairwise masks must be unmasked via s^SK."""
    cfg, inputs, _ = make_round(14, graph=graph, k=k, seed=11)
    res, expected = run_and_check(cfg, inputs, DropoutSchedule.at(MASKED_INPUT={0, 7}))
    assert set(res.stage_survivors["collect-shares"]) >= {0, 7} and not {0, 7} & set(res.survivors)


@pytest.mark.parametrize("active", [False, True])
def test_every_single_client_drop_at_every_stage_n3(active):
    """n = 3, t = 2: enumerate each client dropping before each stage: exact or a clean abort."""
    cfg, inputs, keys = make_round(3, t=2, active=active, seed=5)
    for u, stage in itertools.product(range(3), ProtocolStage):
        run_and_check(cfg, inputs, DropoutSchedule({stage: frozenset({u})}), keys)


@given(st.integers(3, 12), st.data())
@settings(max_examples=25, deadline=None)
def test_random_dropout_patterns_give_exact_sum_or_clean_abort(n, data):
    graph, k = data.draw(st.sampled_from(GRAPHS))
    stage_of = data.draw(st.lists(st.sampled_from([None, *ProtocolStage]), min_size=n, max_size=n))
    before = {}
    for u, s in enumerate(stage_of):
        if s is not None:
            before.setdefault(s, set()).add(u)
    cfg, inputs, _ = make_round(n, graph=graph, k=k, min_survivors=data.draw(st.integers(2, n)), seed=n)
    run_and_check(cfg, inputs, DropoutSchedule({s: frozenset(v) for s, v in before.items()}))


@pytest.mark.parametrize("graph,k", GRAPHS)
def test_active_mode_exact_with_dropouts(graph, k):
    cfg, inputs, keys = make_round(12, graph=graph, k=k, active=True, seed=2)
    for sched in [DropoutSchedule.none(), DropoutSchedule.at(MASKED_INPUT={3}, CONSISTENCY={4}),
                  DropoutSchedule.at(UNMASK={0, 9})]:
        res, expected = run_and_check(cfg, inputs, sched, keys)
        assert expected is not None


def test_abort_below_min_survivors_reveals_nothing():
    cfg, inputs, _ = make_round(10, min_survivors=8, seed=1)
    res = simulate(cfg, inputs, dropouts=DropoutSchedule.at(MASKED_INPUT={1, 2, 3}))
    assert isinstance(res.aborted, AbortedError) and "min_survivors=8" in str(res.aborted)
    assert res.aggregate is None
    assert not [m for m in res.transcript if m[0] >= ProtocolStage.CONSISTENCY]  # no share was revealed


def test_abort_when_a_dropped_clients_shares_cannot_be_recovered():
    cfg, inputs, _ = make_round(3, t=2, seed=9)
    # 0 drops after sharing; only 1 of its 2 share holders stays: unrecoverable
    res = simulate(cfg, inputs, dropouts=DropoutSchedule.at(MASKED_INPUT={0}, UNMASK={1}))
    assert res.aborted is not None and res.aggregate is None


# ------------------------------------------------------------------ driving parties by hand

class Round:
    """Step a round by hand: clients and server exchanging bytes."""

    def __init__(self, n=5, **kw):
        self.cfg, self.inputs, self.keys = make_round(n, **kw)
        self.clients = {u: ClientParty(self.cfg, u, self.inputs[u],
                                       signing_key=self.keys[u] if self.keys else None)
                        for u in self.cfg.client_ids}
        self.server = ServerParty(self.cfg)

    def stage(self, msgs, skip=()):
        out = []
        for m in msgs:
            if m.receiver in skip:
                continue
            out += self.server.receive(wire.encode(self.clients[m.receiver].receive(wire.encode(m))))
        if out or self.server.result is not None:
            return out
        return self.server.close_stage()

    def start(self):
        out = []
        for c in self.clients.values():
            out += self.server.receive(wire.encode(c.start()))
        return out


def test_refuses_to_reveal_both_shares_and_stays_aborted():
    r = Round(5)
    forwarded = r.stage(r.start())
    unmask = r.stage(forwarded)
    req = unmask[0]
    evil = UnmaskRequest(req.session_id, req.receiver, req.survivors, (req.survivors[1],))
    client = r.clients[req.receiver]
    with pytest.raises(RefusedRequestError, match="both shares"):
        client.receive(wire.encode(evil))
    with pytest.raises(AbortedError):
        client.receive(wire.encode(req))


def test_refuses_survivor_list_that_grew_or_omits_itself():
    r = Round(6)
    unmask = r.stage(r.stage(r.start(), skip={5}))   # 5 never sent shares
    req = unmask[0]
    grown = UnmaskRequest(req.session_id, req.receiver, tuple(sorted(req.survivors + (5,))), ())
    with pytest.raises(RefusedRequestError, match="not a subset"):
        r.clients[req.receiver].receive(grown)
    req2 = unmask[1]
    without_me = UnmaskRequest(req2.session_id, req2.receiver,
                               tuple(u for u in req2.survivors if u != req2.receiver), (req2.receiver,))
    with pytest.raises(RefusedRequestError):
        r.clients[req2.receiver].receive(without_me)


def test_tampered_ciphertext_is_rejected_and_the_client_stays_usable():
    r = Round(5)
    forwarded = r.stage(r.start())
    m = forwarded[0]
    bad_ct = bytearray(m.shares[0].ciphertext)
    bad_ct[10] ^= 1
    tampered = ForwardedShares(m.session_id, m.receiver,
                               (EncryptedShare(m.shares[0].peer, bytes(bad_ct)),) + m.shares[1:])
    with pytest.raises(AuthenticationError):
        r.clients[m.receiver].receive(wire.encode(tampered))
    # swapping two ciphertexts (right bytes, wrong sender) is caught by the associated data
    swapped = ForwardedShares(m.session_id, m.receiver, (EncryptedShare(m.shares[0].peer, m.shares[1].ciphertext),)
                              + m.shares[1:])
    with pytest.raises(AuthenticationError):
        r.clients[m.receiver].receive(swapped)
    unmask = r.stage(forwarded)   # the genuine message still works
    r.stage(unmask)
    np.testing.assert_array_equal(r.server.result.aggregate, plain_sum(r.inputs, range(5), 32))


def test_wrong_session_replay_out_of_stage_and_duplicates():
    r = Round(4)
    other = Round(4, seed=77)
    first = r.clients[0].start()
    r.server.receive(wire.encode(first))
    with pytest.raises(DuplicateMessageError):
        r.server.receive(wire.encode(first))  # replayed within the round
    with pytest.raises(WrongSessionError):
        r.server.receive(wire.encode(other.clients[1].start()))  # a message of another session
    for u in (1, 2, 3):
        forwarded_keys = r.server.receive(wire.encode(r.clients[u].start()))
    with pytest.raises(UnexpectedMessageError):
        r.server.receive(wire.encode(first))  # a stage-0 message in stage 1
    c = r.clients[0]
    share_msg = c.receive(wire.encode(forwarded_keys[0]))
    with pytest.raises(UnexpectedMessageError):
        c.receive(wire.encode(forwarded_keys[0]))  # the same broadcast again
    with pytest.raises(UnknownClientError):
        c.receive(wire.encode(forwarded_keys[1]))  # addressed to someone else
    with pytest.raises(LocalProtocolError):
        c.start()  # local misuse
    assert share_msg.sender == 0


def test_duplicate_client_ids_and_bad_config_are_config_errors():
    with pytest.raises(ConfigError, match="duplicates"):
        RoundConfig.new(client_ids=[1, 2, 2], dim=4, bits=32, threshold=1, min_survivors=2)
    with pytest.raises(ConfigError, match="threshold"):
        RoundConfig.new(client_ids=[1, 2, 3], dim=4, bits=32, threshold=3, min_survivors=2)
    with pytest.raises(ConfigError, match="min_survivors"):
        RoundConfig.new(client_ids=[1, 2, 3], dim=4, bits=32, threshold=2, min_survivors=1)
    with pytest.raises(ConfigError, match="even"):
        RoundConfig.new(client_ids=range(10), dim=4, bits=32, threshold=2, min_survivors=2,
                        graph=GraphKind.SPARSE, k=3)


def test_wrong_inputs_are_input_errors():
    cfg, inputs, _ = make_round(3, dim=8, bits=12)
    c = ClientParty(cfg, 0)
    for bad, match in [(np.zeros(7, np.uint32), "shape"), (np.zeros(8, np.float64), "dtype"),
                       (np.full(8, 4096, np.uint32), "outside")]:
        with pytest.raises(InputError, match=match):
            c.set_input(bad)
    with pytest.raises(LocalProtocolError):
        ClientParty(cfg, 99)


def test_server_rejects_bad_masked_inputs_and_still_finishes():
    r = Round(4, dim=8, bits=16)
    masked = []
    for m in r.stage(r.start()):
        masked.append(r.clients[m.receiver].receive(wire.encode(m)))
    sid = r.cfg.session_id
    for bad in [MaskedInput(sid, 0, 16, np.zeros(7, np.uint32)), MaskedInput(sid, 0, 12, np.zeros(8, np.uint32)),
                MaskedInput(sid, 9, 16, np.zeros(8, np.uint32))]:
        with pytest.raises(RemoteProtocolError):
            r.server.receive(wire.encode(bad))
    out = []
    for m in masked:
        out += r.server.receive(wire.encode(m))
    r.stage(out)
    np.testing.assert_array_equal(r.server.result.aggregate, plain_sum(r.inputs, range(4), 16))


def test_swapped_public_key_is_caught_in_active_mode():
    r = Round(4, active=True)
    bcasts = r.start()
    m = bcasts[0]
    evil_peer = type(m.peers[0])(m.peers[0].client_id, m.peers[0].channel_pk, bytes([5] * 32), m.peers[0].round_digest,
                                 m.peers[0].signature)
    evil = type(m)(m.session_id, m.receiver, (evil_peer,) + m.peers[1:])
    with pytest.raises(AuthenticationError):
        r.clients[m.receiver].receive(wire.encode(evil))


def test_forged_share_is_outvoted_when_more_than_t_shares_exist():
    """One client reveals garbage; with more than t holders the server still gets the exact sum."""
    r = Round(7, t=3)
    unmask = r.stage(r.stage(r.start()))
    out = []
    for m in unmask:
        reply = r.clients[m.receiver].receive(wire.encode(m))
        if m.receiver == 2:
            s = reply.shares[0]
            forged = bytearray(s.share)
            forged[-1] ^= 0x5A
            reply = type(reply)(reply.session_id, reply.sender,
                                (type(s)(s.owner, s.kind, bytes(forged)),) + reply.shares[1:])
        out += r.server.receive(wire.encode(reply))
    np.testing.assert_array_equal(r.server.result.aggregate, plain_sum(r.inputs, range(7), 32))
    assert r.server.result.forged_shares_from == (2,)


def test_forged_share_with_exactly_t_shares_aborts_cleanly():
    r = Round(3, t=2)
    unmask = r.stage(r.stage(r.start()), skip=set())
    replies = []
    for m in unmask:
        replies.append(r.clients[m.receiver].receive(wire.encode(m)))
    # only 2 of the 3 answer, so each secret has exactly t = 2 shares; one of them is forged
    reply = replies[0]
    s = reply.shares[0]
    forged = bytearray(s.share)
    forged[-1] ^= 1
    reply = type(reply)(reply.session_id, reply.sender, (type(s)(s.owner, s.kind, bytes(forged)),) + reply.shares[1:])
    r.server.receive(wire.encode(reply))
    r.server.receive(wire.encode(replies[1]))
    with pytest.raises(AbortedError):
        r.server.close_stage()
    assert r.server.result is None


@pytest.mark.parametrize("bits", [12, 32])
def test_masked_input_is_indistinguishable_from_uniform(bits):
    """Chi-square: a client's masked input, for an all-zero input, is uniform over [0, 2**bits)."""
    d = 1 << 16
    cfg, _, _ = make_round(5, dim=d, bits=bits, seed=4)
    inputs = {u: np.zeros(d, dtype=np.uint32) for u in cfg.client_ids}
    res = simulate(cfg, inputs)
    masked = [wire.decode(b) for s, u, b in res.transcript if s == ProtocolStage.MASKED_INPUT and u == 0][0]
    values = masked.words.view(np.uint8) if bits == 32 else masked.words
    counts = np.bincount(values, minlength=256 if bits == 32 else 2**bits)
    assert stats.chisquare(counts).pvalue > 1e-3
    np.testing.assert_array_equal(res.aggregate, np.zeros(d, np.uint32))


def test_transcript_and_byte_counts():
    cfg, inputs, _ = make_round(6, dim=1000, bits=20)
    res = simulate(cfg, inputs, transcript=Transcript.DIGEST)
    assert len(res.transcript) == 6 * 4 and all(len(b) == 32 for _, _, b in res.transcript)
    assert all(v <= 1000 * 20 / 8 + 1024 for v in res.masked_input_bytes.values())
    assert res.stages[ProtocolStage.MASKED_INPUT].upload_bytes == sum(res.masked_input_bytes.values())


def test_simulate_decodes_with_the_encoding_and_refuses_a_mismatched_one():
    from secagg.encoding import FixedPointEncoding
    from secagg.errors import OverflowRiskError
    cfg, _, _ = make_round(6, dim=50, bits=24)
    enc = FixedPointEncoding.for_sum(bits=24, clip=2.0, max_clients=6)
    rng = np.random.default_rng(0)
    xs = {u: rng.uniform(-2, 2, 50) for u in cfg.client_ids}
    res = simulate(cfg, {u: enc.encode(x, rng=rng) for u, x in xs.items()}, encoding=enc,
                   dropouts=DropoutSchedule.at(MASKED_INPUT={2}))
    plain = sum(xs[u] for u in res.survivors)
    assert np.max(np.abs(res.decoded - plain)) <= len(res.survivors) / enc.scale
    with pytest.raises(OverflowRiskError, match="n=6"):
        simulate(cfg, {}, encoding=FixedPointEncoding.for_sum(bits=24, clip=2.0, max_clients=5))
    with pytest.raises(ConfigError, match="bits"):
        simulate(cfg, {}, encoding=FixedPointEncoding.for_sum(bits=20, clip=2.0, max_clients=6))
