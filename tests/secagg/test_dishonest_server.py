"""A dishonest server, as tests: what each attack gets, what the clients refuse, and where the limits are.

The attacker here is the server itself (it holds every public key, every message, and whatever
the clients reveal). Each attack either fails with a typed refusal or leaves the server short of
a threshold (``InsufficientSharesError``), and where an attack works that is shown too, with its
precondition, so these tests can fail. The recurring bound is docs/graph.md section 6: honest
neighbours of v each reveal at most one kind of share of v, so a server (with c_v colluding
neighbours of v) gets t shares of both b_v and s_v^SK only if 2t <= (honest holders) + 2 c_v.
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest

from secagg import client as client_mod, wire
from secagg.client import ClientParty, bound_share_key, mask_sign
from secagg.config import GraphKind
from secagg.errors import (AuthenticationError, ConfigError, InsufficientSharesError, RefusedRequestError,
                           UnexpectedMessageError)
from secagg.tools.faults import run_round
from secagg.hazmat import aead, kex, prg, shamir
from secagg.messages import (ConsistencyRequest, EncryptedShare, ForwardedShares, KeysBroadcast,
                             MaskedInput, PeerKeys, ShareKind, SignedBy, UnmaskRequest)
from secagg.server import ServerParty
from secagg.simulate import ProtocolStage, plain_sum

from .helpers import make_round


class Manual:
    """One round stepped by hand; the test plays the server's part wherever it wants to lie."""

    def __init__(self, n, *, t, active, graph=GraphKind.COMPLETE, k=None, seed=0, dim=16, bits=32, insecure=False):
        self.cfg, self.inputs, self.keys = make_round(n, t=t, active=active, graph=graph, k=k, seed=seed,
                                                      dim=dim, bits=bits, insecure=insecure)
        self.clients = {u: ClientParty(self.cfg, u, self.inputs[u], signing_key=self.keys[u] if active else None)
                        for u in self.cfg.client_ids}
        self.server = ServerParty(self.cfg)
        self.masked: dict[int, MaskedInput] = {}

    def ask(self, msg):
        """Deliver a server message as bytes; the client's reply (as an object)."""
        reply = wire.decode(wire.encode(self.clients[msg.receiver].receive(wire.encode(msg))))
        if isinstance(reply, MaskedInput):
            self.masked[reply.sender] = reply
        return reply

    def honest_until_inputs(self, skip_shares=()):
        """Stages 0-2 run honestly; returns the server's next messages (stage 3 or 4 requests)."""
        pending = [m for c in self.clients.values() for m in self.server.receive(wire.encode(c.start()))]
        pending = [m for p in pending for m in self.server.receive(wire.encode(self.ask(p)))]
        out = [m for p in pending for m in self.server.receive(wire.encode(self.ask(p)))]
        assert set(self.masked) == set(self.cfg.client_ids)
        return out

    def mask_pk(self, u):
        return self.server._keys[u].mask_pk  # public: the server holds every advertised key


def recover_input(r: Manual, u: int, b: bytes, sk: bytes) -> np.ndarray:
    """What a server holding b_u and s_u^SK computes from y_u: y_u - PRG(b_u) - sum of u's pairwise masks."""
    words = r.masked[u].words.copy()
    plus, minus = [], [b]
    private = kex.private_key(sk)
    for v in r.cfg.neighbours(u):  # every neighbour shared in these rounds
        seed = kex.pairwise_mask_seed(private, r.mask_pk(v), session_id=r.cfg.session_id, u=u, v=v)
        (minus if mask_sign(u, v) > 0 else plus).append(seed)
    prg.add_masks(words, plus=plus, minus=minus, bits=r.cfg.bits)
    return words


def shares_of(responses, owner, kind):
    return [shamir.Share.from_bytes(s.share) for resp in responses for s in resp.shares
            if s.owner == owner and s.kind is kind]


# ------------------------------------------------------------------ different survivor lists

