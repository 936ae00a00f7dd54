"""Dishonest or broken clients: malformed inputs, duplicate ids, garbage shares. Each is rejected
with a typed error (and the genuine message still counts), or ends the round with a clean abort;
never a silently wrong sum. A client can always change its own contribution (that is its input);
what it must not do is corrupt the honest clients' part of the sum or make a party crash.
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest

from secagg import client as client_mod, errors, wire
from secagg.client import ClientParty
from secagg.config import GraphKind
from secagg.errors import AuthenticationError, RemoteProtocolError
from secagg.tools.faults import Envelope, run_round
from secagg.hazmat import kex
from secagg.hazmat.sign import SigningKey
from secagg.messages import (AdvertiseKeys, ConsistencySignature, ForwardedShares, KeysBroadcast, MaskedInput,
                             PeerKeys, RevealedShare)
from secagg.server import ServerParty
from secagg.simulate import DropoutSchedule, ProtocolStage

from .helpers import make_round


def at(stage: ProtocolStage, sender: int, *, to_server: bool = True, after: bool = False, retry: bool = True):
    """A network that replaces ``sender``'s message of ``stage`` by ``bad(genuine message)`` — the
    genuine one follows if the bad one is rejected (``retry``), or comes first (``after``)."""
    def wrap(bad):
        done = []

        def network(env: Envelope):
            if env.stage is stage and env.connection == sender and env.to_server is to_server and not done:
                done.append(1)
                forged = dataclasses.replace(env, data=bad(wire.decode(env.data), env.data))
                if after:
                    return (env, forged)
                return (forged, dataclasses.replace(env, only_if_rejected=True)) if retry else (forged,)
            return (env,)
        return network
    return wrap


def assert_exact_with_everyone(rep, cfg):
    assert not rep.crashes and rep.outcome() == "exact", (rep.crashes, rep.problems(), rep.aborted)
    assert rep.result.survivors == cfg.client_ids


# ------------------------------------------------------------------ malformed masked inputs

BITS, DIM = 12, 9  # 9 words of 12 bits = 13.5 bytes: the last byte has 4 padding bits


def _bad_inputs():
    def obj(**change):
        return lambda m, raw: dataclasses.replace(m, **change)

    def words(f):
        return lambda m, raw: dataclasses.replace(m, words=f(np.array(m.words)))
    head = wire.HEADER.size
    return {
        "short": words(lambda w: w[:-1]),
        "long": words(lambda w: np.append(w, w[:1])),
        "float64": words(lambda w: w.astype(np.float64)),
        "int32": words(lambda w: w.astype(np.int32)),
        "uint64": words(lambda w: w.astype(np.uint64)),
        "uint16": words(lambda w: w.astype(np.uint16)),
        "bool": words(lambda w: w.astype(bool)),
        "2-d": words(lambda w: np.stack([w, w])),
        "list": obj(words=[1] * DIM),
        "word 2**bits": words(lambda w: np.where(np.arange(DIM) == 3, 1 << BITS, w).astype(w.dtype)),
        "word 2**32-1": words(lambda w: np.full_like(w, 2**32 - 1)),
        "bits field": obj(bits=BITS + 1),
        "bytes: dim field": lambda m, raw: raw[:head + 1] + struct.pack(">I", DIM + 1) + raw[head + 5:],
        "bytes: padding bits": lambda m, raw: raw[:-1] + bytes([raw[-1] | 0x80]),
        "bytes: trailing": lambda m, raw: raw + b"\0",
        "bytes: truncated": lambda m, raw: raw[:-1],
        "bytes: other type": lambda m, raw: raw[:3] + bytes([1]) + raw[4:],
    }


@pytest.mark.parametrize("name", list(_bad_inputs()))
def test_malformed_masked_input_is_rejected_and_the_genuine_one_still_counts(name):
    cfg, inputs, _ = make_round(5, dim=DIM, bits=BITS, t=3, seed=1)
    rep = run_round(cfg, inputs, network=at(ProtocolStage.MASKED_INPUT, 2)(_bad_inputs()[name]))
    assert len(rep.hostile_results) == 1 and rep.hostile_results[0] != "accepted"
    assert issubclass(getattr(errors, rep.hostile_results[0]), RemoteProtocolError)
    assert_exact_with_everyone(rep, cfg)


def test_changed_words_in_range_are_indistinguishable_from_another_input():
    """The one thing no check can catch: in-range words that differ. The server's sum is then exact
    for the input the client effectively sent (its words minus its masks): that is the client's
    choice of input, not a protocol failure."""
    cfg, inputs, _ = make_round(5, dim=DIM, bits=BITS, t=3, seed=2)
    rep = run_round(cfg, inputs, network=at(ProtocolStage.MASKED_INPUT, 2, retry=False)(
        lambda m, raw: dataclasses.replace(m, words=(np.array(m.words) + 7) & 0xFFF)))
    assert rep.outcome() == "exact_altered_input"
    delta = (rep.result.aggregate.astype(np.int64) - sum(inputs[u].astype(np.int64) for u in cfg.client_ids)) % 4096
    assert np.all(delta == 7)  # exactly the change, on every coordinate


@pytest.mark.parametrize("retry", [True, False], ids=["genuine-follows", "lost"])
def test_changed_words_in_range_are_rejected_in_active_mode(retry):
    """Active mode signs y_u with the round digest: the same in-range change is an
    AuthenticationError at the server. If the genuine message follows, the round is exact with
    everyone; if not, client 2 counts as dropped and the sum is exact over the others."""
    cfg, inputs, keys = make_round(5, dim=DIM, bits=BITS, t=3, seed=2, active=True)
    rep = run_round(cfg, inputs, signing_keys=keys, network=at(ProtocolStage.MASKED_INPUT, 2, retry=retry)(
        lambda m, raw: dataclasses.replace(m, words=(np.array(m.words) + 7) & 0xFFF)))
    assert rep.hostile_results == ["AuthenticationError"]
    assert rep.outcome() == "exact", rep.problems()
    assert rep.result.survivors == (cfg.client_ids if retry else tuple(u for u in cfg.client_ids if u != 2))


# ------------------------------------------------------------------ duplicate ids

@pytest.mark.parametrize("active", [False, True])
def test_impostor_advertising_keys_for_a_taken_id(active):
    """A second AdvertiseKeys under client 1's id, with the impostor's own keys. After the genuine
    one: DuplicateMessageError. Before it: in active mode the signature fails (AuthenticationError);
    in semi-honest mode (no identities) it is taken, and the real client 1 and its neighbours can
    then not decrypt each other's shares: a clean abort, never a wrong sum."""
    cfg, inputs, keys = make_round(6, t=3, active=active, seed=3)
    rng = np.random.default_rng(3)
    imp = kex.KeyPair.from_private(rng.bytes(32)), kex.KeyPair.from_private(rng.bytes(32))
    impostor_key = SigningKey.from_private(rng.bytes(32))

    def impostor(m, raw):
        sig = impostor_key.sign(client_mod.keys_signed_bytes(m.round_digest, 1, imp[0].public, imp[1].public)) if active else b""
        return AdvertiseKeys(m.session_id, 1, imp[0].public, imp[1].public, m.round_digest, sig)
    rep = run_round(cfg, inputs, signing_keys=keys, network=at(ProtocolStage.KEYS, 1, after=True)(impostor))
    assert rep.hostile_results == ["DuplicateMessageError"]
    assert_exact_with_everyone(rep, cfg)
    rep = run_round(cfg, inputs, signing_keys=keys, network=at(ProtocolStage.KEYS, 1, retry=False)(impostor))
    if active:
        assert rep.hostile_results == ["AuthenticationError"]
        assert rep.outcome() == "exact" and 1 not in rep.result.survivors  # its genuine keys were lost with it
    else:
        assert rep.hostile_results == ["accepted"] and rep.outcome() == "aborted"


