"""Every illegal (stage, message) pair is rejected, for both parties, and changes nothing."""

import pytest

from secagg import wire
from secagg.client import ClientParty
from secagg.config import Mode
from secagg.errors import UnexpectedMessageError
from secagg.messages import CLIENT_TO_SERVER, SERVER_TO_CLIENT, MessageType
from secagg.server import ServerParty
from secagg.state import Event, Stage, TRANSITIONS, next_stage

from .helpers import make_round


def run_capturing(cfg, inputs, keys):
    """One full round; returns every message, keyed by type, plus the parties' stage sequence."""
    clients = {u: ClientParty(cfg, u, inputs[u], signing_key=keys[u] if keys else None) for u in cfg.client_ids}
    server = ServerParty(cfg)
    seen = {}
    pending = []
    for c in clients.values():
        m = c.start()
        seen.setdefault(m.type, m)
        pending += server.receive(m)
    while pending:
        out = []
        for m in pending:
            seen.setdefault(m.type, m)
            reply = clients[m.receiver].receive(m)
            seen.setdefault(reply.type, reply)
            out += server.receive(reply)
        pending = out
    assert server.result is not None
    return seen


@pytest.mark.parametrize("active", [False, True])
def test_client_rejects_every_illegal_message_in_every_stage(active):
    cfg, inputs, keys = make_round(4, active=active, seed=1)
    samples = run_capturing(cfg, inputs, keys)
    to_client = {t: m for t, m in samples.items() if isinstance(m, SERVER_TO_CLIENT) and m.receiver == 0}
    # step client 0 of a second identical round through its stages, probing at each
    clients = {u: ClientParty(cfg, u, inputs[u], signing_key=keys[u] if keys else None) for u in cfg.client_ids}
    server = ServerParty(cfg)
    pending = []
    for c in clients.values():
        pending += server.receive(c.start())
    probed = 0
    while pending:
        stage = clients[0].stage
        for t, m in to_client.items():
            if next_stage(cfg.mode, stage, t) is None:
                with pytest.raises(UnexpectedMessageError, match=stage.value):
                    clients[0].receive(wire.encode(m))
                assert clients[0].stage is stage
                probed += 1
        out = []
        for m in pending:
            out += server.receive(clients[m.receiver].receive(m))
        pending = out
    assert clients[0].stage is Stage.DONE and server.result is not None
    expected_probes = 3 * (len(to_client) - 1) + (len(to_client) - 1 if active else 0)
    assert probed == expected_probes


@pytest.mark.parametrize("active", [False, True])
def test_server_rejects_every_illegal_message_in_every_stage(active):
    cfg, inputs, keys = make_round(4, active=active, seed=2)
    samples = run_capturing(cfg, inputs, keys)
    from_clients = {t: m for t, m in samples.items() if isinstance(m, CLIENT_TO_SERVER)}
    clients = {u: ClientParty(cfg, u, inputs[u], signing_key=keys[u] if keys else None) for u in cfg.client_ids}
    server = ServerParty(cfg)
    stages_probed = set()

    def probe():
        for t, m in from_clients.items():
            if next_stage(cfg.mode, server.stage, t) is None:
                before = server.stage
                with pytest.raises(UnexpectedMessageError):
                    server.receive(wire.encode(m))
                assert server.stage is before
                stages_probed.add(before)

    probe()
    pending = []
    for c in clients.values():
        pending += server.receive(c.start())
    while pending:
        probe()
        out = []
        for m in pending:
            out += server.receive(clients[m.receiver].receive(m))
        pending = out
    probe()
    want = {Stage.COLLECT_KEYS, Stage.COLLECT_SHARES, Stage.COLLECT_INPUTS, Stage.COLLECT_UNMASK, Stage.DONE}
    assert stages_probed == (want | {Stage.COLLECT_SIGNATURES} if active else want)


def test_transition_table_is_mode_specific_where_it_must_be():
    assert next_stage(Mode.SEMI_HONEST, Stage.INPUT_SENT, MessageType.CONSISTENCY_REQUEST) is None
    assert next_stage(Mode.ACTIVE, Stage.INPUT_SENT, MessageType.UNMASK_REQUEST) is None
    assert next_stage(Mode.ACTIVE, Stage.COLLECT_INPUTS, Event.CLOSE) is Stage.COLLECT_SIGNATURES
    assert next_stage(Mode.SEMI_HONEST, Stage.COLLECT_INPUTS, Event.CLOSE) is Stage.COLLECT_UNMASK
    assert all(nxt is not Stage.INIT for nxt in TRANSITIONS.values())
