"""Stages of both parties and the one table of legal transitions (as in h11's _state.py).

Events are the message types a party receives, plus ``START`` (client) and ``CLOSE`` (server:
the stage's deadline passed, the missing clients are dropouts). Anything not in the table is an
illegal transition; the party raises an error naming its role, stage and the event.
"""

from __future__ import annotations

import enum

from .config import Mode
from .messages import MessageType as M


class Stage(enum.Enum):
    # client
    INIT = "init"
    KEYS_SENT = "keys-sent"
    SHARES_SENT = "shares-sent"
    INPUT_SENT = "input-sent"
    SIGNED = "signed"
    # server
    COLLECT_KEYS = "collect-keys"
    COLLECT_SHARES = "collect-shares"
    COLLECT_INPUTS = "collect-inputs"
    COLLECT_SIGNATURES = "collect-signatures"
    COLLECT_UNMASK = "collect-unmask"
    # both
    DONE = "done"
    ABORTED = "aborted"


class ProtocolStage(enum.IntEnum):
    """The one name of each protocol stage, by the client message sent in it: 0 keys, 1 shares,
    2 masked input, 3 consistency signature (active mode), 4 unmask. The server collects stage s
    in ``s.collecting``; JSON and table keys are ``s.key``. Drivers, dropout schedules, the fault
    campaign and the transports all use these."""

    KEYS = 0
    SHARES = 1
    MASKED_INPUT = 2
    CONSISTENCY = 3
    UNMASK = 4

    @property
    def key(self) -> str:
        return self.name.lower()

    @property
    def collecting(self) -> "Stage":
        return _COLLECTING[self]


_COLLECTING = {ProtocolStage.KEYS: Stage.COLLECT_KEYS, ProtocolStage.SHARES: Stage.COLLECT_SHARES,
               ProtocolStage.MASKED_INPUT: Stage.COLLECT_INPUTS,
               ProtocolStage.CONSISTENCY: Stage.COLLECT_SIGNATURES, ProtocolStage.UNMASK: Stage.COLLECT_UNMASK}

#: The stage of the reply a server message asks for.
REPLY_STAGE = {M.KEYS_BROADCAST: ProtocolStage.SHARES, M.FORWARDED_SHARES: ProtocolStage.MASKED_INPUT,
               M.CONSISTENCY_REQUEST: ProtocolStage.CONSISTENCY, M.UNMASK_REQUEST: ProtocolStage.UNMASK}


class Event(enum.Enum):
    START = "start"
    CLOSE = "close"


S = Stage
ANY = None  # mode-independent row

# (mode or ANY, stage, event) -> next stage
TRANSITIONS: dict[tuple[Mode | None, Stage, object], Stage] = {
    # client
    (ANY, S.INIT, Event.START): S.KEYS_SENT,
    (ANY, S.KEYS_SENT, M.KEYS_BROADCAST): S.SHARES_SENT,
    (ANY, S.SHARES_SENT, M.FORWARDED_SHARES): S.INPUT_SENT,
    (Mode.SEMI_HONEST, S.INPUT_SENT, M.UNMASK_REQUEST): S.DONE,
    (Mode.ACTIVE, S.INPUT_SENT, M.CONSISTENCY_REQUEST): S.SIGNED,
    (Mode.ACTIVE, S.SIGNED, M.UNMASK_REQUEST): S.DONE,
    # server: messages keep it in its stage; CLOSE (or the last expected message) moves it on
    (ANY, S.COLLECT_KEYS, M.ADVERTISE_KEYS): S.COLLECT_KEYS,
    (ANY, S.COLLECT_KEYS, Event.CLOSE): S.COLLECT_SHARES,
    (ANY, S.COLLECT_SHARES, M.SHARE_KEYS): S.COLLECT_SHARES,
    (ANY, S.COLLECT_SHARES, Event.CLOSE): S.COLLECT_INPUTS,
    (ANY, S.COLLECT_INPUTS, M.MASKED_INPUT): S.COLLECT_INPUTS,
    (Mode.SEMI_HONEST, S.COLLECT_INPUTS, Event.CLOSE): S.COLLECT_UNMASK,
    (Mode.ACTIVE, S.COLLECT_INPUTS, Event.CLOSE): S.COLLECT_SIGNATURES,
    (Mode.ACTIVE, S.COLLECT_SIGNATURES, M.CONSISTENCY_SIGNATURE): S.COLLECT_SIGNATURES,
    (Mode.ACTIVE, S.COLLECT_SIGNATURES, Event.CLOSE): S.COLLECT_UNMASK,
    (ANY, S.COLLECT_UNMASK, M.UNMASK_RESPONSE): S.COLLECT_UNMASK,
    (ANY, S.COLLECT_UNMASK, Event.CLOSE): S.DONE,
}


def next_stage(mode: Mode, stage: Stage, event) -> Stage | None:
    """The stage after ``event`` in ``stage``, or None when the transition is illegal."""
    return TRANSITIONS.get((mode, stage, event), TRANSITIONS.get((ANY, stage, event)))