def test_split_survivor_lists_need_a_threshold_the_config_refuses():
    """n = 7, complete graph (k = 6): t = 3 has 2t <= k, so RoundConfig refuses active mode."""
    with pytest.raises(ConfigError, match=r"2t > k \+ c.*t >= 4"):
        make_round(7, t=3, active=True)


@pytest.mark.parametrize("t,attack_works", [(2, True), (4, False)])
def test_split_survivor_lists_active_mode(t, attack_works):
    """n = 7, complete graph (k = 6): the server shows v = 0 as a survivor to A and as dropped to B,
    to collect b_0 shares from A and s_0^SK shares from B. Each client of a group must see t
    signatures of its own neighbours on its own list (its own does not count). t = 4 (2t > k):
    nobody in A = {0..3} or B = {4,5,6} sees 4 others of its group, every client refuses, and the
    server holds no share of b_0 or s_0^SK. t = 2 (2t <= k, allowed only by the explicitly insecure
    test setting) with A = {0,1,2}, B = {3..6}: both groups reach t and x_0 is recovered."""
    r = Manual(7, t=t, active=True, seed=10 + t, insecure=attack_works)
    sid = r.cfg.session_id
    assert all(isinstance(m, ConsistencyRequest) for m in r.honest_until_inputs())
    everyone = r.cfg.client_ids
    without_0 = tuple(u for u in everyone if u != 0)
    A, B = ((0, 1, 2), (3, 4, 5, 6)) if attack_works else ((0, 1, 2, 3), (4, 5, 6))
    sig_a = [SignedBy(u, r.ask(ConsistencyRequest(sid, u, everyone)).signature) for u in A]
    sig_b = [SignedBy(u, r.ask(ConsistencyRequest(sid, u, without_0)).signature) for u in B]
    b_responses, sk_responses = [], []
    for group, survivors, dropped, seen, out in [(A[1:], everyone, (), len(A) - 1, b_responses),
                                                 (B, without_0, (0,), len(B) - 1, sk_responses)]:
        for u in group:
            request = UnmaskRequest(sid, u, survivors, dropped, tuple(sorted(sig_a + sig_b, key=lambda s: s.client_id)))
            if attack_works:
                out.append(r.ask(request))
            else:
                with pytest.raises(RefusedRequestError, match=f"client {u}: {seen} valid signatures"):
                    r.ask(request)
    b_shares = shares_of(b_responses, 0, ShareKind.SELF_MASK)
    sk_shares = shares_of(sk_responses, 0, ShareKind.MASK_KEY)
    if attack_works:
        assert len(b_shares) == 2 and len(sk_shares) == 4
        b = shamir.reconstruct(b_shares, threshold=t)
        sk = shamir.reconstruct(sk_shares[:t], threshold=t)
        np.testing.assert_array_equal(recover_input(r, 0, b, sk), r.inputs[0])
    else:
        assert b_shares == sk_shares == []


@pytest.mark.parametrize("t,attack_works", [(3, True), (4, False)])
def test_split_survivor_lists_semi_honest_mode_is_undetectable(t, attack_works):
    """Semi-honest mode has no stage 3: each request is self-consistent, so no client can tell that
    others saw another list, and every client answers. The guard left is the count: each honest
    neighbour of v reveals one kind of share of v, so with k = 6 holders the server gets t of both
    only if 2t <= 6 (t = 3: x_0 recovered; t = 4: 3 of each, InsufficientSharesError)."""
    r = Manual(7, t=t, active=False, seed=20 + t)
    sid = r.cfg.session_id
    assert all(isinstance(m, UnmaskRequest) for m in r.honest_until_inputs())
    everyone = r.cfg.client_ids
    without_0 = tuple(u for u in everyone if u != 0)
    b_responses = [r.ask(UnmaskRequest(sid, u, everyone, ())) for u in (1, 2, 3)]      # no error: undetected
    sk_responses = [r.ask(UnmaskRequest(sid, u, without_0, (0,))) for u in (4, 5, 6)]  # no error: undetected
    b_shares = shares_of(b_responses, 0, ShareKind.SELF_MASK)
    sk_shares = shares_of(sk_responses, 0, ShareKind.MASK_KEY)
    assert len(b_shares) == len(sk_shares) == 3
    if attack_works:
        x0 = recover_input(r, 0, shamir.reconstruct(b_shares, threshold=t), shamir.reconstruct(sk_shares, threshold=t))
        np.testing.assert_array_equal(x0, r.inputs[0])
    else:
        with pytest.raises(InsufficientSharesError):
            shamir.reconstruct(sk_shares, threshold=t)
        with pytest.raises(InsufficientSharesError):
            shamir.reconstruct(b_shares, threshold=t)


