"""The one driver of a ServerParty: simulate, the fault campaign and the transports all run it.

A round is a sequence of exchanges. In each, the server's messages of one stage go out (in stage
KEYS there are none: every client starts by itself, shown as ``None``), the replies come back and
are handed to the server one by one, and the stage closes: when the last expected reply arrives,
or else at the deadline, which the driver calls once the replies are in. What carries the
messages is the caller's ``exchange``; what a reply does on its way in is ``deliver`` (by default
the server takes it; a transport drops what it rejects, the fault campaign corrupts it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .errors import AbortedError, LocalProtocolError
from .messages import Message
from .server import RoundResult, ServerParty
from .state import REPLY_STAGE, ProtocolStage, Stage

#: exchange(stage, {client: server message, or None to start}) -> (client, reply) pairs, lazily
#: (a generator may compute replies while the earlier ones are delivered). The dict is the
#: exchange's own: it may pop each message once sent, so the stage's messages are freed as they go.
Exchange = Callable[[ProtocolStage, dict[int, Message | None]], Iterable[tuple[int, object]]]
#: deliver(client, reply) -> the server's next messages (usually []).
Deliver = Callable[[int, object], list[Message]]

MAX_EXCHANGES = 16  # 5 stages; the bound only guards against a driver bug


def reply_stage(msg: Message) -> ProtocolStage:
    """The stage of the reply a server message asks for."""
    return REPLY_STAGE[msg.type]


def drive(server: ServerParty, exchange: Exchange, *, deliver: Deliver | None = None,
          close: Callable[[ProtocolStage], list[Message]] | None = None) -> RoundResult:
    """Run ``server`` to its result. AbortedError (from ``close_stage``) propagates.

    ``close(stage)`` closes the stage at its deadline (default ``server.close_stage()``; a caller
    wraps it to time it)."""
    deliver = deliver or (lambda u, reply: server.receive(reply))
    close = close or (lambda stage: server.close_stage())
    stage = ProtocolStage.KEYS
    outgoing: dict[int, Message | None] = {u: None for u in server.config.client_ids}
    for _ in range(MAX_EXCHANGES):
        before = server.stage
        nxt: list[Message] = []
        for u, reply in exchange(stage, outgoing):
            nxt = deliver(u, reply) or nxt
        if server.result is None and not nxt and server.stage is before:
            nxt = close(stage)  # the deadline: whoever has not answered dropped out
        if server.result is not None:
            return server.result
        if server.stage is Stage.ABORTED:  # a reply's deliverer swallowed the abort
            raise AbortedError(f"the round was aborted: {server.abort_reason}")
        if server.stage is Stage.DONE or not nxt:
            raise LocalProtocolError(f"server in stage {server.stage.value} sent nothing and has no result")
        stage = reply_stage(nxt[0])
        outgoing = {m.receiver: m for m in nxt}
        del nxt
    raise LocalProtocolError(f"round did not finish in {MAX_EXCHANGES} exchanges; server in stage "
                             f"{server.stage.value}")
