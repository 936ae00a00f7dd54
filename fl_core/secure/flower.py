"""Our secure aggregation and distributed DP in a Flower app (flwr >= 1.42, Message API).

Client: ``ClientApp(mods=[secagg_mod])``, as Flower users add ``secaggplus_mod``; the user's
``@app.train()`` handler is unchanged, but its reply (trained arrays, metrics) never leaves the
node: the mod turns the update into words (with our DP noise when the round has DP), masks them,
and sends only protocol bytes. ``SecureClientApp()`` is the same ClientApp with the mod in place.
Server: ``strategy.start(grid=SecureGrid(grid, settings), ...)`` with any Message-API strategy
(FedAvg, FedAdam, FedProx, your own). The strategy samples the nodes and builds the train
messages as it always does; ``SecureGrid`` turns each train exchange into one secure round over
the sampled nodes and hands the strategy one train reply: the survivors' mean model (received
arrays + securely summed mean update), weighted by the survivor count (DDG) or their total examples.
Evaluate messages pass through untouched.

The mapping onto Flower (docs/flower.md):
- every message of ours is a ``train`` message (the type the strategy used) whose ConfigRecord
  ``"secagg"`` holds ``op`` ("hello", "setup", "step" or "input") and ``data`` (our bytes); the
  shares step ("input", the one whose reply is the masked input) also carries the strategy's own
  records (the model, its config), so the user's training runs there, as with Flower's
  secaggplus_mod; no other message reaches the user's handler, and the update is never saved
  between messages.
- a node's protocol state lives in ``Context.state["secagg-state"]`` (one bytes value), because on
  the Deployment Engine every message runs in a fresh ClientApp process.
- a node whose reply misses the step's timeout, or comes back as an error, is a dropout.
- protocol ids are the nodes' ``partition-id`` (node config), learnt in one hello round trip the
  first time a node is sampled; in active mode each node proves its id with its signing key.
- what a node requires of a round (its trust file of verify keys, its floors, its epsilon cap)
  comes from its own node config (``NodePolicy``), never from the server.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from secagg.config import GraphKind, RoundConfig
from secagg.errors import AbortedError, ConfigError, InputError, LocalProtocolError, RefusedRequestError
from secagg.hazmat.sign import SigningKey

from fl_core.secure.inputs import InputKind, InputSpec
from fl_core.secure.transport import (NodePolicy, RoundSetup, Step, check_setup, client_begin, client_step,
                                      min_survivors_for, run_server_round, saved_setup)

__all__ = ["secagg_mod", "SecureClientApp", "SecureGrid", "SecureSettings", "GridExchange", "RoundRecord",
           "node_policy", "arrays_to_vector", "vector_to_arrays", "RECORD", "STATE_RECORD", "RUN_CONFIG_KEYS",
           "NODE_CONFIG_KEYS"]

RECORD = "secagg"              # ConfigRecord with our bytes, in every message of ours
STATE_RECORD = "secagg-state"  # ConfigRecord in Context.state: {"state": bytes}
#: error code of a ClientApp exception (flwr.common.constant.ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
_CLIENT_APP_RAISED_EXCEPTION = 2


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


def _array_record(content: RecordDict, key: str | None = None) -> tuple[str, ArrayRecord]:
    records = content.array_records
    if key is not None and key in records:
        return key, records[key]
    if len(records) != 1:
        raise InputError(f"expected one ArrayRecord (the model), found {sorted(records)}")
    return next(iter(records.items()))


# ---------------------------------------------------------------------------- node config

#: node config (``flower-supernode --node-config``): key -> meaning (docs/flower.md)
NODE_CONFIG_KEYS = {
    "partition-id": "the node's protocol id (and data partition); required",
    "secagg-signing-key-file": "active mode: file with 64 hex digits, the node's Ed25519 signing key",
    "secagg-trust-file": "active mode: JSON {client id: 64 hex digits} of every client's verify key; "
                         "the node takes part only in active rounds with exactly these keys",
    "secagg-min-threshold": "refuse rounds whose Shamir threshold t is smaller",
    "secagg-min-k": "refuse rounds in which this node has fewer neighbours",
    "secagg-min-survivors": "refuse rounds whose min_survivors (absolute) is smaller",
    "secagg-min-bits": "refuse rounds with narrower words",
    "dp-max-epsilon": "refuse rounds that promise a larger epsilon, or no DP",
    "secagg-allow-plain-train": "also serve train messages without a secure round (off: a raw update "
                                "never leaves the node)",
}


def _node_value(context: Context, key: str, kind, default):
    v = context.node_config.get(key, default)
    if v is default:
        return v
    if kind is int and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise ConfigError(f"node config {key}={v!r} must be a non-negative int")
    if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
        raise ConfigError(f"node config {key}={v!r} must be a positive number")
    return kind(v)


def partition_client_id(context: Context) -> int:
    """The node's protocol id: its ``partition-id`` from the node config."""
    value = _node_value(context, "partition-id", int, None)
    if value is None:
        raise ConfigError("node config partition-id is required (the node's protocol id)")
    return value