# ------------------------------------------------------------------ both shares of one client

@pytest.mark.parametrize("active", [False, True])
def test_both_shares_of_one_client_are_never_revealed(active):
    r = Manual(5, t=3, active=active, seed=30)
    sid = r.cfg.session_id
    requests = r.honest_until_inputs()
    if active:
        sigs = tuple(SignedBy(m.receiver, r.ask(m).signature) for m in requests)
        requests = [UnmaskRequest(sid, m.receiver, m.survivors, (), sigs) for m in requests]
    req = requests[0]
    # one request naming client 2 as survivor and as dropped: refused, and the client aborts
    with pytest.raises(RefusedRequestError, match="both shares"):
        r.ask(dataclasses.replace(req, dropped=(2,)))
    # a second request after a first one: the client has forgotten the shares it held
    first = r.ask(requests[1])
    assert {s.kind for s in first.shares} == {ShareKind.SELF_MASK}
    assert r.clients[requests[1].receiver]._held == {}
    with pytest.raises(UnexpectedMessageError):
        r.ask(dataclasses.replace(requests[1], survivors=tuple(u for u in req.survivors if u != 2), dropped=(2,)))


def test_survivor_list_with_repeats_is_refused():
    """Object API: a survivor list repeating the client's own id, (u, u, u), passed the
    min_survivors count and made the client reveal s^SK shares of every other client, all of which
    had sent their inputs. Fixed: lists must be strictly increasing, as on the wire."""
    r = Manual(5, t=2, active=False, seed=31)
    req = r.honest_until_inputs()[1]
    u = req.receiver
    with pytest.raises(RefusedRequestError, match="strictly increasing"):
        r.clients[u].receive(UnmaskRequest(req.session_id, u, (u, u, u), tuple(v for v in req.survivors if v != u)))


def test_one_signature_repeated_counts_once():
    """Active mode, t = 3: a request carrying one valid signature three times was accepted as three
    signatures before the fix; signers now count once."""
    r = Manual(5, t=3, active=True, seed=32)
    requests = r.honest_until_inputs()
    sigs = {m.receiver: r.ask(m).signature for m in requests}
    req = requests[0]
    one = SignedBy(1, sigs[1])
    with pytest.raises(RefusedRequestError, match="1 valid signatures"):
        r.clients[req.receiver].receive(UnmaskRequest(req.session_id, req.receiver, req.survivors, (), (one, one, one)))


# ------------------------------------------------------------------ replays of an earlier session

def _transcript(cfg, inputs, keys, seed):
    seen = []
    rng = np.random.default_rng(seed)
    run_round(cfg, inputs, signing_keys=keys, network=lambda e: seen.append(e) or (e,), randbytes=lambda m: rng.bytes(m))
    return seen


