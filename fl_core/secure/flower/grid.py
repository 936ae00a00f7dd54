"""The server: ``SecureGrid`` turns each train exchange of a strategy into one secure round over
the nodes it sampled (``GridExchange`` carries the protocol steps as Flower messages), and records
each round in a ``RoundRecord``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from secagg.config import GraphKind, RoundConfig
from secagg.errors import AbortedError, ConfigError
from secagg.state import ProtocolStage

from fl_core.secure.flower.messages import RECORD, arrays_to_vector, config_record, model_record, vector_to_arrays
from fl_core.secure.flower.settings import SecureSettings
from fl_core.secure.inputs import InputKind, InputSpec
from fl_core.secure.transport import RoundSetup, min_survivors_for, run_server_round

#: error code of a ClientApp exception (flwr.common.constant.ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
_CLIENT_APP_RAISED_EXCEPTION = 2


def send_and_receive_polling(grid: Grid, messages: list[Message], *, timeout: float, poll: float) -> list[Message]:
    """``grid.send_and_receive`` that pulls every ``poll`` seconds (the Deployment Engine's grid
    pulls every 3 s): push, then pull until every message has its reply or ``timeout`` passed."""
    waiting = {mid for mid in grid.push_messages(messages) if mid}
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while waiting:
        got = list(grid.pull_messages(waiting))
        replies += got
        waiting -= {m.metadata.reply_to_message_id for m in got}
        left = deadline - time.monotonic()
        if not waiting or left <= 0:
            break
        time.sleep(min(poll, left))
    return replies


class GridExchange:
    """``transport.Exchange`` over a Flower Grid: one train Message per node and exchange, replies
    collected until ``timeout``; a missing or error reply is a dropout. Replies are keyed by the
    sending node as Flower authenticated it, mapped back to protocol ids."""

    def __init__(self, grid: Grid, node_of: Mapping[int, int], *, timeout: float, group_id: str,
                 message_type: str = "train", train_content: Mapping[int, RecordDict] | None = None,
                 log: Callable[[str], None] = print, poll: float = 0.1) -> None:
        self.grid, self.node_of, self.timeout, self.group_id = grid, dict(node_of), timeout, group_id
        self.poll = poll
        self.client_of = {nid: u for u, nid in self.node_of.items()}
        self.message_type = message_type
        self.train_content = dict(train_content or {})  # node id -> the strategy's records for it
        self.log = log
        self.errors: dict[int, str] = {}
        self.partitions: dict[int, int] = {}  # client -> the partition-id its setup reply reported
        self.step_rtt: dict[str, float] = {}  # stage key -> seconds of its send_and_receive

    def __call__(self, stage: ProtocolStage, outgoing: Mapping[int, bytes]) -> dict[int, bytes]:
        msgs = []
        for u, data in outgoing.items():
            nid = self.node_of[u]
            if stage is ProtocolStage.MASKED_INPUT:  # the message that asks for it carries the model
                base = self.train_content.get(nid)
                content = RecordDict(dict(base.items()) if base is not None else {})
                content[RECORD] = ConfigRecord({"op": "input", "data": data})
            elif stage is ProtocolStage.KEYS:  # the setup names the node's protocol id
                content = RecordDict({RECORD: ConfigRecord({"op": "setup", "data": data, "client-id": u})})
            else:
                content = RecordDict({RECORD: ConfigRecord({"op": "step", "data": data})})
            msgs.append(Message(content, dst_node_id=nid, message_type=self.message_type,
                                group_id=self.group_id, ttl=self.timeout))
        t0 = time.perf_counter()
        replies = send_and_receive_polling(self.grid, msgs, timeout=self.timeout, poll=self.poll)
        self.step_rtt[stage.key] = time.perf_counter() - t0
        out = {}
        for rep in replies:
            u = self.client_of.get(rep.metadata.src_node_id)
            if rep.has_error():
                if u is not None:
                    self.errors[u] = f"{stage.key}: error {rep.error.code}: {str(rep.error.reason)[-300:]}"
                    self.log(f"client {u} dropped out at {stage.key}: error reply {rep.error.code}")
                continue
            if u is None or u not in outgoing:
                continue
            try:
                rec = config_record(rep.content)
                if rec is None:
                    raise KeyError(RECORD)
                out[u] = bytes(rec["data"])
                if "partition-id" in rec:
                    self.partitions[u] = int(rec["partition-id"])
            except (KeyError, TypeError, ValueError):
                self.errors[u] = f"{stage.key}: reply without our record"
        return out


@dataclass
class RoundRecord:
    """What one secure round did: who took part and survived, its cost, and the privacy spent."""

    round: int
    sampled: tuple[int, ...]
    survivors: tuple[int, ...] = ()
    stage_survivors: dict[str, tuple[int, ...]] = field(default_factory=dict)
    k: int = 0
    threshold: int = 0
    min_survivors: int = 0
    seconds: float = 0.0
    hello_seconds: float = 0.0           # active mode: the hello of nodes not seen before
    partitions: dict[int, int] = field(default_factory=dict)  # client -> partition-id it reported (unchecked)
    step_seconds: dict[str, float] = field(default_factory=dict)
    upload_bytes_per_client: int = 0     # most any client sent in this round
    download_bytes_per_client: int = 0   # most any client was sent (the setup carries the model)
    epsilon: float | None = None
    aborted: str | None = None
    dropouts: dict[int, str] = field(default_factory=dict)
    aggregate: np.ndarray | None = None  # test words only: the sum mod 2**bits itself

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "aggregate"}
        d["stage_survivors"] = {s: list(v) for s, v in self.stage_survivors.items()}
        d["dropouts"] = {str(u): why for u, why in self.dropouts.items()}
        d["partitions"] = {str(u): p for u, p in self.partitions.items()}
        if self.aggregate is not None:
            d["aggregate"] = self.aggregate.tolist()
        return d


class SecureGrid(Grid):
    """A Grid for ``strategy.start(grid=SecureGrid(grid, settings), ...)``: each exchange of train
    messages becomes one secure round over the nodes the strategy sampled; everything else goes to
    ``grid`` as it is. The strategy gets one train reply, the survivors' mean model, with a
    MetricRecord ``{weighted_by_key: weight, "secagg-survivors": m}`` (none if the round aborted or
    the DP budget is spent), then aggregates it as it would any reply (FedAdam's moments, ...).

    ``rounds``: a ``RoundRecord`` per round; ``epsilon``: the privacy spent so far (RDP, unit: one
    client); ``nodes``: node id -> protocol id. ``on_step(round, stage, clients)`` is called
    before each exchange (tests)."""

    def __init__(self, grid: Grid, settings: SecureSettings, *, weighted_by_key: str = "num-examples",
                 log: Callable[[str], None] = print,
                 on_step: Callable[[int, ProtocolStage, tuple[int, ...]], None] | None = None) -> None:
        self.grid, self.settings, self.weighted_by_key, self.log = grid, settings, weighted_by_key, log
        self.on_step = on_step
        self.rounds: list[RoundRecord] = []
        self.nodes: dict[int, int] = {}
        self._refused: set[int] = set()
        self.stopped_by_budget = False
        self._tracker = None
        self._run_tag = os.urandom(4).hex()
        if settings.epsilon is not None:
            from dp.accounting import AccountantKind
            from dp.budget import BudgetTracker, PrivacyBudget
            from dp.events import UnitOfPrivacy
            self._tracker = BudgetTracker(PrivacyBudget(settings.epsilon, settings.delta, unit=UnitOfPrivacy.CLIENT),
                                          accountant=AccountantKind.RDP)

    @property
    def epsilon(self) -> float | None:
        return None if self._tracker is None else self._tracker.epsilon_so_far

    # ---- the Grid API, delegated
    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        if any(m.metadata.message_type.split(".")[0] == "train" for m in messages):
            raise ConfigError("SecureGrid sends train messages only through send_and_receive (a secure round)")
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        train = [m for m in messages if m.metadata.message_type.split(".")[0] == "train"]
        other = [m for m in messages if m.metadata.message_type.split(".")[0] != "train"]
        replies = list(self.grid.send_and_receive(other, timeout=timeout)) if other else []
        if train:
            replies += self._secure_round(train)
        return replies

    # ---- one secure round
    def _hello(self, node_ids: list[int], message_type: str) -> None:
        """Learn the protocol ids of nodes not seen before (one round trip for all of them)."""
        s = self.settings
        msgs = [Message(RecordDict({RECORD: ConfigRecord({"op": "hello"})}), dst_node_id=nid,
                        message_type=message_type, group_id=f"secagg-{self._run_tag}-hello", ttl=s.timeout)
                for nid in node_ids]
        answered = set()
        replies = send_and_receive_polling(self.grid, msgs, timeout=s.timeout, poll=s.poll_interval)
        for rep in sorted(replies, key=lambda m: m.metadata.src_node_id):
            nid = rep.metadata.src_node_id
            if rep.has_error() or nid not in node_ids:
                continue
            answered.add(nid)
            rec = rep.content.config_records[RECORD]
            u, pk = int(rec["client-id"]), bytes(rec["verify-key"])
            if u in self.nodes.values():
                self.log(f"node {nid} claims client id {u}, which another node has: left out")
                self._refused.add(nid)
            elif s.verify_keys is not None and s.verify_keys.get(u) != pk:
                self.log(f"node {nid} claims client id {u} without its registered key: left out")
                self._refused.add(nid)
            else:
                self.nodes[nid] = u

    def _secure_round(self, train: list[Message]) -> list[Message]:
        s = self.settings
        t0 = time.perf_counter()
        r = len(self.rounds) + 1
        first = train[0]
        mtype = first.metadata.message_type
        by_node = {m.metadata.dst_node_id: m for m in train}
        new = [nid for nid in sorted(by_node) if nid not in self.nodes and nid not in self._refused]
        if new and s.verify_keys is None:  # semi-honest: the server numbers the nodes, the setup says who is who
            for nid in new:
                self.nodes[nid] = max(self.nodes.values(), default=-1) + 1
        elif new:  # active mode: a node's id is the one its signing key is registered under
            self._hello(new, mtype)
        hello_s = time.perf_counter() - t0
        node_of = {self.nodes[nid]: nid for nid in by_node if nid in self.nodes}
        n = len(node_of)
        m = min_survivors_for(max(n, 2), s.min_survivors)
        rec = RoundRecord(round=r, sampled=tuple(sorted(node_of)), min_survivors=m, hello_seconds=hello_s)
        self.rounds.append(rec)
        vec = layout = None
        key, base = model_record(first.content)
        if not s.test_dim:
            vec, layout = arrays_to_vector(base)
        try:
            if n < max(m, 2):
                raise AbortedError(f"only {n} sampled nodes have a protocol id, fewer than min_survivors={m}")
            spec = s.input_spec(dim=0 if vec is None else vec.size, num_clients=n, min_survivors=m)
            event = None
            if spec.kind is InputKind.DDG:
                event = spec.encoder().plan.event
                from dp.errors import BudgetExceededError
                try:
                    self._tracker.check(event)
                except BudgetExceededError as e:
                    self.stopped_by_budget = True
                    raise AbortedError(f"privacy budget: {e}") from None
            try:
                result = self._protocol(rec, spec, node_of, by_node, mtype, r)
            finally:  # charged once the protocol started, even if it aborted (as fl_core.run does)
                if event is not None:
                    rec.epsilon = self._tracker.spend(event)
        except AbortedError as e:
            rec.aborted = str(e)
            self.log(f"secure round {r} aborted: {e}")
            result = None
        rec.seconds = time.perf_counter() - t0
        self.log(f"secure round {r}: survivors {list(rec.survivors)} of {list(rec.sampled)}, {rec.seconds:.1f} s, "
                 f"epsilon {rec.epsilon}" + (f", ABORTED: {rec.aborted}" if rec.aborted else ""))
        errors = [Message(Error(_CLIENT_APP_RAISED_EXCEPTION, f"secagg: {why}"), reply_to=by_node[node_of[u]])
                  for u, why in rec.dropouts.items() if u in node_of]
        if result is None:
            return errors
        decoded, weight = result
        if decoded.mean is None:  # test words: the model is unchanged
            arrays = base
        else:
            arrays = vector_to_arrays(vec + decoded.mean, layout)
        metrics = MetricRecord({self.weighted_by_key: weight, "secagg-survivors": len(rec.survivors)})
        return [Message(RecordDict({key: arrays, "metrics": metrics}), reply_to=first), *errors]

    def _protocol(self, rec: RoundRecord, spec: InputSpec, node_of: dict[int, int], by_node: dict[int, Message],
                  mtype: str, r: int):
        from fl_core.secure.round import SecureRoundSpec, graph_parameters

        s = self.settings
        kind, k, t = graph_parameters(len(node_of), SecureRoundSpec(
            enabled=True, graph=s.graph, bits=s.bits, min_survivors=rec.min_survivors, k=s.k,
            threshold_fraction=s.threshold, dropout={ProtocolStage.MASKED_INPUT: s.expected_dropout}),
            active=s.verify_keys is not None)
        vk = None if s.verify_keys is None else {u: s.verify_keys[u] for u in node_of}
        cfg = RoundConfig.new(client_ids=sorted(node_of), dim=spec.word_dim, bits=s.bits, threshold=t,
                              min_survivors=rec.min_survivors, graph=kind, k=k if kind is GraphKind.SPARSE else None,
                              verify_keys=vk)
        rec.k, rec.threshold = k, t
        setup = RoundSetup(cfg, r, os.urandom(32), spec)
        exchange = GridExchange(self.grid, node_of, timeout=s.timeout, group_id=f"secagg-{self._run_tag}-{r}",
                                message_type=mtype, train_content={nid: msg.content for nid, msg in by_node.items()},
                                log=self.log, poll=s.poll_interval)
        hook = None if self.on_step is None else (lambda stage, ids: self.on_step(r, stage, ids))
        try:
            result, stats = run_server_round(setup, exchange, on_step=hook)
        finally:
            rec.dropouts = dict(exchange.errors)
            rec.step_seconds = dict(exchange.step_rtt)
            rec.partitions = dict(exchange.partitions)
        rec.dropouts.update({u: f"rejected: {why}" for u, why in stats.rejected.items()})
        rec.survivors, rec.stage_survivors = result.survivors, dict(result.stage_survivors)
        rec.upload_bytes_per_client = max(stats.upload_bytes.values(), default=0)
        rec.download_bytes_per_client = max(stats.download_bytes.values(), default=0)
        decoded = spec.encoder().decode(result.aggregate, survivors=len(result.survivors), round_seed=setup.round_seed)
        if decoded.mean is None:
            rec.aggregate = result.aggregate.copy()
        weight = decoded.total_examples if decoded.total_examples is not None else len(result.survivors)
        return decoded, weight