def test_client_copying_another_clients_keys_is_caught_by_its_neighbours():
    """Client 4 advertises client 3's public keys. Every client that sees both rejects the
    broadcast ("repeat another key"): a clean abort here (n = 6, complete graph), never a wrong sum."""
    cfg, inputs, _ = make_round(6, t=3, seed=4)
    first = {}

    def network(env):
        if env.stage is ProtocolStage.KEYS and env.connection == 3:
            first[3] = wire.decode(env.data)
        if env.stage is ProtocolStage.KEYS and env.connection == 4:
            m3 = first[3]
            return (dataclasses.replace(env, data=AdvertiseKeys(m3.session_id, 4, m3.channel_pk, m3.mask_pk, m3.round_digest)),)
        return (env,)
    rep = run_round(cfg, inputs, network=network)
    assert rep.outcome() == "aborted" and not rep.crashes
    assert rep.rejections["RemoteProtocolError"] == 5  # 0, 1, 2, 5 and 3 (its own keys again) refuse the broadcast


def test_duplicate_entries_in_client_messages():
    cfg, inputs, _ = make_round(6, t=3, seed=5)
    # the same neighbour twice in ShareKeys: rejected, the genuine message counts
    rep = run_round(cfg, inputs, network=at(ProtocolStage.SHARES, 2)(
        lambda m, raw: dataclasses.replace(m, shares=m.shares[:1] + m.shares[:-1])))
    assert rep.hostile_results == ["RemoteProtocolError"]
    assert_exact_with_everyone(rep, cfg)
    # a second copy of a masked input: DuplicateMessageError
    rep = run_round(cfg, inputs, network=at(ProtocolStage.MASKED_INPUT, 2, after=True)(lambda m, raw: raw))
    assert rep.rejections["DuplicateMessageError"] == 1
    assert_exact_with_everyone(rep, cfg)
    # the same share revealed twice in one response (object API): harmless, the sum is exact
    rep = run_round(cfg, inputs, network=at(ProtocolStage.UNMASK, 2, retry=False)(
        lambda m, raw: dataclasses.replace(m, shares=m.shares[:1] + m.shares)))
    assert rep.hostile_results == ["accepted"]
    assert_exact_with_everyone(rep, cfg)
    assert rep.result.forged_shares_from == ()