@pytest.mark.parametrize("active", [False, True])
def test_earlier_session_replayed_is_rejected_and_the_round_is_exact(active):
    """Every message of session 1, delivered before its session-2 counterpart: WrongSessionError each
    time, and session 2 still ends exactly with every client."""
    cfg1, inputs, keys = make_round(5, t=3, active=active, seed=40)
    cfg2 = dataclasses.replace(cfg1, session_id=bytes([41]) * 32)
    old = {(e.stage, e.connection, e.to_server): e.data for e in _transcript(cfg1, inputs, keys, 1)}

    def network(env):
        return (dataclasses.replace(env, data=old[(env.stage, env.connection, env.to_server)]), env)
    rep = run_round(cfg2, inputs, signing_keys=keys, network=network)
    assert rep.outcome() == "exact" and rep.result.survivors == cfg2.client_ids
    assert set(rep.hostile_results) == {"WrongSessionError"} and len(rep.hostile_results) == len(old)


# (stage, to_server) -> what a session-1 message with session 2's id written into its header does.
# "rejected": the named error; "forger": accepted, then caught as a forged share at reconstruction;
# "altered": accepted and undetectable (semi-honest mode: y_u is signed only in active mode).
# RoundMismatchError: the old message carries session 1's round digest (rejected by the server;
# a client seeing it in a neighbour's advertisement aborts, and counts as a dropout).
REWRITTEN_REPLAY = {
    (ProtocolStage.KEYS, True): {True: "RoundMismatchError", False: "RoundMismatchError"},
    (ProtocolStage.SHARES, False): {True: "RoundMismatchError", False: "RoundMismatchError"},
    (ProtocolStage.MASKED_INPUT, False): {True: "AuthenticationError", False: "AuthenticationError"},
    (ProtocolStage.MASKED_INPUT, True): {True: "AuthenticationError", False: "altered"},
    (ProtocolStage.CONSISTENCY, True): {True: "AuthenticationError"},
    (ProtocolStage.UNMASK, False): {True: "RefusedRequestError", False: None},
    (ProtocolStage.UNMASK, True): {True: "forger", False: "forger"},
}


@pytest.mark.parametrize("active,stage,to_server", [(a, s, d) for (s, d), by_mode in REWRITTEN_REPLAY.items()
                                                    for a in by_mode])
def test_earlier_session_with_rewritten_header_is_caught_by_the_cryptography(active, stage, to_server):
    expect = REWRITTEN_REPLAY[(stage, to_server)][active]
    cfg1, inputs, keys = make_round(6, t=3, active=active, seed=42)
    cfg2 = dataclasses.replace(cfg1, session_id=bytes([43]) * 32)
    old = {(e.stage, e.connection, e.to_server): e.data for e in _transcript(cfg1, inputs, keys, 1)}
    target = (stage, 1, to_server)
    done = []

    def network(env):
        if (env.stage, env.connection, env.to_server) == target and not done:
            done.append(1)
            forged = old[target][:4] + cfg2.session_id + old[target][36:]
            return (dataclasses.replace(env, data=forged), dataclasses.replace(env, only_if_rejected=True))
        return (env,)
    rep = run_round(cfg2, inputs, signing_keys=keys, network=network, randbytes=np.random.default_rng(2).bytes)
    assert done and not rep.crashes and not rep.leaked()
    assert rep.outcome() in ("exact", "exact_altered_input", "aborted"), rep.problems()
    if expect == "altered":
        assert rep.hostile_results == ["accepted"] and rep.outcome() == "exact_altered_input"
    elif expect == "forger":
        assert rep.hostile_results == ["accepted"] and rep.outcome() == "exact"
        assert rep.result.forged_shares_from == (1,)
    elif expect is not None:
        assert rep.hostile_results == [expect]
        if expect == "RoundMismatchError" and not to_server:
            assert rep.outcome() == "exact" and 1 not in rep.result.survivors   # client 1 aborted
        elif expect != "RefusedRequestError":
            assert rep.outcome() == "exact" and rep.result.survivors == cfg2.client_ids


# ------------------------------------------------------------------ stages out of order

