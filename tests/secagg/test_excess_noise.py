"""Excess-noise seeds through the secagg stages: shared like b_u, revealed only for the excess.

The rule (secagg.excess.excess_owners) depends on the survivor list the client checked and its
own min_survivors; the server gets exactly those seeds, never a kept survivor's, never a dropped
client's, and a seed whose holders dropped during unmasking stays in the sum.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from secagg import wire
from secagg.client import ClientParty
from secagg.config import GraphKind, RoundConfig
from secagg.errors import LocalProtocolError, RefusedRequestError, RemoteProtocolError
from secagg.excess import excess_owners
from secagg.messages import RevealedShare, ShareKind, UnmaskRequest, UnmaskResponse
from secagg.server import ServerParty
from secagg.simulate import DropoutSchedule, plain_sum, simulate

from .helpers import make_round


def _excess_round(n=8, m=5, active=False, graph=GraphKind.COMPLETE, k=None, t=None):
    cfg, inputs, keys = make_round(n, min_survivors=m, active=active, graph=graph, k=k, t=t)
    cfg = RoundConfig(**{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__}, "excess_noise": True})
    seeds = {u: os.urandom(32) for u in cfg.client_ids}
    return cfg, inputs, keys, seeds


@pytest.mark.parametrize("active", [False, True])
def test_server_gets_exactly_the_excess_seeds(active):
    cfg, inputs, keys, seeds = _excess_round(active=active)
    res = simulate(cfg, inputs, dropouts=DropoutSchedule.at(MASKED_INPUT={2}), signing_keys=keys,
                   noise_seeds=seeds)
    assert res.aborted is None and res.survivors == (0, 1, 3, 4, 5, 6, 7)
    assert np.array_equal(res.aggregate, plain_sum(inputs, res.survivors, cfg.bits))
    assert res.noise_seeds == {u: seeds[u] for u in (6, 7)}  # 7 survivors, m = 5: the two largest


def test_no_seed_is_revealed_at_min_survivors():
    cfg, inputs, keys, seeds = _excess_round(n=6, m=5)
    res = simulate(cfg, inputs, dropouts=DropoutSchedule.at(SHARES={0}), noise_seeds=seeds)
    assert res.survivors == (1, 2, 3, 4, 5) and res.noise_seeds == {}


def test_sparse_graph_round():
    cfg, inputs, keys, seeds = _excess_round(n=12, m=6, graph=GraphKind.SPARSE, k=6, t=4)
    res = simulate(cfg, inputs, dropouts=DropoutSchedule.at(MASKED_INPUT={0, 5}), noise_seeds=seeds)
    assert res.aborted is None and len(res.survivors) == 10
    assert res.noise_seeds == {u: seeds[u] for u in excess_owners(res.survivors, min_survivors=6)}


def test_holders_dropping_during_unmask_still_remove_with_t_shares():
    """Seeds travel with b's shares to the same holders: whenever b is rebuilt, so is the seed."""
    cfg, inputs, keys, seeds = _excess_round(n=8, m=4, t=4)
    res = simulate(cfg, inputs, dropouts=DropoutSchedule.at(UNMASK={1, 2, 3}), noise_seeds=seeds)
    assert res.aborted is None and res.noise_seeds == {u: seeds[u] for u in (4, 5, 6, 7)}


def test_a_seed_short_of_shares_or_inconsistent_stays_in_the_sum():
    cfg, inputs, keys, seeds = _excess_round(n=6, m=4, t=3)
    server = ServerParty(cfg)
    server._survivors = tuple(cfg.client_ids)  # as after stage 2 with nobody dropped
    from secagg.hazmat import shamir
    good = shamir.split(seeds[5], threshold=3, xs=[1, 2, 3, 4, 5])
    forged = shamir.split(os.urandom(32), threshold=3, xs=[1, 2, 3, 4, 5])
    server._revealed[(5, ShareKind.NOISE_SEED)] = [good[0], good[1], good[2], forged[3]]
    server._revealed[(4, ShareKind.NOISE_SEED)] = [good[0], good[1]]  # too few
    assert server._noise_seeds() == {}


