"""A Flower Grid that delivers messages to ClientApps in this process (tests and benchmarks).

With ``serialize=True`` (the default) every message and reply goes through Flower's own
serialization (each object of the message tree deflated to bytes and inflated again, as between
SuperLink and SuperNode), which also counts the bytes; with ``serialize=False`` each receiver gets
a fresh copy of the records (handlers may mutate them) and no bytes are counted, so a timing shows
the protocol's own cost. Each message is handled by ``client_app(message, context)`` with a Context whose ``state``
is a deep copy of what the node kept after its previous message, and the copy is kept only when
the handler returns: as on the Deployment Engine, where every message runs in a fresh process and
only ``Context.state`` survives. Python objects held between messages would not survive there, and
do not survive here. Dropouts are scheduled by exchange: ``silent_from[i]`` is the set of nodes
that stop answering from the i-th ``send_and_receive`` call on (0-based).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable, Mapping

from flwr.app import ArrayRecord, Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["InProcessGrid", "transmit", "fresh_copy"]

#: Flower's error code for a ClientApp exception (flwr.common.constant.ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
CLIENT_APP_RAISED_EXCEPTION = 2


def fresh_copy(msg: Message) -> Message:
    """A new message with new records holding the same immutable values (no serialization)."""
    if not msg.has_content():
        return msg
    records = {}
    for key, rec in msg.content.items():
        records[key] = ArrayRecord.from_array_dict(dict(rec)) if isinstance(rec, ArrayRecord) else type(rec)(dict(rec))
    return Message(content=RecordDict(records), metadata=copy.copy(msg.metadata))


def transmit(msg: Message) -> tuple[Message, int]:
    """The message as the receiver gets it after Flower's serialization, and its size in bytes."""
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(msg).items()}
    size = sum(len(c) for c in contents.values())
    return inflate_object_from_contents(msg.object_id, contents), size


class InProcessGrid(Grid):
    """Nodes ``node_configs`` (node id -> node config) served by one ``client_app``."""

    def __init__(self, client_app: Callable[[Message, Context], Message], node_configs: Mapping[int, dict], *,
                 run_config: dict | None = None, silent_from: Mapping[int, Iterable[int]] | None = None,
                 serialize: bool = True, run_id: int = 1) -> None:
        self.client_app = client_app
        self.node_configs = {int(k): dict(v) for k, v in node_configs.items()}
        self.run_config = dict(run_config or {})
        self.silent_from = {int(i): set(ids) for i, ids in (silent_from or {}).items()}
        self.states: dict[int, RecordDict] = {nid: RecordDict() for nid in self.node_configs}
        self.sent_bytes: dict[int, int] = {nid: 0 for nid in self.node_configs}      # server -> node
        self.received_bytes: dict[int, int] = {nid: 0 for nid in self.node_configs}  # node -> server
        self.calls = 0
        self._replies: dict[str, Message] = {}  # message id -> its reply, until pulled
        self.errors: list[str] = []
        self._run_id = run_id
        self.serialize = serialize
        for name, value in (("run_id", run_id), ("node_id", 0), ("task_id", 0)):
            if getattr(TaskIdentity, f"_{name}") is None:  # set in a real ServerApp process; Message() needs it
                setattr(TaskIdentity, name, value)

    # ---- Grid API
    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return getattr(self, "_run", None)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> list[int]:
        return sorted(self.node_configs)  # a silent node stays listed, as a killed one does for a while

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Deliver each message now; its reply waits for ``pull_messages``. One push is one
        exchange of ``silent_from``."""
        silent = set().union(*(ids for i, ids in self.silent_from.items() if i <= self.calls))
        self.calls += 1
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # as Flower's InMemoryGrid does
            ids.append(msg.metadata.message_id)
            nid = msg.metadata.dst_node_id
            if nid not in self.node_configs:
                continue
            delivered, size = transmit(msg) if self.serialize else (fresh_copy(msg), 0)
            delivered.metadata.__dict__["_message_id"] = msg.metadata.message_id
            self.sent_bytes[nid] += size
            if nid in silent:
                continue
            ctx = Context(run_id=self._run_id, node_id=nid, node_config=dict(self.node_configs[nid]),
                          state=copy.deepcopy(self.states[nid]), run_config=dict(self.run_config))
            try:
                reply = self.client_app(delivered, ctx)
            except Exception as e:  # what Flower does with a ClientApp exception: an error reply
                self.errors.append(f"node {nid}: {type(e).__name__}: {e}")
                reply = Message(Error(CLIENT_APP_RAISED_EXCEPTION, f"{type(e).__name__}: {e}"), reply_to=delivered)
            else:
                self.states[nid] = ctx.state
            reply, size = transmit(reply) if self.serialize else (fresh_copy(reply), 0)
            reply.metadata.__dict__["_reply_to_message_id"] = msg.metadata.message_id
            self.received_bytes[nid] += size
            self._replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(mid) for mid in list(message_ids) if mid in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))