@pytest.mark.parametrize("active", [False, True])
def test_stages_out_of_order_are_rejected_before_anything_is_revealed(active):
    """Each client, in each stage, is first handed every server message of its *other* stages (from
    a clean run of the same round): all rejected with UnexpectedMessageError, in particular an
    unmask request before the client has masked its input. The round then ends exactly."""
    cfg, inputs, keys = make_round(5, t=3, active=active, seed=50)
    clean = [e for e in _transcript(cfg, inputs, keys, 3) if not e.to_server]

    def network(env):
        if env.to_server:
            return (env,)
        others = [dataclasses.replace(e, connection=env.connection) for e in clean
                  if e.connection == env.connection and e.stage is not env.stage]
        return (*others, env)
    rep = run_round(cfg, inputs, signing_keys=keys, network=network, randbytes=np.random.default_rng(3).bytes)
    stages = 4 if active else 3
    assert rep.outcome() == "exact" and rep.result.survivors == cfg.client_ids
    assert rep.hostile_results.count("UnexpectedMessageError") == cfg.n * stages * (stages - 1)
    assert set(rep.hostile_results) == {"UnexpectedMessageError"}
    assert not rep.revealed.keys() - {(o, ShareKind.SELF_MASK) for o in cfg.client_ids}


# ------------------------------------------------------------------ swapped public keys

def _fake_peer_keys(r: Manual, w: int, rng):
    """The server's own key pairs, advertised to w as the keys of each of w's neighbours."""
    fakes = {v: (kex.KeyPair.from_private(rng.bytes(32)), kex.KeyPair.from_private(rng.bytes(32)))
             for v in r.cfg.neighbours(w)}
    return fakes, KeysBroadcast(r.cfg.session_id, w, tuple(PeerKeys(v, c.public, s.public, r.cfg.round_digest, bytes(64) if r.keys else b"")
                                                         for v, (c, s) in sorted(fakes.items())))


def test_swapped_keys_man_in_the_middle_semi_honest_mode_reads_one_input():
    """Semi-honest mode trusts the server to relay keys. A server that advertises its own key pairs
    as all of w's neighbours decrypts every share w sends (so learns b_w and s_w^SK) and knows every
    pairwise mask seed of w: it recovers x_w exactly. This is what signing keys are for."""
    r = Manual(5, t=3, active=False, seed=60)
    rng = np.random.default_rng(60)
    w, sid = 0, r.cfg.session_id
    for c in r.clients.values():
        c.start()
    fakes, evil = _fake_peer_keys(r, w, rng)
    w_mask_pk, w_channel_pk = r.clients[w]._mask.public, r.clients[w]._channel.public  # public, sent in stage 0
    share_keys = r.clients[w].receive(wire.encode(evil))   # accepted: nothing to check it against
    b_shares, sk_shares, forwarded = [], [], []
    for s in share_keys.shares:
        c, m = fakes[s.peer]
        key = bound_share_key(kex.share_key(c.private, w_channel_pk, session_id=sid, u=s.peer, v=w),
                              session_id=sid, u=s.peer, u_mask_pk=m.public, v=w, v_mask_pk=w_mask_pk)
        plain = aead.open_(key, s.ciphertext, round_digest=r.cfg.round_digest, stage=1, sender=w, receiver=s.peer)
        sk_shares.append(shamir.Share.from_bytes(plain[8:45]))
        b_shares.append(shamir.Share.from_bytes(plain[45:]))
        # shares "from" each fake neighbour, so that w goes on to mask its input
        junk = shamir.split(bytes(32), threshold=1, xs=[w + 1])[0].to_bytes()
        forwarded.append(EncryptedShare(s.peer, aead.seal(key, struct.pack(">II", s.peer, w) + junk + junk,
                                                          round_digest=r.cfg.round_digest, stage=1, sender=s.peer,
                                                          receiver=w)))
    y = r.clients[w].receive(wire.encode(ForwardedShares(sid, w, tuple(forwarded))))
    b, sk = shamir.reconstruct(b_shares, threshold=3), shamir.reconstruct(sk_shares, threshold=3)
    words = y.words.copy()
    plus, minus = [], [b]
    for v, (_, m) in fakes.items():
        seed = kex.pairwise_mask_seed(kex.private_key(sk), m.public, session_id=sid, u=w, v=v)
        (minus if mask_sign(w, v) > 0 else plus).append(seed)
    prg.add_masks(words, plus=plus, minus=minus, bits=r.cfg.bits)
    np.testing.assert_array_equal(words, r.inputs[w])