def _client_at_unmask(cfg, seeds, inputs, u):
    """Drive a full round up to stage 4 and return client u and the server's request to it."""
    clients = {v: ClientParty(cfg, v, noise_seed=seeds[v]) for v in cfg.client_ids}
    server = ServerParty(cfg)
    out = []
    for v, c in clients.items():
        out += server.receive(c.start())
    for stage_out in range(2):
        out = out or server.close_stage()
        nxt = []
        for msg in out:
            c = clients[msg.receiver]
            if stage_out == 1:
                c.set_input(inputs[msg.receiver])
            nxt += server.receive(c.receive(msg))
        out = nxt
    out = out or server.close_stage()
    req = next(m for m in out if m.receiver == u)
    return clients[u], req


def test_client_reveals_by_its_own_rule_not_the_servers_word():
    """The request cannot name kinds; the client derives the excess from the list and its own m."""
    cfg, inputs, keys, seeds = _excess_round(n=8, m=5)
    client, req = _client_at_unmask(cfg, seeds, inputs, 0)
    assert isinstance(req, UnmaskRequest) and len(req.survivors) == 8
    resp = client.receive(req)
    noise = [s.owner for s in resp.shares if s.kind is ShareKind.NOISE_SEED]
    assert noise == [5, 6, 7]
    assert not {s.owner for s in resp.shares if s.kind is ShareKind.MASK_KEY} & set(noise)


def test_client_refuses_a_list_below_min_survivors():
    cfg, inputs, keys, seeds = _excess_round(n=8, m=5)
    client, req = _client_at_unmask(cfg, seeds, inputs, 0)
    short = UnmaskRequest(req.session_id, 0, (0, 1, 2, 3), (4, 5, 6, 7))
    with pytest.raises(RefusedRequestError, match="min_survivors=5"):
        client.receive(short)


def test_server_rejects_a_noise_share_it_may_not_have():
    cfg, inputs, keys, seeds = _excess_round(n=8, m=5)
    server = ServerParty(cfg)
    server._set_survivors(tuple(range(8)), ())
    from secagg.hazmat import shamir
    share = shamir.split(seeds[1], threshold=cfg.threshold, xs=[1, 2, 3, 4, 5, 6, 7, 8])[0]
    bad = UnmaskResponse(cfg.session_id, 0, (RevealedShare(1, ShareKind.NOISE_SEED, share.to_bytes()),))
    with pytest.raises(RemoteProtocolError, match="NOISE_SEED share of 1"):
        server._on_unmask(bad)


def test_noise_seed_is_required_exactly_with_excess_noise():
    cfg, inputs, keys, seeds = _excess_round()
    with pytest.raises(LocalProtocolError, match="noise_seed"):
        ClientParty(cfg, 0)
    plain, _, _ = make_round(4)
    with pytest.raises(LocalProtocolError, match="noise_seed"):
        ClientParty(plain, 0, noise_seed=bytes(32))


def test_wire_round_trips_the_longer_shares_and_the_new_kind():
    cfg, inputs, keys, seeds = _excess_round(n=4, m=2)
    c = ClientParty(cfg, 0, noise_seed=seeds[0])
    server = ServerParty(cfg)
    out = []
    for v in cfg.client_ids:
        if v:
            out += server.receive(ClientParty(cfg, v, noise_seed=seeds[v]).start())
    out += server.receive(c.start())
    bcast = next(m for m in out if m.receiver == 0)
    share_keys = c.receive(bcast)
    assert all(len(s.ciphertext) == wire.ciphertext_bytes(True) for s in share_keys.shares)
    assert wire.decode(wire.encode(share_keys)) == share_keys
    resp = UnmaskResponse(cfg.session_id, 0, (RevealedShare(3, ShareKind.SELF_MASK, bytes(37)),
                                              RevealedShare(3, ShareKind.NOISE_SEED, bytes(37))))
    assert wire.decode(wire.encode(resp)) == resp


def test_client_state_round_trip_keeps_the_noise_shares():
    cfg, inputs, keys, seeds = _excess_round(n=6, m=3)
    client, req = _client_at_unmask(cfg, seeds, inputs, 0)
    again = ClientParty.from_state(cfg, client.to_state())
    assert again.receive(req) == client.receive(req)