def file_signing_key(context: Context) -> SigningKey | None:
    """Active mode: the node's Ed25519 key from ``secagg-signing-key-file``; None when absent."""
    path = context.node_config.get("secagg-signing-key-file")
    if not path:
        return None
    with open(str(path)) as f:
        return SigningKey.from_private(bytes.fromhex(f.read().strip()))


def read_trust_file(path: str) -> dict[int, bytes]:
    """``{client id: verify key}`` from a JSON object of hex strings; ConfigError naming the file."""
    try:
        with open(path) as f:
            raw = json.load(f)
        keys = {int(u): bytes.fromhex(pk) for u, pk in raw.items()}
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise ConfigError(f"trust file {path!r} is not a JSON object of client id -> hex key: {e}") from None
    bad = [u for u, pk in keys.items() if len(pk) != 32]
    if bad:
        raise ConfigError(f"trust file {path!r}: keys of clients {bad[:5]} are not 32 bytes")
    return keys


def node_policy(context: Context) -> NodePolicy:
    """The node's own requirements of a round, from its node config only."""
    trust = context.node_config.get("secagg-trust-file")
    return NodePolicy(verify_keys=read_trust_file(str(trust)) if trust else None,
                      min_threshold=_node_value(context, "secagg-min-threshold", int, 1),
                      min_k=_node_value(context, "secagg-min-k", int, 1),
                      min_survivors=_node_value(context, "secagg-min-survivors", int, 2),
                      min_bits=_node_value(context, "secagg-min-bits", int, 1),
                      max_epsilon=_node_value(context, "dp-max-epsilon", float, None))


# ---------------------------------------------------------------------------- client: the mod


def _reply(msg: Message, **values) -> Message:
    return Message(RecordDict({RECORD: ConfigRecord(values)}), reply_to=msg)