def test_swapped_keys_are_caught_in_active_mode_and_the_genuine_message_still_works():
    r = Manual(5, t=3, active=True, seed=61)
    rng = np.random.default_rng(61)
    w = 0
    pending = [m for c in r.clients.values() for m in r.server.receive(wire.encode(c.start()))]
    genuine = next(m for m in pending if m.receiver == w)
    _, evil = _fake_peer_keys(r, w, rng)
    p0 = genuine.peers[0]
    other = genuine.peers[1]
    for bad in [evil,  # keys the server made up (signatures cannot be forged)
                dataclasses.replace(genuine, peers=(dataclasses.replace(p0, mask_pk=other.mask_pk),) + genuine.peers[1:]),
                # a genuine signed entry of one client relabelled as another's: the id is signed too
                dataclasses.replace(genuine, peers=(dataclasses.replace(other, client_id=p0.client_id),) + genuine.peers[1:])]:
        with pytest.raises(AuthenticationError):
            r.clients[w].receive(wire.encode(bad))
    pending = [m for p in pending for m in r.server.receive(wire.encode(r.ask(p)))]
    while pending:
        pending = [m for p in pending for m in r.server.receive(wire.encode(r.ask(p)))]
    np.testing.assert_array_equal(r.server.result.aggregate, plain_sum(r.inputs, r.cfg.client_ids, 32))


@pytest.mark.parametrize("bound", [True, False])
def test_relayed_mask_key_that_differs_is_detected_not_a_wrong_sum(bound, monkeypatch):
    """One relayed mask key off by one bit (a faulty relay or a lying server without a full
    man-in-the-middle). The share AEAD key is bound to both mask keys (fix in client.py), so the
    two clients' shares no longer decrypt and the round goes on without them, exactly. Without the
    binding the pairwise masks do not cancel and the sum is silently wrong (checked below)."""
    cfg, inputs, keys = make_round(6, t=2, active=False, seed=62)

    def flip_first_peer_mask_key(env):
        if env.stage is ProtocolStage.SHARES and not env.to_server and env.connection == 0:
            m = wire.decode(env.data)
            p = m.peers[0]
            bad = dataclasses.replace(p, mask_pk=bytes([p.mask_pk[0] ^ 1]) + p.mask_pk[1:])
            return (dataclasses.replace(env, data=wire.encode(dataclasses.replace(m, peers=(bad,) + m.peers[1:]))),)
        return (env,)
    if not bound:  # the code before the fix
        monkeypatch.setattr(client_mod, "bound_share_key", lambda key, **_: key)
    rep = run_round(cfg, inputs, network=flip_first_peer_mask_key)
    if bound:
        assert rep.outcome() == "exact" and set(rep.result.survivors) == set(cfg.client_ids) - {0, 1}
        assert rep.rejections["AuthenticationError"] == 2   # clients 0 and 1 reject each other's share
    else:
        assert rep.outcome() == "wrong" and rep.problems() == ["aggregate differs from the plain sum of the survivors"]


# ------------------------------------------------------------------ dropped after sending the input

