"""A Flower Grid that delivers messages to ClientApps in this process (tests and benchmarks).

Each message is handled by ``client_app(message, context)`` with a Context whose ``state`` is a
deep copy of what the node kept after its previous message, and the copy is kept only when the
handler returns: as on the Deployment Engine, where every message runs in a fresh process and only
``Context.state`` survives. Python objects held between messages would not survive there, and
do not survive here. Dropouts are scheduled by exchange: ``silent_from[i]`` is the set of nodes
that stop answering from the i-th ``send_and_receive`` call on (0-based).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["InProcessGrid", "wire_bytes"]

#: Flower's error code for a ClientApp exception (flwr.common.constant.ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
CLIENT_APP_RAISED_EXCEPTION = 2


def wire_bytes(msg: Message) -> int:
    """Bytes of a message's content as Flower serializes it (every object of its tree)."""
    if not msg.has_content():
        return 0
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg.content).values())


class InProcessGrid(Grid):
    """Nodes ``node_configs`` (node id -> node config) served by one ``client_app``."""

    def __init__(self, client_app: Callable[[Message, Context], Message], node_configs: Mapping[int, dict], *,
                 run_config: dict | None = None, silent_from: Mapping[int, Iterable[int]] | None = None,
                 count_bytes: bool = False, run_id: int = 1) -> None:
        self.client_app = client_app
        self.node_configs = {int(k): dict(v) for k, v in node_configs.items()}
        self.run_config = dict(run_config or {})
        self.silent_from = {int(i): set(ids) for i, ids in (silent_from or {}).items()}
        self.states: dict[int, RecordDict] = {nid: RecordDict() for nid in self.node_configs}
        self.count_bytes = count_bytes
        self.sent_bytes: dict[int, int] = {nid: 0 for nid in self.node_configs}      # server -> node
        self.received_bytes: dict[int, int] = {nid: 0 for nid in self.node_configs}  # node -> server
        self.counting_seconds = 0.0  # time spent measuring bytes, to subtract from timings
        self.calls = 0
        self.errors: list[str] = []
        self._run_id = run_id
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

    def push_messages(self, messages):  # pragma: no cover - send_and_receive is the only path used
        raise NotImplementedError("InProcessGrid delivers messages in send_and_receive")

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError("InProcessGrid delivers messages in send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        silent = set().union(*(ids for i, ids in self.silent_from.items() if i <= self.calls))
        self.calls += 1
        replies = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            self._count(nid, msg, self.sent_bytes)
            if nid in silent or nid not in self.node_configs:
                continue
            ctx = Context(run_id=self._run_id, node_id=nid, node_config=dict(self.node_configs[nid]),
                          state=copy.deepcopy(self.states[nid]), run_config=dict(self.run_config))
            try:
                reply = self.client_app(msg, ctx)
            except Exception as e:  # what Flower does with a ClientApp exception: an error reply
                self.errors.append(f"node {nid}: {type(e).__name__}: {e}")
                reply = Message(Error(CLIENT_APP_RAISED_EXCEPTION, f"{type(e).__name__}: {e}"), reply_to=msg)
            else:
                self.states[nid] = ctx.state
            self._count(nid, reply, self.received_bytes)
            replies.append(reply)
        return replies

    def _count(self, nid: int, msg: Message, into: dict[int, int]) -> None:
        if self.count_bytes and nid in into:
            t0 = time.perf_counter()
            into[nid] += wire_bytes(msg)
            self.counting_seconds += time.perf_counter() - t0