def secagg_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower Mod: serve our protocol on train messages; everything else passes through.

    A train message without a secure round setup is refused (an error reply) unless the node
    config sets ``secagg-allow-plain-train``, so a server that skips secure aggregation never
    receives a raw update. Only the shares step ("input") reaches the train handler."""
    if msg.metadata.message_type.split(".")[0] != "train":
        return call_next(msg, context)
    if RECORD not in msg.content.config_records:
        if context.node_config.get("secagg-allow-plain-train", False) is True:
            return call_next(msg, context)
        raise RefusedRequestError("this node sends updates only through secure aggregation; it got a train "
                                  "message without a secure round setup")
    rec = msg.content.config_records[RECORD]
    op = rec.get("op")
    if op == "hello":
        key = file_signing_key(context)
        return _reply(msg, **{"client-id": partition_client_id(context),
                              "verify-key": b"" if key is None else key.public})
    if op == "setup":
        setup = RoundSetup.from_bytes(bytes(rec["data"]))
        u = partition_client_id(context)
        check_setup(setup, u, policy=node_policy(context))
        res = client_begin(setup, client_id=u, signing_key=file_signing_key(context))
        context.state.config_records[STATE_RECORD] = ConfigRecord({"state": res.state})
        return _reply(msg, data=res.reply)
    if op not in ("step", "input"):
        raise LocalProtocolError(f"unknown secagg op {op!r}")
    if STATE_RECORD not in context.state.config_records:
        raise LocalProtocolError("no secure round in progress on this node (no saved state)")
    state = context.state.config_records[STATE_RECORD]["state"]
    words = _train_and_encode(msg, context, call_next, saved_setup(state)) if op == "input" else None
    if isinstance(words, Message):
        return words  # the train handler's error reply
    res = client_step(state, bytes(rec["data"]), signing_key=file_signing_key(context), words=words)
    context.state.config_records[STATE_RECORD] = ConfigRecord({"state": res.state})
    if res.error is not None:
        raise res.error  # Flower returns it as an error reply: the server counts a dropout
    return _reply(msg, data=res.reply)


def _train_and_encode(msg: Message, context: Context, call_next, setup: RoundSetup):
    """The shares step carries the strategy's records: run the user's train handler on them and
    encode ``trained - received``; the reply and its metrics stay here. (Training at this step, as
    Flower's secaggplus_mod does, keeps the input out of the state saved between messages.)"""
    u = partition_client_id(context)
    update = examples = None
    if setup.input.kind is not InputKind.WORDS:
        key, sent = _array_record(msg.content)
        start, layout = arrays_to_vector(sent)
        result = call_next(msg, context)
        if result.has_error():
            return result
        _, trained = _array_record(result.content, key)
        trained_vec, got = arrays_to_vector(trained)
        if got != layout:
            raise InputError("the train handler returned arrays of another layout than it was sent")
        update = trained_vec - start
        for m in result.content.metric_records.values():
            if "num-examples" in m:
                examples = int(m["num-examples"])
        del result, trained  # the trained model and its metrics stay on this node
    return setup.input.encoder().encode(update, client_id=u, round_number=setup.round_number,
                                        round_seed=setup.round_seed, num_examples=examples)


class SecureClientApp(ClientApp):
    """``ClientApp(mods=[secagg_mod, *mods])``: a ClientApp whose train updates leave the node only
    masked, through our protocol. Register the train handler as usual."""

    def __init__(self, *, mods=None) -> None:
        super().__init__(mods=[secagg_mod, *(mods or [])])


# ---------------------------------------------------------------------------- server settings


def _bad(name: str, value, why: str) -> ConfigError:
    return ConfigError(f"run config {name}={value!r}: {why}")


#: run config key -> (SecureSettings field, meaning); the table of docs/flower.md
RUN_CONFIG_KEYS = {
    "secagg-timeout": ("timeout", "seconds a protocol step waits for replies; a node that misses it is a dropout"),
    "secagg-bits": ("bits", "word width: arithmetic is mod 2^bits; a setup whose sum could wrap is refused"),
    "secagg-min-survivors": ("min_survivors", "fraction of a round's sampled nodes below which it aborts "
                                              "(revealing nothing); the DP noise is calibrated for this many"),
    "secagg-graph": ("graph", '"sparse" (SecAgg+) or "complete" (SecAgg)'),
    "secagg-k": ("k", "neighbours per node; 0: the SecAgg+ rule (secagg.graph.choose_k_t)"),
    "secagg-threshold": ("threshold", "Shamir threshold as a fraction of k; 0: the SecAgg+ rule"),
    "secagg-expected-dropout": ("expected_dropout", "the dropout rate the SecAgg+ rule plans for"),
    "secagg-l2-clip": ("l2_clip", "L2 bound on one node's update (both encodings)"),
    "secagg-example-cap": ("example_cap", "without DP: public bound on a node's example count (its weight)"),
    "secagg-verify-keys": ("verify_keys", '"id:hex,...": the nodes\' Ed25519 keys; turns on the active mode'),
    "secagg-poll-interval": ("poll_interval", "seconds between the server's pulls for replies within a step "
                                              "(Flower's own Grid.send_and_receive pulls every 3 s)"),
    "secagg-test-dim": ("test_dim", "test only: > 0 sends known words of this length instead of training"),
    "secagg-test-seed": ("test_seed", "test only: the seed of those words"),
    "dp-epsilon": ("epsilon", "client-level epsilon over dp-rounds rounds (distributed discrete Gaussian); "
                              "0: no DP (fixed point, example-weighted mean)"),
    "dp-delta": ("delta", "client-level delta"),
    "dp-rounds": ("dp_rounds", "rounds the budget covers; default: num-server-rounds"),
}


@dataclass(frozen=True)
class SecureSettings:
    """How ``SecureGrid`` runs each secure round. Run-config names in ``RUN_CONFIG_KEYS``.

    ``epsilon`` None means no DP (fixed-point encoding, example-weighted mean); else client-level
    distributed discrete Gaussian noise for (epsilon, delta) over ``dp_rounds`` rounds.
    ``threshold`` and ``k`` None: the SecAgg+ rule picks them for ``expected_dropout``.
    ``verify_keys`` (client id -> Ed25519 public key) turns on the active-server mode.
    ``test_dim`` > 0: test-only words."""

    timeout: float = 30.0
    bits: int = 32
    min_survivors: float = 0.6
    graph: GraphKind = GraphKind.SPARSE
    k: int | None = None
    threshold: float | None = None
    expected_dropout: float = 0.1
    l2_clip: float = 0.5
    example_cap: int = 10_000
    epsilon: float | None = None
    delta: float = 1e-5
    dp_rounds: int = 1
    verify_keys: Mapping[int, bytes] | None = None
    test_dim: int = 0
    test_seed: int = 0
    poll_interval: float = 0.1

    def __post_init__(self) -> None:
        for name in ("bits", "example_cap", "dp_rounds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise _bad(name, v, "must be a positive int")
        for name in ("timeout", "l2_clip", "delta", "poll_interval"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise _bad(name, v, "must be a positive number")
        if not 0 < self.min_survivors <= 1:
            raise _bad("min_survivors", self.min_survivors, "is a fraction of the round's nodes in (0, 1]")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise _bad("threshold", self.threshold, "is a fraction of k in (0, 1]")
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise _bad("k", self.k, "must be a positive int (or None for the SecAgg+ rule)")
        if not 0 <= self.expected_dropout < 1:
            raise _bad("expected_dropout", self.expected_dropout, "must be in [0, 1)")
        if self.epsilon is not None and not self.epsilon > 0:
            raise _bad("epsilon", self.epsilon, "must be positive (or None for no DP)")
        if not isinstance(self.graph, GraphKind):
            raise _bad("graph", self.graph, "must be a GraphKind")
        if isinstance(self.test_dim, bool) or not isinstance(self.test_dim, int) or self.test_dim < 0:
            raise _bad("test_dim", self.test_dim, "must be an int >= 0")

    @classmethod
    def from_run_config(cls, rc: Mapping) -> SecureSettings:
        """From a Flower run config: only the ``secagg-``/``dp-`` keys of ``RUN_CONFIG_KEYS`` (an
        unknown key with one of those prefixes is an error, so a typo is not silently ignored);
        ``dp-rounds`` defaults to ``num-server-rounds``. ``dp-epsilon = 0`` means no DP,
        ``secagg-k = 0`` / ``secagg-threshold = 0`` the SecAgg+ rule."""
        unknown = sorted(k for k in rc if k.startswith(("secagg-", "dp-")) and k not in RUN_CONFIG_KEYS)
        if unknown:
            close = difflib.get_close_matches(unknown[0], RUN_CONFIG_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _bad(unknown[0], rc[unknown[0]], f"unknown key{hint}; known: {sorted(RUN_CONFIG_KEYS)}")
        kw = {}
        if "num-server-rounds" in rc:
            kw["dp_rounds"] = rc["num-server-rounds"]
        for key, (name, _) in RUN_CONFIG_KEYS.items():
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
                          "timeout", "poll_interval") and isinstance(v, int) and not isinstance(v, bool):
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
                         min_survivors=min_survivors, epsilon=self.epsilon, delta=self.delta, rounds=self.dp_rounds)


def _parse_verify_keys(key: str, text) -> dict[int, bytes]:
    out = {}
    try:
        for item in str(text).split(","):
            u, pk = item.split(":")
            out[int(u)] = bytes.fromhex(pk.strip())
    except ValueError:
        raise _bad(key, text, 'must read "id:hex,id:hex,..."') from None
    return out


# ---------------------------------------------------------------------------- server: the grid


def send_and_receive_polling(grid: Grid, messages: list[Message], *, timeout: float, poll: float) -> list[Message]:
    """``grid.send_and_receive`` that pulls every ``poll`` seconds (Flower's Deployment Engine grid
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
    """``transport.Exchange`` over a Flower Grid: one train Message per node and step, replies
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
        self.step_rtt: dict[str, float] = {}  # step -> seconds of its send_and_receive

    def __call__(self, step: Step, outgoing: Mapping[int, bytes]) -> dict[int, bytes]:
        msgs = []
        for u, data in outgoing.items():
            nid = self.node_of[u]
            if step is Step.SHARES:  # the message that asks for the masked input carries the model
                base = self.train_content.get(nid)
                content = RecordDict(dict(base.items()) if base is not None else {})
                content[RECORD] = ConfigRecord({"op": "input", "data": data})
            else:
                op = "setup" if step is Step.SETUP else "step"
                content = RecordDict({RECORD: ConfigRecord({"op": op, "data": data})})
            msgs.append(Message(content, dst_node_id=nid, message_type=self.message_type,
                                group_id=self.group_id, ttl=self.timeout))
        t0 = time.perf_counter()
        replies = send_and_receive_polling(self.grid, msgs, timeout=self.timeout, poll=self.poll)
        self.step_rtt[step.value] = time.perf_counter() - t0
        out = {}
        for rep in replies:
            u = self.client_of.get(rep.metadata.src_node_id)
            if rep.has_error():
                if u is not None:
                    self.errors[u] = f"{step.value}: error {rep.error.code}: {str(rep.error.reason)[-300:]}"
                    self.log(f"client {u} dropped out at {step.value}: error reply {rep.error.code}")
                continue
            if u is None or u not in outgoing:
                continue
            try:
                out[u] = bytes(rep.content.config_records[RECORD]["data"])
            except (KeyError, TypeError):
                self.errors[u] = f"{step.value}: reply without our record"
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
    hello_seconds: float = 0.0
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
    client); ``nodes``: node id -> protocol id. ``on_step(round, step, clients)`` is called
    before each step (tests)."""

    def __init__(self, grid: Grid, settings: SecureSettings, *, weighted_by_key: str = "num-examples",
                 log: Callable[[str], None] = print,
                 on_step: Callable[[int, Step, tuple[int, ...]], None] | None = None) -> None:
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
        if new:
            self._hello(new, mtype)
        hello_s = time.perf_counter() - t0
        node_of = {self.nodes[nid]: nid for nid in by_node if nid in self.nodes}
        n = len(node_of)
        m = min_survivors_for(max(n, 2), s.min_survivors)
        rec = RoundRecord(round=r, sampled=tuple(sorted(node_of)), min_survivors=m, hello_seconds=hello_s)
        self.rounds.append(rec)
        vec = layout = None
        key, base = _array_record(first.content)
        if not s.test_dim:
            vec, layout = arrays_to_vector(base)
        try:
            if n < max(m, 2):
                raise AbortedError(f"only {n} sampled nodes answered the hello, fewer than min_survivors={m}")
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
        from secagg.simulate import ProtocolStage

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
        hook = None if self.on_step is None else (lambda step, ids: self.on_step(r, step, ids))
        try:
            result, stats = run_server_round(setup, exchange, on_step=hook)
        finally:
            rec.dropouts = dict(exchange.errors)
            rec.step_seconds = dict(exchange.step_rtt)
        rec.dropouts.update({u: f"rejected: {why}" for u, why in stats.rejected.items()})
        rec.survivors, rec.stage_survivors = result.survivors, dict(result.stage_survivors)
        rec.upload_bytes_per_client = max(stats.upload_bytes.values(), default=0)
        rec.download_bytes_per_client = max(stats.download_bytes.values(), default=0)
        decoded = spec.encoder().decode(result.aggregate, survivors=len(result.survivors), round_seed=setup.round_seed)
        if decoded.mean is None:
            rec.aggregate = result.aggregate.copy()
        weight = decoded.total_examples if decoded.total_examples is not None else len(result.survivors)
        return decoded, weight
