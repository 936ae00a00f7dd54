"""Bad input of the three kinds issue 11 part 8 names raises the library's typed errors, never a
plain OverflowError, KeyError or TypeError."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from secagg import wire
from secagg.client import ClientParty
from secagg.encoding import FixedPointEncoding
from secagg.errors import DecodeError, InputError, OverflowRiskError, SecAggError
from secagg.messages import ConsistencyRequest, ForwardedShares, KeysBroadcast, SignedBy, UnmaskRequest
from secagg.simulate import DropoutSchedule, simulate
from secagg.state import Stage

from .helpers import make_round


@pytest.mark.parametrize("clip,scale", [(1e200, 1e200), (1e308, 10.0), (2.0, 1.7e308)])
def test_encoding_whose_offset_overflows_a_float_is_an_overflow_risk_error(clip, scale):
    """clip*scale = inf: ceil(inf) raised OverflowError ("cannot convert float infinity")."""
    with pytest.raises(OverflowRiskError, match="overflows a float"):
        FixedPointEncoding(bits=62, clip=clip, scale=scale, max_clients=1)


def test_simulate_with_a_missing_input_names_the_client():
    cfg, inputs, _ = make_round(5, dim=4, bits=16, t=3)
    del inputs[3]
    with pytest.raises(InputError, match="no entry for client 3"):
        simulate(cfg, inputs)


def test_simulate_needs_no_input_of_a_client_that_dropped_before_masking():
    cfg, inputs, _ = make_round(5, dim=4, bits=16, t=3)
    del inputs[3]
    res = simulate(cfg, inputs, dropouts=DropoutSchedule.at(MASKED_INPUT={3}))
    assert res.aborted is None and 3 not in res.survivors


def _client_at(stage_message: str, active: bool):
    """Client 0 of a 5-client round, and the genuine message it expects next."""
    cfg, inputs, keys = make_round(5, dim=4, bits=16, t=3, active=active, seed=11)
    sk = (lambda u: keys[u]) if active else (lambda u: None)
    clients = {u: ClientParty(cfg, u, inputs[u], signing_key=sk(u)) for u in cfg.client_ids}
    adv = {u: c.start() for u, c in clients.items()}
    sid = cfg.session_id
    keys_msg = {u: KeysBroadcast(sid, u, tuple(adv[v].peer_keys() for v in sorted(adv) if v != u)) for u in adv}
    if stage_message == "keys":
        return cfg, clients[0], keys_msg[0]
    shares = {u: clients[u].receive(keys_msg[u]) for u in clients}
    fwd = ForwardedShares(sid, 0, tuple(dataclasses.replace(s, peer=v) for v in sorted(shares) if v != 0
                                        for s in shares[v].shares if s.peer == 0))
    return cfg, clients[0], fwd


BAD_KEYS = [
    ("peers None", lambda m: dataclasses.replace(m, peers=None)),
    ("peers a dict", lambda m: dataclasses.replace(m, peers={p.client_id: p for p in m.peers})),
    ("peers of ints", lambda m: dataclasses.replace(m, peers=tuple(p.client_id for p in m.peers))),
    ("receiver a str", lambda m: dataclasses.replace(m, receiver="0")),
    ("receiver a bool", lambda m: dataclasses.replace(m, receiver=False)),
    ("session a list", lambda m: dataclasses.replace(m, session_id=list(m.session_id))),
    ("client_id a float", lambda m: dataclasses.replace(m, peers=tuple(
        dataclasses.replace(p, client_id=float(p.client_id)) for p in m.peers))),
    ("mask_pk None", lambda m: dataclasses.replace(m, peers=tuple(
        dataclasses.replace(p, mask_pk=None) for p in m.peers))),
    ("signature a str", lambda m: dataclasses.replace(m, peers=tuple(
        dataclasses.replace(p, signature="") for p in m.peers))),
    ("round_digest an int", lambda m: dataclasses.replace(m, peers=tuple(
        dataclasses.replace(p, round_digest=0) for p in m.peers))),
]
BAD_SHARES = [
    ("shares an int", lambda m: dataclasses.replace(m, shares=5)),
    ("shares of bytes", lambda m: dataclasses.replace(m, shares=tuple(s.ciphertext for s in m.shares))),
    ("ciphertext a str", lambda m: dataclasses.replace(m, shares=tuple(
        dataclasses.replace(s, ciphertext=s.ciphertext.hex()) for s in m.shares))),
    ("peer a str", lambda m: dataclasses.replace(m, shares=tuple(
        dataclasses.replace(s, peer=str(s.peer)) for s in m.shares))),
]


@pytest.mark.parametrize("active", [False, True], ids=["semi", "active"])
@pytest.mark.parametrize("stage,name,change", [("keys", n, f) for n, f in BAD_KEYS]
                         + [("shares", n, f) for n, f in BAD_SHARES])
def test_message_objects_with_wrong_field_types_are_decode_errors(stage, name, change, active):
    """Each raised TypeError/AttributeError from inside a handler before check_fields; now a
    DecodeError, the party keeps its stage, and the genuine message still works."""
    cfg, client, genuine = _client_at(stage, active)
    before = client.stage
    with pytest.raises(DecodeError, match="wrong type or size"):
        client.receive(change(genuine))
    assert client.stage is before
    reply = client.receive(genuine)
    assert wire.decode(wire.encode(reply)) == reply


@pytest.mark.parametrize("bad", [
    ConsistencyRequest(bytes(32), 0, [0, 1, 2]),                    # a list, not a tuple
    ConsistencyRequest(bytes(32), 0, (0, 1.0, 2)),
    UnmaskRequest(bytes(32), 0, (0, 1, 2), ("3",)),
    UnmaskRequest(bytes(32), 0, (0, 1, 2), (), None),
    UnmaskRequest(bytes(32), 0, (0, 1, 2), (), (SignedBy("1", bytes(64)),)),
    UnmaskRequest(bytes(32), 0, (0, 1, 2), (), (SignedBy(1, 64),)),
])
def test_survivor_messages_with_wrong_field_types_are_decode_errors(bad):
    cfg, client, genuine = _client_at("shares", False)
    client.receive(genuine)
    assert client.stage is Stage.INPUT_SENT
    with pytest.raises(DecodeError):
        client.receive(dataclasses.replace(bad, session_id=cfg.session_id))
    assert client.stage is Stage.INPUT_SENT


def test_no_plain_python_error_escapes_receive_for_any_field_of_any_type():
    """Every field of the keys broadcast set to values of many types: only SecAggError (a value of
    the right type but the wrong content, e.g. an empty round digest, may abort the client)."""
    odd = [None, 1, -1, 2**40, 1.5, "x", b"", bytearray(32), (), [], {}, True, object()]
    cfg, client, genuine = _client_at("keys", True)
    for field in ("session_id", "receiver", "peers", "client_id", "channel_pk", "mask_pk", "round_digest",
                  "signature"):
        for value in odd:
            if field in ("session_id", "receiver", "peers"):
                bad = dataclasses.replace(genuine, **{field: value})
            else:
                bad = dataclasses.replace(genuine, peers=tuple(
                    dataclasses.replace(p, **{field: value}) for p in genuine.peers))
            with pytest.raises(SecAggError):
                client.receive(bad)
            if client.stage is Stage.ABORTED:
                cfg, client, genuine = _client_at("keys", True)
    client.receive(genuine)