# ------------------------------------------------------------------ garbage shares at reconstruction

def _forge(forgers):
    """UnmaskResponses of ``forgers`` with the last byte of every revealed share flipped."""
    def network(env):
        if env.stage is ProtocolStage.UNMASK and env.to_server and env.connection in forgers:
            m = wire.decode(env.data)
            shares = tuple(dataclasses.replace(s, share=s.share[:-1] + bytes([s.share[-1] ^ 0x5A])) for s in m.shares)
            return (dataclasses.replace(env, data=dataclasses.replace(m, shares=shares)),)
        return (env,)
    return network


@pytest.mark.parametrize("n,graph,k,t,forgers", [
    (20, GraphKind.COMPLETE, None, 10, {0}),       # lowest x forged: aborted before the fix (C(18, 9) subsets start with it)
    (12, GraphKind.COMPLETE, None, 5, {0, 1, 2}),  # 3 of 11 holders forged, C(11, 5) = 462 > 256 subsets
    (16, GraphKind.SPARSE, 8, 5, {3}),
    (7, GraphKind.COMPLETE, None, 3, {2, 5}),      # few enough subsets to try them all
])
def test_forged_shares_are_outvoted_when_more_than_t_exist(n, graph, k, t, forgers):
    cfg, inputs, _ = make_round(n, t=t, graph=graph, k=k, seed=n + t)
    rep = run_round(cfg, inputs, network=_forge(forgers))
    rep.altered_unmask_senders |= forgers  # they are the ones that may be named
    assert_exact_with_everyone(rep, cfg)
    assert set(rep.result.forged_shares_from) == forgers


def test_forged_share_of_a_dropped_clients_mask_key_is_outvoted():
    cfg, inputs, _ = make_round(8, t=3, seed=6)
    rep = run_round(cfg, inputs, dropouts=DropoutSchedule.at(MASKED_INPUT={4}), network=_forge({1}))
    rep.altered_unmask_senders.add(1)
    assert rep.outcome() == "exact" and 4 not in rep.result.survivors
    assert rep.result.forged_shares_from == (1,)


def test_forged_share_with_exactly_t_holders_is_a_clean_abort():
    """SecAgg+ n = 8, k = 4, t = 4: every secret has exactly t holders, so one forged share cannot be
    outvoted; the commitment (b) or public key (s^SK) check fails and the server aborts."""
    cfg, inputs, _ = make_round(8, t=4, graph=GraphKind.SPARSE, k=4, seed=7)
    rep = run_round(cfg, inputs, network=_forge({3}))
    assert rep.outcome() == "aborted" and "no authentic subset" in str(rep.aborted)
    assert rep.result is None


@pytest.mark.parametrize("how", ["y >= PRIME", "x of another holder", "x = 0", "short"])
def test_malformed_revealed_share_is_rejected_and_the_genuine_response_counts(how):
    cfg, inputs, _ = make_round(5, t=3, seed=8)

    def bad(m, raw):
        s = m.shares[0]
        raw_share = {"y >= PRIME": s.share[:4] + b"\xff" * 33, "x of another holder": struct.pack(">I", 1) + s.share[4:],
                     "x = 0": bytes(4) + s.share[4:], "short": s.share[:-1]}[how]
        if how == "short":  # the wire cannot carry it: object API only
            return dataclasses.replace(m, shares=(RevealedShare(s.owner, s.kind, raw_share),) + m.shares[1:])
        return wire.encode(dataclasses.replace(m, shares=(RevealedShare(s.owner, s.kind, raw_share),) + m.shares[1:]))
    rep = run_round(cfg, inputs, network=at(ProtocolStage.UNMASK, 2)(bad))
    assert rep.hostile_results[0] in ("MalformedShareError", "RemoteProtocolError")
    assert_exact_with_everyone(rep, cfg)


