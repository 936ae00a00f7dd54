"""Our secure aggregation and distributed DP over Flower's Message API (flwr >= 1.42).

Client: ``SecureClientApp()`` in place of ``ClientApp()``; the user's ``@app.train()`` handler is
unchanged, but its reply (trained arrays, metrics) never leaves the node: the app turns the update
into words (with our DP noise), masks them, and sends only protocol bytes.
Server: ``SecureFedAvg(settings).start(grid, initial_arrays=...)`` in a ServerApp's ``main``.

The mapping onto Flower (docs/flower.md):
- one protocol step = one Message round trip; our bytes ride in the ConfigRecord ``"secagg"``
  (key ``"setup"`` for the first step, ``"message"`` after). The setup is a ``train`` message (it
  carries the model, so the user's training runs); the later steps are ``query.secagg_<step>``.
- a node's protocol state lives in ``Context.state["secagg-state"]`` (one bytes value), because
  on the Deployment Engine every message runs in a fresh ClientApp process.
- a node whose reply misses the step's timeout, or comes back as an error, is a dropout.
- protocol ids are the nodes' ``partition-id`` (node config), learnt in one ``query.secagg_hello``
  round trip at the start of a run; in active mode each node proves its id with its signing key.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from dp.accounting import AccountantKind
from dp.budget import BudgetTracker, PrivacyBudget
from dp.errors import BudgetExceededError
from dp.events import UnitOfPrivacy
from secagg.config import GraphKind, RoundConfig
from secagg.errors import (AbortedError, ConfigError, InputError, LocalProtocolError, RefusedRequestError)
from secagg.hazmat.sign import SigningKey
from secagg.simulate import ProtocolStage

from fl_core.secure.round import SecureRoundSpec, graph_parameters
from fl_core.secure.transport import (InputKind, InputSpec, RoundSetup, Step, check_setup, client_begin, client_step,
                        decode_aggregate, encode_input, min_survivors_for, run_server_round, ddg_plan)

__all__ = ["SecureClientApp", "SecureFedAvg", "SecureSettings", "GridExchange", "RoundRecord", "SecureRunResult",
           "arrays_to_vector", "vector_to_arrays", "MESSAGE_TYPES", "HELLO_TYPE", "RECORD", "STATE_RECORD",
           "discover_nodes"]

RECORD = "secagg"              # ConfigRecord with our bytes, in every message of ours
STATE_RECORD = "secagg-state"  # ConfigRecord in Context.state: {"state": bytes}
HELLO_TYPE = "query.secagg_hello"
MESSAGE_TYPES = {Step.SETUP: "train", Step.KEYS: "query.secagg_keys", Step.SHARES: "query.secagg_shares",
                 Step.CONSISTENCY: "query.secagg_consistency", Step.UNMASK: "query.secagg_unmask"}


# ---------------------------------------------------------------------------- arrays <-> vector

Layout = tuple[tuple[str, tuple[int, ...], str], ...]


def arrays_to_vector(record: ArrayRecord) -> tuple[np.ndarray, Layout]:
    """All arrays of ``record`` flattened into one float64 vector, and the layout to undo it."""
    parts, layout = [], []
    for key, arr in record.items():
        a = arr.numpy()
        if a.dtype.kind != "f":
            raise InputError(f"array {key!r} has dtype {a.dtype}: only floating arrays can be aggregated")
        parts.append(a.astype(np.float64).ravel())
        layout.append((key, tuple(a.shape), a.dtype.str))
    return (np.concatenate(parts) if parts else np.zeros(0)), tuple(layout)


def vector_to_arrays(vec: np.ndarray, layout: Layout) -> ArrayRecord:
    size = sum(math.prod(shape) for _, shape, _ in layout)
    if vec.shape != (size,):
        raise InputError(f"vector has shape {vec.shape}, the layout holds {size} values")
    out, pos = ArrayRecord(), 0
    for key, shape, dtype in layout:
        n = math.prod(shape)
        out[key] = Array(np.ascontiguousarray(vec[pos:pos + n].reshape(shape).astype(dtype)))
        pos += n
    return out


# ---------------------------------------------------------------------------- client


def partition_client_id(context: Context) -> int:
    """The node's protocol id: its ``partition-id`` from the node config."""
    value = context.node_config.get("partition-id")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"node config partition-id must be a non-negative int, got partition-id={value!r}")
    return value