def test_client_reported_dropped_after_sending_its_input_refuses_and_b_is_never_revealed():
    """Active mode: the server claims v = 2 dropped although y_2 arrived. v refuses to sign a list
    without itself; the others sign it and reveal s_2^SK shares, never b_2 shares, and a later
    request naming v as a survivor is refused (it differs from what they signed) or out of stage."""
    r = Manual(6, t=3, active=True, seed=70)
    sid = r.cfg.session_id
    r.honest_until_inputs()
    v = 2
    lie = tuple(u for u in r.cfg.client_ids if u != v)
    with pytest.raises(RefusedRequestError, match="not in the survivor list"):
        r.ask(ConsistencyRequest(sid, v, lie))
    sigs = tuple(SignedBy(u, r.ask(ConsistencyRequest(sid, u, lie)).signature) for u in lie)
    responses = [r.ask(UnmaskRequest(sid, u, lie, (v,), sigs)) for u in lie[:-1]]
    with pytest.raises(RefusedRequestError, match="differs from the one it signed"):
        r.ask(UnmaskRequest(sid, lie[-1], r.cfg.client_ids, (), sigs))
    with pytest.raises(UnexpectedMessageError):
        r.ask(UnmaskRequest(sid, lie[0], r.cfg.client_ids, (), sigs))
    assert shares_of(responses, v, ShareKind.SELF_MASK) == []
    with pytest.raises(InsufficientSharesError):
        shamir.reconstruct(shares_of(responses, v, ShareKind.SELF_MASK), threshold=3)
    sk = shamir.reconstruct(shares_of(responses, v, ShareKind.MASK_KEY), threshold=3)
    assert kex.public_from_private(sk) == r.mask_pk(v)  # s_2^SK the server may have: y_2 stays masked by PRG(b_2)


# ------------------------------------------------------------------ collusion with t-1 neighbours

@pytest.mark.parametrize("colluders_short_of_t,works", [(1, False), (0, True)])
def test_server_with_t_minus_1_colluding_neighbours_cannot_unmask(colluders_short_of_t, works):
    """SecAgg+ graph n = 12, k = 6, t = 4; u = 0 survives. The server gets b_0 legitimately (the
    unmask stage), and from colluding neighbours their decrypted shares of s_0^SK. t-1 colluders:
    InsufficientSharesError for s_0^SK (and for b_0 from colluders alone), x_0 stays hidden. t
    colluders: s_0^SK is rebuilt (its public key matches) and x_0 comes out exactly."""
    r = Manual(12, t=4, active=False, graph=GraphKind.SPARSE, k=6, seed=80)
    requests = r.honest_until_inputs()
    u, t = 0, 4
    colluders = r.cfg.neighbours(u)[:t - colluders_short_of_t]
    held = [r.clients[c]._held[u] for c in colluders]   # what a corrupt client hands the server
    sk_shares = [shamir.Share.from_bytes(sk) for sk, _ in held]
    b_from_colluders = [shamir.Share.from_bytes(b) for _, b in held]
    responses = [r.ask(m) for m in requests]
    assert shares_of(responses, u, ShareKind.MASK_KEY) == []   # honest clients never reveal it: u survived
    b = shamir.reconstruct(shares_of(responses, u, ShareKind.SELF_MASK), threshold=t)
    if works:
        sk = shamir.reconstruct(sk_shares, threshold=t)
        assert kex.public_from_private(sk) == r.mask_pk(u)
        np.testing.assert_array_equal(recover_input(r, u, b, sk), r.inputs[u])
    else:
        with pytest.raises(InsufficientSharesError):
            shamir.reconstruct(sk_shares, threshold=t)
        with pytest.raises(InsufficientSharesError):
            shamir.reconstruct(b_from_colluders, threshold=t)


# ------------------------------------------------------------------ withheld forwarded shares

@pytest.mark.parametrize("n,k,t,c,active,corrupt", [
    (5, 4, 3, 0, False, ()), (12, 6, 4, 0, False, ()), (20, 6, 4, 0, False, ()),
    (5, 4, 3, 0, True, ()), (12, 6, 4, 1, True, ()), (12, 11, 7, 2, True, (1, 2))])