def test_client_committing_to_another_self_mask_makes_a_clean_abort(monkeypatch):
    """Client 3 commits to a b it did not share: no subset of its shares matches the commitment, so
    the server cannot remove its self mask and aborts rather than output a sum with PRG(b_3) in it."""
    real = client_mod.self_mask_commitment
    monkeypatch.setattr(client_mod, "self_mask_commitment",
                        lambda sid, u, seed: real(sid, u, seed if u != 3 else bytes(32)))
    cfg, inputs, _ = make_round(6, t=3, seed=9)
    rep = run_round(cfg, inputs)
    assert rep.outcome() == "aborted" and "client 3's SELF_MASK" in str(rep.aborted)


# ------------------------------------------------------------------ small-order keys

def test_small_order_key_is_rejected_by_the_server_at_stage_0():
    """Fix: a client advertising a small-order X25519 key (every agreement with it fails) is turned
    away in stage 0, so it cannot make its neighbours fail later or the server fail while unmasking."""
    cfg, inputs, _ = make_round(6, t=3, seed=10)
    for field in ("mask_pk", "channel_pk"):
        rep = run_round(cfg, inputs, network=at(ProtocolStage.KEYS, 4, retry=False)(
            lambda m, raw: dataclasses.replace(m, **{field: bytes(32)})))
        assert rep.hostile_results == ["AuthenticationError"]
        assert rep.outcome() == "exact" and rep.result.survivors == (0, 1, 2, 3, 5)


def test_client_keeps_its_input_after_rejecting_shares_it_cannot_use():
    """Fix: a relayed small-order mask key made ``_on_shares`` fail after it had consumed the input,
    so the next (valid) ForwardedShares raised LocalProtocolError. Now the failure leaves the client
    as it was. (The relay is played by hand: the real server refuses such keys in stage 0.)"""
    cfg, inputs, _ = make_round(5, t=2, seed=11)
    clients = {u: ClientParty(cfg, u, inputs[u]) for u in cfg.client_ids}
    server = ServerParty(cfg)
    pending = [m for c in clients.values() for m in server.receive(c.start())]
    four = clients[4]
    four._mask = kex.KeyPair(four._mask.private, bytes(32))  # client 4 advertises, and binds, a small-order key
    bcast = next(m for m in pending if m.receiver == 0)
    bcast = KeysBroadcast(bcast.session_id, 0, tuple(PeerKeys(p.client_id, p.channel_pk, bytes(32) if p.client_id == 4
                                                               else p.mask_pk, p.round_digest, b"")
                                                      for p in bcast.peers))
    share_msgs = {0: clients[0].receive(bcast)}
    share_msgs.update({m.receiver: clients[m.receiver].receive(m) for m in pending if m.receiver != 0})
    forwarded = [m for sm in share_msgs.values() for m in server.receive(sm)]
    to_0 = next(m for m in forwarded if m.receiver == 0)
    with pytest.raises(AuthenticationError):
        clients[0].receive(to_0)
    without_4 = ForwardedShares(to_0.session_id, 0, tuple(s for s in to_0.shares if s.peer != 4))
    reply = clients[0].receive(without_4)   # LocalProtocolError before the fix
    assert isinstance(reply, MaskedInput) and reply.words.shape == (cfg.dim,)
    assert set(clients[0]._held) == {1, 2, 3}


# ------------------------------------------------------------------ bad signatures (active mode)

def test_bad_consistency_signature_counts_as_not_signing():
    cfg, inputs, keys = make_round(6, t=3, active=True, seed=12)
    rep = run_round(cfg, inputs, signing_keys=keys, network=at(ProtocolStage.CONSISTENCY, 2, retry=False)(
        lambda m, raw: ConsistencySignature(m.session_id, 2, m.signature[::-1])))
    assert rep.hostile_results == ["AuthenticationError"]
    # 2 sent its masked input, so it is in the sum; it just gets no unmask request
    assert_exact_with_everyone(rep, cfg)