def file_signing_key(context: Context) -> SigningKey | None:
    """Active mode: the node's Ed25519 key, 64 hex digits in the file named by node config
    ``signing-key-file``; None (semi-honest mode) when that key is absent."""
    path = context.node_config.get("signing-key-file")
    if not path:
        return None
    with open(str(path)) as f:
        return SigningKey.from_private(bytes.fromhex(f.read().strip()))


def _reply(msg: Message, **values) -> Message:
    return Message(RecordDict({RECORD: ConfigRecord(values)}), reply_to=msg)


class SecureClientApp(ClientApp):
    """A ClientApp whose train updates leave the node only masked, through our protocol.

    ``max_epsilon``: refuse rounds whose epsilon is larger, or that have no DP (the node's own cap;
    default: the node config's ``max-epsilon``, if set).
    ``allow_plain_train``: also serve train messages that do not start a secure round (off by
    default, so a server that skips secure aggregation never receives a raw update).
    """

    def __init__(self, *, mods=None, client_id_fn: Callable[[Context], int] = partition_client_id,
                 signing_key_fn: Callable[[Context], SigningKey | None] = file_signing_key,
                 max_epsilon: float | None = None, allow_plain_train: bool = False) -> None:
        super().__init__(mods=[self._secure_mod, *(mods or [])])
        self._client_id = client_id_fn
        self._signing_key = signing_key_fn
        self._max_epsilon = max_epsilon
        self._allow_plain = allow_plain_train
        self.query("secagg_hello")(self._hello)
        for step in (Step.KEYS, Step.SHARES, Step.CONSISTENCY, Step.UNMASK):
            self.query(MESSAGE_TYPES[step].split(".")[1])(self._step)

    def _hello(self, msg: Message, context: Context) -> Message:
        key = self._signing_key(context)
        return _reply(msg, **{"client-id": self._client_id(context),
                              "verify-key": b"" if key is None else key.public})

    def _secure_mod(self, msg: Message, context: Context, call_next) -> Message:
        if msg.metadata.message_type.split(".")[0] != "train":
            return call_next(msg, context)
        if RECORD not in msg.content.config_records:
            if self._allow_plain:
                return call_next(msg, context)
            raise RefusedRequestError("this SecureClientApp sends updates only through secure aggregation; "
                                      "it got a train message without a secure round setup")
        setup = RoundSetup.from_bytes(msg.content.config_records[RECORD]["setup"])
        u = self._client_id(context)
        limit = self._max_epsilon if self._max_epsilon is not None else context.node_config.get("max-epsilon")
        check_setup(setup, u, max_epsilon=None if limit is None else float(limit))
        update = examples = None
        if setup.input.kind is not InputKind.WORDS:
            start, layout = arrays_to_vector(msg.content.array_records["arrays"])
            result = call_next(msg, context)
            if result.has_error():
                return result
            trained, got = arrays_to_vector(next(iter(result.content.array_records.values())))
            if got != layout:
                raise InputError("the train handler returned arrays of another layout than it was sent")
            update = trained - start
            for rec in result.content.metric_records.values():
                if "num-examples" in rec:
                    examples = int(rec["num-examples"])
            del result  # the trained model and its metrics stay on this node
        words = encode_input(setup.input, client_id=u, round_number=setup.round_number,
                             round_seed=setup.round_seed, update=update, num_examples=examples)
        res = client_begin(setup, client_id=u, words=words, signing_key=self._signing_key(context))
        context.state.config_records[STATE_RECORD] = ConfigRecord({"state": res.state})
        return _reply(msg, message=res.reply)

    def _step(self, msg: Message, context: Context) -> Message:
        if STATE_RECORD not in context.state.config_records:
            raise LocalProtocolError("no secure round in progress on this node (no saved state)")
        res = client_step(context.state.config_records[STATE_RECORD]["state"],
                          msg.content.config_records[RECORD]["message"], signing_key=self._signing_key(context))
        context.state.config_records[STATE_RECORD] = ConfigRecord({"state": res.state})
        if res.error is not None:
            raise res.error  # Flower returns it as an error reply: the server counts a dropout
        return _reply(msg, message=res.reply)


