"""Fuzzing: decoders and every party entry point take random and mutated input; only the library's
typed errors come out, and a party that rejected a message still finishes the round exactly.

The default suite runs few examples per test; the ``slow`` variants run many. The party tests step
one real round (``secagg.tools.faults.run_round``) and, at one chosen delivery, hand the receiving party a
hostile message first and then (if the hostile one was rejected) the genuine one. The judge is the
round report: never a wrong sum, never an untyped error, and if the hostile message was rejected
without aborting the party, the round ends exactly as a clean one (every client in the sum).
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from secagg import wire
from secagg.config import GraphKind
from secagg.errors import DecodeError, MalformedShareError, SecAggError
from secagg.tools.faults import Envelope, run_round
from secagg.hazmat import shamir
from secagg.messages import (AdvertiseKeys, ConsistencyRequest, ConsistencySignature, EncryptedShare,
                             ForwardedShares, KeysBroadcast, MaskedInput, PeerKeys, RevealedShare,
                             ShareKeys, ShareKind, SignedBy, UnmaskRequest, UnmaskResponse)
from secagg.simulate import ProtocolStage

from .helpers import make_round

FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ decoders

ids = st.integers(0, wire.MAX_ID)
key32 = st.binary(min_size=32, max_size=32)
sig = st.binary(min_size=64, max_size=64)
session = st.binary(min_size=32, max_size=32)


def id_tuple(max_size=6):
    return st.lists(ids, max_size=max_size, unique=True).map(lambda xs: tuple(sorted(xs)))


@st.composite
def masked_inputs(draw):
    bits = draw(st.integers(1, 62))
    dim = draw(st.integers(1, 70))
    seed = draw(st.integers(0, 2**32 - 1))
    words = np.random.default_rng(seed).integers(0, 2**bits, size=dim, dtype=np.uint64).astype(wire.word_dtype(bits))
    return MaskedInput(draw(session), draw(ids), bits, words, draw(opt_sig))


def _sorted_by(items, key):
    out, seen = [], set()
    for it in sorted(items, key=key):
        if key(it) not in seen:
            seen.add(key(it))
            out.append(it)
    return tuple(out)


share_bytes = st.builds(lambda x, y: shamir.Share(x, y).to_bytes(), st.integers(1, shamir.MAX_X),
                        st.integers(0, shamir.PRIME - 1))
ciphertext = st.binary(min_size=wire.CIPHERTEXT_BYTES, max_size=wire.CIPHERTEXT_BYTES)
opt_sig = st.one_of(st.just(b""), sig)

messages = st.one_of(
    st.builds(AdvertiseKeys, session, ids, key32, key32, key32, opt_sig),
    st.builds(KeysBroadcast, session, ids, st.lists(st.builds(PeerKeys, ids, key32, key32, key32, opt_sig), max_size=4)
              .map(lambda ps: _sorted_by(ps, lambda p: p.client_id))),
    st.builds(ShareKeys, session, ids, key32, st.lists(st.builds(EncryptedShare, ids, ciphertext), max_size=3)
              .map(lambda ss: _sorted_by(ss, lambda s: s.peer))),
    st.builds(ForwardedShares, session, ids, st.lists(st.builds(EncryptedShare, ids, ciphertext), max_size=3)
              .map(lambda ss: _sorted_by(ss, lambda s: s.peer))),
    masked_inputs(),
    st.builds(ConsistencyRequest, session, ids, id_tuple()),
    st.builds(ConsistencySignature, session, ids, sig),
    st.builds(UnmaskRequest, session, ids, id_tuple(), id_tuple(),
              st.lists(st.builds(SignedBy, ids, sig), max_size=3).map(lambda ss: _sorted_by(ss, lambda s: s.client_id))),
    st.builds(UnmaskResponse, session, ids, st.lists(st.builds(RevealedShare, ids, st.sampled_from(ShareKind), share_bytes),
                                                     max_size=4).map(lambda ss: _sorted_by(ss, lambda s: s.owner))),
)

# a mutation: (op, position, byte); positions are taken modulo the length
mutations = st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "cut", "dup", "count"]),
                               st.integers(0, 2**20), st.integers(0, 255)), min_size=1, max_size=4)


def mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op, pos, val in ops:
        i = pos % max(len(b), 1)
        if op == "flip" and b:
            b[i] ^= 1 << (val % 8)
        elif op == "set" and b:
            b[i] = val
        elif op == "insert":
            b[i:i] = bytes([val])
        elif op == "delete" and b:
            del b[i]
        elif op == "cut":
            b = b[:i]
        elif op == "dup" and b:
            b[i:i] = b[i:i + 1 + val % 64]
        elif op == "count" and len(b) >= 44:  # a big count right after the header
            b[40:44] = struct.pack(">I", 2**32 - 1 - val)
    return bytes(b)


@given(messages)
@FEW
def test_every_message_type_round_trips(msg):
    assert wire.decode(wire.encode(msg)) == msg


def _decode_or_typed(data):
    try:
        msg = wire.decode(data)
    except DecodeError:
        return None
    assert wire.encode(msg) == bytes(data)  # whatever decodes is canonical: it re-encodes to the same bytes
    return msg


@given(messages, mutations)
@settings(max_examples=150, deadline=None)
def test_mutated_structured_messages_decode_canonically_or_raise_decode_error(msg, ops):
    _decode_or_typed(mutate(wire.encode(msg), ops))


@pytest.mark.slow
@given(messages, mutations)
@settings(max_examples=20_000, deadline=None)
def test_mutated_structured_messages_many(msg, ops):
    _decode_or_typed(mutate(wire.encode(msg), ops))


def test_decode_takes_only_byte_buffers():
    data = wire.encode(ConsistencyRequest(bytes(32), 1, (1, 2)))
    assert wire.decode(memoryview(data)) == wire.decode(bytearray(data)) == wire.decode(data)
    for bad in [None, 3, "SA", [1, 2], np.frombuffer(data, np.uint8)]:
        with pytest.raises(DecodeError, match="expected bytes"):
            wire.decode(bad)
    # a strided view raised BufferError (untyped) before the fix in wire.decode
    with pytest.raises(DecodeError, match="contiguous"):
        wire.decode(memoryview(data + data)[::2])
    # a view of 4-byte items is read as its bytes (52 of them), not as 13 items
    assert len(data) == 52
    assert wire.decode(memoryview(np.frombuffer(data, dtype=np.uint32))) == wire.decode(data)


@given(st.binary(max_size=80))
@settings(max_examples=300, deadline=None)
def test_share_from_bytes_random(raw):
    try:
        share = shamir.Share.from_bytes(raw)
    except MalformedShareError:
        # exactly the three documented reasons: size, x = 0, y >= PRIME
        assert (len(raw) != shamir.SHARE_BYTES or raw[:4] == bytes(4)
                or int.from_bytes(raw[4:], "big") >= shamir.PRIME)
        return
    assert share.to_bytes() == raw


@given(st.binary(min_size=shamir.SHARE_BYTES, max_size=shamir.SHARE_BYTES))
@settings(max_examples=300, deadline=None)
def test_share_from_bytes_right_size(raw):
    # y is 33 bytes, so most random strings are >= PRIME: both branches are hit
    try:
        assert shamir.Share.from_bytes(raw).to_bytes() == raw
    except MalformedShareError:
        assert raw[:4] == bytes(4) or int.from_bytes(raw[4:], "big") >= shamir.PRIME


# ------------------------------------------------------------------ party entry points

N = 6


def _round(active: bool, graph: GraphKind):
    cfg, inputs, keys = make_round(N, dim=8, bits=20, t=3, k=4 if graph is GraphKind.SPARSE else None,
                                   graph=graph, active=active, seed=3 + active)
    return cfg, inputs, keys


def _rng_bytes(seed):
    rng = np.random.default_rng(seed)
    return lambda m: rng.bytes(m)


def _clean_transcript(cfg, inputs, keys):
    seen = []

    def record(env):
        seen.append(env)
        return (env,)
    rep = run_round(cfg, inputs, signing_keys=keys, network=record, randbytes=_rng_bytes(0))
    assert rep.outcome() == "exact" and rep.result.survivors == cfg.client_ids
    return seen


def _object_mutations(msg, draw):
    """Type-correct mutations of a decoded message that bytes could (mostly) not express."""
    other = draw(st.sampled_from([0, 1, 2, 3, 4, 99]))
    rnd = draw(st.binary(min_size=32, max_size=32))
    if isinstance(msg, KeysBroadcast) and msg.peers:
        p = msg.peers[0]
        return draw(st.sampled_from([
            dataclasses.replace(msg, peers=msg.peers[1:]),
            dataclasses.replace(msg, peers=(dataclasses.replace(p, mask_pk=rnd),) + msg.peers[1:]),
            dataclasses.replace(msg, peers=(dataclasses.replace(p, mask_pk=bytes(32)),) + msg.peers[1:]),
            dataclasses.replace(msg, peers=(dataclasses.replace(p, channel_pk=bytes(32)),) + msg.peers[1:]),
            dataclasses.replace(msg, peers=(dataclasses.replace(p, client_id=other),) + msg.peers[1:]),
            dataclasses.replace(msg, peers=(p, p) + msg.peers[1:]),
            dataclasses.replace(msg, peers=(dataclasses.replace(p, channel_pk=p.mask_pk),) + msg.peers[1:]),
        ]))
    if isinstance(msg, ForwardedShares) and msg.shares:
        s = msg.shares
        swapped = (dataclasses.replace(s[0], ciphertext=s[-1].ciphertext),) + s[1:]
        return draw(st.sampled_from([dataclasses.replace(msg, shares=s[1:]), dataclasses.replace(msg, shares=swapped),
                                     dataclasses.replace(msg, shares=(s[0], s[0]) + s[1:]),
                                     dataclasses.replace(msg, shares=(dataclasses.replace(s[0], peer=other),) + s[1:])]))
    if isinstance(msg, (ConsistencyRequest, UnmaskRequest)):
        sv = msg.survivors
        variants = [dataclasses.replace(msg, survivors=sv[1:]), dataclasses.replace(msg, survivors=sv + sv[:1]),
                    dataclasses.replace(msg, survivors=tuple(sorted(set(sv) | {other})))]
        if isinstance(msg, UnmaskRequest):
            variants += [dataclasses.replace(msg, dropped=tuple(sorted(set(msg.dropped) | {sv[-1]}))),
                         dataclasses.replace(msg, survivors=sv[:-1], dropped=tuple(sorted(set(msg.dropped) | {sv[-1]}))),
                         dataclasses.replace(msg, signatures=msg.signatures[:1] * 5)]
        return draw(st.sampled_from(variants))
    if isinstance(msg, AdvertiseKeys):
        return draw(st.sampled_from([dataclasses.replace(msg, mask_pk=rnd), dataclasses.replace(msg, channel_pk=bytes(32)),
                                     dataclasses.replace(msg, sender=other),
                                     dataclasses.replace(msg, signature=msg.signature[::-1])]))
    if isinstance(msg, ShareKeys) and msg.shares:
        s = msg.shares
        return draw(st.sampled_from([dataclasses.replace(msg, shares=s[1:]), dataclasses.replace(msg, self_mask_commitment=rnd),
                                     dataclasses.replace(msg, shares=(s[0], s[0]) + s[1:]),
                                     dataclasses.replace(msg, shares=(dataclasses.replace(s[0], ciphertext=s[0].ciphertext[:-1]),) + s[1:])]))
    if isinstance(msg, MaskedInput):
        w = np.array(msg.words)
        dt = w.dtype
        return draw(st.sampled_from([
            dataclasses.replace(msg, words=w[:-1]), dataclasses.replace(msg, words=w.astype(np.float64)),
            dataclasses.replace(msg, words=w.astype(np.int64)), dataclasses.replace(msg, words=w.astype(np.uint64)),
            dataclasses.replace(msg, words=np.full_like(w, dt.type(2**msg.bits))),
            dataclasses.replace(msg, words=w.reshape(2, -1)), dataclasses.replace(msg, bits=msg.bits - 1),
            dataclasses.replace(msg, words=w ^ dt.type(1)), dataclasses.replace(msg, sender=other)]))
    if isinstance(msg, ConsistencySignature):
        return dataclasses.replace(msg, signature=rnd + rnd)
    if isinstance(msg, UnmaskResponse) and msg.shares:
        s = msg.shares[0]
        flipped = s.share[:-1] + bytes([s.share[-1] ^ 1])
        kind = ShareKind.MASK_KEY if s.kind is ShareKind.SELF_MASK else ShareKind.SELF_MASK
        return draw(st.sampled_from([
            dataclasses.replace(msg, shares=msg.shares[1:]),
            dataclasses.replace(msg, shares=(dataclasses.replace(s, share=flipped),) + msg.shares[1:]),
            dataclasses.replace(msg, shares=(dataclasses.replace(s, kind=kind),) + msg.shares[1:]),
            dataclasses.replace(msg, shares=(dataclasses.replace(s, owner=other),) + msg.shares[1:]),
            dataclasses.replace(msg, shares=(s, s) + msg.shares[1:])]))
    return msg


@st.composite
def hostile(draw, genuine: Envelope, transcript):
    """Something to deliver in place of ``genuine``: random bytes, its bytes mutated, its header on
    a random body, another genuine message of this round, or a type-correct object mutation."""
    how = draw(st.sampled_from(["random", "mutated", "header", "other", "object"]))
    if how == "random":
        return draw(st.binary(max_size=200))
    if how == "mutated":
        return mutate(genuine.data, draw(mutations))
    if how == "header":
        return genuine.data[:40] + draw(st.binary(max_size=200))
    if how == "other":
        return draw(st.sampled_from(transcript)).data
    return _object_mutations(wire.decode(genuine.data), draw)


def _withholds_a_forwarded_share(payload, genuine: Envelope) -> bool:
    try:
        msg = payload if not isinstance(payload, bytes) else wire.decode(payload)
    except DecodeError:
        return False
    real = wire.decode(genuine.data)
    return (isinstance(msg, ForwardedShares) and isinstance(real, ForwardedShares)
            and {s.peer for s in msg.shares} < {s.peer for s in real.shares})


PARTY_CASES = [(active, graph, to_server, stage)
               for active in (False, True) for graph in (GraphKind.COMPLETE, GraphKind.SPARSE)
               for to_server in (False, True) for stage in ProtocolStage
               if not (stage is ProtocolStage.KEYS and not to_server)          # clients start stage 0 themselves
               and not (stage is ProtocolStage.CONSISTENCY and not active)]    # no stage 3 in semi-honest mode


def _check_party_survives(active, graph, to_server, stage, data):
    cfg, inputs, keys = _round(active, graph)
    transcript = _clean_transcript(cfg, inputs, keys)
    targets = [e for e in transcript if e.stage is stage and e.to_server is to_server]
    target = data.draw(st.sampled_from(targets))
    payload = data.draw(hostile(target, transcript))
    sent = []

    def network(env):
        if env == target and not sent:
            sent.append(payload)
            return (Envelope(env.stage, env.connection, env.to_server, payload),
                    Envelope(env.stage, env.connection, env.to_server, env.data, only_if_rejected=True))
        return (env,)
    rep = run_round(cfg, inputs, signing_keys=keys, network=network, randbytes=_rng_bytes(0), bind_senders=False)
    assert sent, "the hostile message was never delivered"
    assert not rep.crashes, rep.crashes
    assert not rep.leaked()
    if _withholds_a_forwarded_share(payload, target) and rep.hostile_results == ["accepted"]:
        # A server that withholds a forwarded share makes the client mask with fewer peers than the
        # server assumes: the server's own sum is then wrong, and nothing leaks (see
        # test_dishonest_server.py::test_one_withheld_forwarded_share_is_refused_and_reveals_no_mask_key).
        return
    assert rep.outcome() in ("exact", "exact_altered_input", "aborted"), rep.problems()
    hostile_rejected = rep.hostile_results and all(r not in ("accepted",) for r in rep.hostile_results)
    # the errors after which a party has aborted (a round-digest mismatch, v2, is one of them)
    aborted_party = any(r in ("AbortedError", "RefusedRequestError", "RoundMismatchError")
                        for r in rep.hostile_results)
    if hostile_rejected and not aborted_party:
        # the party is as it was: the genuine message that followed completes the round exactly
        assert rep.outcome() == "exact", (rep.hostile_results, rep.aborted)
        assert rep.result.survivors == cfg.client_ids


@pytest.mark.parametrize("active,graph,to_server,stage", PARTY_CASES,
                         ids=[f"{'active' if a else 'semi'}-{g.value}-{'server' if s else 'client'}-{st_.name}"
                              for a, g, s, st_ in PARTY_CASES])
@given(data=st.data())
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_party_survives_hostile_message(active, graph, to_server, stage, data):
    _check_party_survives(active, graph, to_server, stage, data)


@pytest.mark.slow
@pytest.mark.parametrize("active,graph,to_server,stage", PARTY_CASES)
@given(data=st.data())
@MANY
def test_party_survives_hostile_message_many(active, graph, to_server, stage, data):
    _check_party_survives(active, graph, to_server, stage, data)


@pytest.mark.parametrize("active", [False, True])
def test_unstarted_and_finished_parties_reject_everything(active):
    """Clients before ``start()`` and both parties after the round: every genuine message of the
    round and random junk is a typed error, and nothing changes (the result included)."""
    cfg, inputs, keys = _round(active, GraphKind.COMPLETE)
    transcript = _clean_transcript(cfg, inputs, keys)
    from secagg.client import ClientParty
    from secagg.server import ServerParty
    from secagg.state import Stage
    clients = {u: ClientParty(cfg, u, inputs[u], signing_key=keys[u] if keys else None) for u in cfg.client_ids}
    server = ServerParty(cfg)
    for e in transcript:
        if not e.to_server:
            with pytest.raises(SecAggError):
                clients[e.connection].receive(e.data)
    assert all(c.stage is Stage.INIT for c in clients.values())
    pending = []
    for c in clients.values():
        pending += server.receive(c.start())
    while pending:
        pending = [m for p in pending for m in server.receive(clients[p.receiver].receive(p))]
    total = server.result.aggregate.copy()
    rng = np.random.default_rng(0)
    junk = [e.data for e in transcript] + [rng.bytes(int(rng.integers(0, 120))) for _ in range(30)]
    for data in junk:
        for party in [server, *clients.values()]:
            with pytest.raises(SecAggError):
                party.receive(data)
    assert np.array_equal(server.result.aggregate, total)