@pytest.mark.parametrize("seed", [0, 1])
def test_withheld_forwarded_shares_are_refused_and_recover_nothing(n, k, t, c, active, corrupt, seed):
    """Issue 11 attack 1 at configurations the library accepts (2t > k + c; semi-honest: 2t > k):
    the target gets the shares of only t neighbours (A), A is declared dropped. The target refuses
    the list (RefusedRequestError; in active mode its neighbours then lack t signatures and refuse
    too), and the attacker -- holding every revealed share and the corrupt clients' whole state --
    computes no input and no sum below min_survivors."""
    from .test_attacks import scripted
    tr = scripted(n, k=k, t=t, c=c, active=active, attacks_=("withhold",), corrupt=corrupt, seed=seed)
    assert tr.recovered == [] and tr.outcome == "aborted"
    assert tr.refusals["RefusedRequestError"] >= 1


def test_withheld_forwarded_shares_recover_the_input_in_semi_honest_mode_when_2t_is_at_most_k():
    """The limit that made the old claim ("withholding spoils only the server's own sum, nothing
    leaks") false: semi-honest mode accepts n = 5, t = 2 (2t <= k = 4), where the same attack
    recovers x_0 exactly. Semi-honest mode assumes the server forwards every share."""
    from .test_attacks import scripted
    for seed in (0, 1, 2):
        tr = scripted(5, k=4, t=2, active=False, attacks_=("withhold",), seed=seed)
        assert tr.outcome == "recovered" and tr.recovered[0].startswith("sum of [0] ")


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
def test_one_withheld_forwarded_share_is_refused_and_reveals_no_mask_key(active):
    """The honest ServerParty's round with one share (from v = 1) withheld from client 0 (n = 5,
    t = 3). Client 0 masks without PRG(s_01) and refuses the survivor list that names 1
    (RefusedRequestError). Nobody reveals a share of any s^SK, so x_0 stays masked by its pairwise
    masks with 2, 3 and 4 even though b_0 is revealed; the sum the server outputs is wrong -- its own
    loss, as only the server (the relay of shares) can withhold one."""
    r = Manual(5, t=3, active=active, seed=90)
    sid = r.cfg.session_id
    pending = [m for c in r.clients.values() for m in r.server.receive(wire.encode(c.start()))]
    forwarded = [m for p in pending for m in r.server.receive(wire.encode(r.ask(p)))]
    for i, m in enumerate(forwarded):
        if m.receiver == 0:
            forwarded[i] = ForwardedShares(sid, 0, tuple(s for s in m.shares if s.peer != 1))
    requests = [m for p in forwarded for m in r.server.receive(wire.encode(r.ask(p)))]
    responses = []
    for _ in range(2):   # active: consistency round, then unmask; semi-honest: unmask
        nxt = []
        for m in requests:
            if m.receiver == 0:
                with pytest.raises(RefusedRequestError, match="not a subset"):
                    r.ask(m)
                continue
            reply = r.ask(m)
            responses.append(reply)
            nxt += r.server.receive(wire.encode(reply))
        if r.server.result is not None:
            break
        requests = nxt + r.server.close_stage()
    assert r.server.result is not None
    revealed = [resp for resp in responses if hasattr(resp, "shares")]
    assert {s.kind for resp in revealed for s in resp.shares} == {ShareKind.SELF_MASK}
    with pytest.raises(InsufficientSharesError):
        shamir.reconstruct(shares_of(revealed, 0, ShareKind.MASK_KEY), threshold=3)
    b0 = shamir.reconstruct(shares_of(revealed, 0, ShareKind.SELF_MASK), threshold=3)
    y0 = r.masked[0].words.copy()
    prg.add_masks(y0, plus=[], minus=[b0], bits=32)
    assert not np.array_equal(y0, r.inputs[0])   # still masked by s_02, s_03, s_04
    assert not np.array_equal(r.server.result.aggregate, plain_sum(r.inputs, r.cfg.client_ids, 32))