# ---------------------------------------------------------------------------- server


def _bad(name: str, value, why: str) -> ConfigError:
    return ConfigError(f"run config {name}={value!r}: {why}")


@dataclass(frozen=True)
class SecureSettings:
    """A secure FedAvg run. Run-config names (kebab case) are in ``from_run_config``.

    ``epsilon`` None means no DP (fixed-point encoding, example-weighted mean); else client-level
    distributed discrete Gaussian noise for (epsilon, delta) over ``rounds`` rounds. ``threshold``
    and ``k`` None: the SecAgg+ rule picks them for ``expected_dropout``. ``verify_keys`` (client id
    -> Ed25519 public key) turns on the active-server mode. ``test_dim`` > 0: test-only words.
    """

    rounds: int = 3
    min_nodes: int = 2
    node_wait: float = 60.0
    stage_timeout: float = 30.0
    bits: int = 32
    min_survivors: float = 0.6
    graph: GraphKind = GraphKind.SPARSE
    k: int | None = None
    threshold: float | None = None
    expected_dropout: float = 0.1
    epsilon: float | None = 8.0
    delta: float = 1e-5
    l2_clip: float = 0.5
    example_cap: int = 10_000
    server_lr: float = 1.0
    verify_keys: Mapping[int, bytes] | None = None
    test_dim: int = 0
    test_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("rounds", "min_nodes", "bits", "example_cap"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise _bad(name, v, "must be a positive int")
        if self.min_nodes < 2:
            raise _bad("min_nodes", self.min_nodes, "a sum needs at least 2 clients")
        for name in ("node_wait", "stage_timeout", "l2_clip", "server_lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise _bad(name, v, "must be a positive number")
        if not 0 < self.min_survivors <= 1:
            raise _bad("min_survivors", self.min_survivors, "is a fraction of the round's clients in (0, 1]")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise _bad("threshold", self.threshold, "is a fraction of k in (0, 1]")
        if not 0 <= self.expected_dropout < 1:
            raise _bad("expected_dropout", self.expected_dropout, "must be in [0, 1)")
        if self.epsilon is not None and not self.epsilon > 0:
            raise _bad("epsilon", self.epsilon, "must be positive (or None for no DP)")
        if not isinstance(self.graph, GraphKind):
            raise _bad("graph", self.graph, "must be a GraphKind")
        if self.test_dim < 0:
            raise _bad("test_dim", self.test_dim, "must be >= 0")

    @classmethod
    def from_run_config(cls, rc: Mapping) -> SecureSettings:
        """From a Flower run config; absent keys keep their defaults. ``epsilon = 0`` means no DP,
        ``k = 0`` / ``threshold = 0`` mean the SecAgg+ rule, ``verify-keys = "id:hex,..."``."""
        names = {"num-server-rounds": "rounds", "min-nodes": "min_nodes", "node-wait": "node_wait",
                 "stage-timeout": "stage_timeout", "bits": "bits", "min-survivors": "min_survivors",
                 "graph": "graph", "k": "k", "threshold": "threshold", "expected-dropout": "expected_dropout",
                 "epsilon": "epsilon", "delta": "delta", "l2-clip": "l2_clip", "example-cap": "example_cap",
                 "server-lr": "server_lr", "verify-keys": "verify_keys", "test-dim": "test_dim",
                 "test-seed": "test_seed"}
        kw = {}
        for key, name in names.items():
            if key not in rc:
                continue
            v = rc[key]
            if name in ("k", "threshold", "epsilon") and not v:
                v = None
            elif name == "graph":
                try:
                    v = GraphKind(v)
                except ValueError:
                    raise _bad(key, v, f"must be one of {[g.value for g in GraphKind]}") from None
            elif name == "verify_keys":
                v = _parse_verify_keys(key, v) if v else None
            elif name in ("min_survivors", "threshold", "expected_dropout", "epsilon", "delta", "l2_clip",
                          "server_lr", "node_wait", "stage_timeout") and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            kw[name] = v
        return cls(**kw)

    def input_spec(self, *, dim: int, num_clients: int, min_survivors: int) -> InputSpec:
        if self.test_dim:
            return InputSpec(InputKind.WORDS, dim=self.test_dim, bits=self.bits, num_clients=num_clients,
                             min_survivors=min_survivors, test_seed=self.test_seed)
        if self.epsilon is None:
            return InputSpec(InputKind.FIXED_POINT, dim=dim, bits=self.bits, l2_clip=self.l2_clip,
                             num_clients=num_clients, min_survivors=min_survivors, example_cap=self.example_cap)
        return InputSpec(InputKind.DDG, dim=dim, bits=self.bits, l2_clip=self.l2_clip, num_clients=num_clients,
                         min_survivors=min_survivors, epsilon=self.epsilon, delta=self.delta, rounds=self.rounds)


def _parse_verify_keys(key: str, text) -> dict[int, bytes]:
    out = {}
    try:
        for item in str(text).split(","):
            u, pk = item.split(":")
            out[int(u)] = bytes.fromhex(pk.strip())
    except ValueError:
        raise _bad(key, text, 'must read "id:hex,id:hex,..."') from None
    return out


class GridExchange:
    """``transport.Exchange`` over a Flower Grid: one Message per client and step, replies
    collected until ``timeout``; a missing or error reply is a dropout. Replies are keyed by the
    sending node as Flower authenticated it, mapped back to protocol ids."""

    def __init__(self, grid: Grid, node_of: Mapping[int, int], *, timeout: float, group_id: str,
                 setup_content: RecordDict | None = None, log: Callable[[str], None] = print) -> None:
        self.grid, self.node_of, self.timeout, self.group_id = grid, dict(node_of), timeout, group_id
        self.client_of = {nid: u for u, nid in self.node_of.items()}
        self.setup_content = setup_content
        self.log = log
        self.errors: dict[int, str] = {}

    def __call__(self, step: Step, outgoing: Mapping[int, bytes]) -> dict[int, bytes]:
        msgs = []
        for u, data in outgoing.items():
            if step is Step.SETUP:
                content = RecordDict(dict(self.setup_content.items()) if self.setup_content else {})
                content[RECORD] = ConfigRecord({"setup": data})
            else:
                content = RecordDict({RECORD: ConfigRecord({"message": data})})
            msgs.append(Message(content, dst_node_id=self.node_of[u], message_type=MESSAGE_TYPES[step],
                                group_id=self.group_id, ttl=self.timeout))
        out = {}
        for rep in self.grid.send_and_receive(msgs, timeout=self.timeout):
            u = self.client_of.get(rep.metadata.src_node_id)
            if rep.has_error():
                if u is not None:
                    self.errors[u] = f"{step.value}: error {rep.error.code}: {str(rep.error.reason)[-300:]}"
                    self.log(f"client {u} dropped out at {step.value}: error reply {rep.error.code}")
                continue
            if u is None or u not in outgoing:
                continue
            try:
                out[u] = bytes(rep.content.config_records[RECORD]["message"])
            except (KeyError, TypeError):
                self.errors[u] = f"{step.value}: reply without our record"
        return out


def discover_nodes(grid: Grid, *, min_nodes: int, wait: float, timeout: float,
                   verify_keys: Mapping[int, bytes] | None = None,
                   log: Callable[[str], None] = print) -> dict[int, int]:
    """Node id -> protocol id, from one hello round trip once ``min_nodes`` nodes are connected.
    Nodes that claim a taken id, or (active mode) show another key than the registered one, are
    left out."""
    deadline = time.monotonic() + wait
    while len(list(grid.get_node_ids())) < min_nodes and time.monotonic() < deadline:
        time.sleep(1.0)
    nodes = sorted(grid.get_node_ids())
    msgs = [Message(RecordDict({RECORD: ConfigRecord({})}), dst_node_id=nid, message_type=HELLO_TYPE,
                    group_id="hello", ttl=timeout) for nid in nodes]
    found: dict[int, int] = {}
    for rep in sorted(grid.send_and_receive(msgs, timeout=timeout), key=lambda m: m.metadata.src_node_id):
        if rep.has_error():
            continue
        rec = rep.content.config_records[RECORD]
        u, pk = int(rec["client-id"]), bytes(rec["verify-key"])
        if u in found.values():
            log(f"node {rep.metadata.src_node_id} claims client id {u}, which another node has: left out")
        elif verify_keys is not None and verify_keys.get(u) != pk:
            log(f"node {rep.metadata.src_node_id} claims client id {u} without its registered key: left out")
        else:
            found[rep.metadata.src_node_id] = u
    return found


@dataclass
class RoundRecord:
    """What one round did: who took part and survived, its cost, and the privacy spent so far."""

    round: int
    sampled: tuple[int, ...]
    survivors: tuple[int, ...] = ()
    stage_survivors: dict[str, tuple[int, ...]] = field(default_factory=dict)
    k: int = 0
    threshold: int = 0
    min_survivors: int = 0
    seconds: float = 0.0
    step_seconds: dict[str, float] = field(default_factory=dict)
    upload_bytes_per_client: int = 0     # most any client sent in this round
    download_bytes_per_client: int = 0   # most any client was sent (the setup carries the model)
    epsilon: float | None = None
    metrics: dict = field(default_factory=dict)
    aborted: str | None = None
    dropouts: dict[int, str] = field(default_factory=dict)
    aggregate: np.ndarray | None = None  # test words only: the sum mod 2**bits itself

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "aggregate"}
        d["stage_survivors"] = {s: list(v) for s, v in self.stage_survivors.items()}
        d["dropouts"] = {str(u): why for u, why in self.dropouts.items()}
        if self.aggregate is not None:
            d["aggregate"] = self.aggregate.tolist()
        return d


@dataclass
class SecureRunResult:
    arrays: ArrayRecord | None
    rounds: list[RoundRecord]
    nodes: dict[int, int]                 # node id -> protocol id
    epsilon: float | None
    delta: float | None
    stopped_by_budget: bool = False


class SecureFedAvg:
    """FedAvg whose every aggregate is a secure sum (and, with DP, a noisy one) of the nodes'
    updates: new = old + server_lr * mean update. The ServerApp only ever holds masked words."""

    def __init__(self, settings: SecureSettings, *, log: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.log = log

    def start(self, grid: Grid, *, initial_arrays: ArrayRecord | None = None,
              train_config: Mapping | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], Mapping] | None = None,
              on_step: Callable[[int, Step, tuple[int, ...]], None] | None = None) -> SecureRunResult:
        s = self.settings
        nodes = discover_nodes(grid, min_nodes=s.min_nodes, wait=s.node_wait, timeout=s.stage_timeout,
                               verify_keys=s.verify_keys, log=self.log)
        if len(nodes) < s.min_nodes:
            raise AbortedError(f"only {len(nodes)} nodes answered the hello, fewer than min_nodes={s.min_nodes}")
        n = len(nodes)
        m = min_survivors_for(n, s.min_survivors)
        vec = layout = None
        if not s.test_dim:
            if initial_arrays is None:
                raise ConfigError("initial_arrays is required unless test_dim is set")
            vec, layout = arrays_to_vector(initial_arrays)
        spec = s.input_spec(dim=0 if vec is None else vec.size, num_clients=n, min_survivors=m)
        tracker = event = None
        if spec.kind is InputKind.DDG:
            event = ddg_plan(spec).event
            tracker = BudgetTracker(PrivacyBudget(s.epsilon, s.delta, unit=UnitOfPrivacy.CLIENT),
                                    accountant=AccountantKind.RDP)
        self.log(f"secure FedAvg: {n} nodes (client ids {sorted(nodes.values())}), min_survivors={m}, "
                 f"input {spec.kind.value}, {spec.word_dim} words of {spec.bits} bits")
        arrays = initial_arrays
        rounds: list[RoundRecord] = []
        stopped = False
        run_tag = os.urandom(4).hex()
        for r in range(1, s.rounds + 1):
            if tracker is not None:
                try:
                    tracker.check(event)
                except BudgetExceededError as e:
                    self.log(f"stopping before round {r}: {e}")
                    stopped = True
                    break
            t0 = time.perf_counter()
            alive = set(grid.get_node_ids())
            node_of = {u: nid for nid, u in nodes.items() if nid in alive}
            rec = RoundRecord(round=r, sampled=tuple(sorted(node_of)), min_survivors=m)
            rounds.append(rec)
            try:
                if len(node_of) < m:
                    raise AbortedError(f"only {len(node_of)} nodes connected, fewer than min_survivors={m}")
                kind, k, t = graph_parameters(len(node_of), SecureRoundSpec(
                    enabled=True, graph=s.graph, bits=s.bits, min_survivors=m, k=s.k, threshold_fraction=s.threshold,
                    dropout={ProtocolStage.MASKED_INPUT: s.expected_dropout}), active=s.verify_keys is not None)
                vk = None if s.verify_keys is None else {u: s.verify_keys[u] for u in node_of}
                cfg = RoundConfig.new(client_ids=sorted(node_of), dim=spec.word_dim, bits=s.bits, threshold=t,
                                      min_survivors=m, graph=kind, k=k if kind is GraphKind.SPARSE else None,
                                      verify_keys=vk)
                rec.k, rec.threshold = k, t
                setup = RoundSetup(cfg, r, os.urandom(32), spec)
                content = None
                if arrays is not None:
                    content = RecordDict({"arrays": arrays, "config": ConfigRecord(dict(train_config or {}))})
                exchange = GridExchange(grid, node_of, timeout=s.stage_timeout, group_id=f"secagg-{run_tag}-{r}",
                                        setup_content=content, log=self.log)
                hook = None if on_step is None else (lambda step, ids, r=r: on_step(r, step, ids))
                try:
                    result, stats = run_server_round(setup, exchange, on_step=hook)
                finally:
                    rec.dropouts = dict(exchange.errors)
                rec.dropouts.update({u: f"rejected: {why}" for u, why in stats.rejected.items()})
                rec.survivors, rec.stage_survivors = result.survivors, dict(result.stage_survivors)
                rec.step_seconds = stats.step_seconds
                rec.upload_bytes_per_client = max(stats.upload_bytes.values(), default=0)
                rec.download_bytes_per_client = max(stats.download_bytes.values(), default=0)
                mean = decode_aggregate(spec, result.aggregate, survivors=len(result.survivors),
                                        round_seed=setup.round_seed)
                if mean is None:
                    rec.aggregate = result.aggregate.copy()
                else:
                    vec = vec + s.server_lr * mean
                    arrays = vector_to_arrays(vec, layout)
            except AbortedError as e:
                rec.aborted = str(e)
                self.log(f"round {r} aborted: {e}")
            if tracker is not None:  # charged whether or not the round aborted (as fl_core.run does)
                rec.epsilon = tracker.spend(event)
            if evaluate_fn is not None and arrays is not None:
                rec.metrics = dict(evaluate_fn(r, arrays) or {})
            rec.seconds = time.perf_counter() - t0
            self.log(f"round {r}: survivors {list(rec.survivors)} of {list(rec.sampled)}, "
                     f"{rec.seconds:.1f} s, epsilon {rec.epsilon}, {rec.metrics}"
                     + (f", ABORTED: {rec.aborted}" if rec.aborted else ""))
        return SecureRunResult(arrays=arrays, rounds=rounds, nodes=nodes,
                               epsilon=None if tracker is None else tracker.epsilon_so_far,
                               delta=None if tracker is None else s.delta, stopped_by_budget=stopped)
