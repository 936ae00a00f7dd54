"""`python -m secagg.faults`: a random fault campaign against the protocol, and its round driver.

Each trial runs one round of real ``ClientParty`` / ``ServerParty`` objects over bytes, through a
network that drops clients at random stages and corrupts messages at random (bit flips,
truncation, extension, a forged session id, replays of this or an earlier session, duplicates,
delivery to the wrong client). Every trial must end with the exact sum or a typed abort:

- ``exact``: the server's sum equals the plain sum of its survivors' inputs.
- ``exact_altered_input``: a masked input was changed in transit and accepted (semi-honest mode
  only: there y_u has no integrity check, and a changed y_u is indistinguishable from a client that
  chose another input), so the check is the plain sum plus exactly the change the server accepted
  (accepted y_u - genuine y_u). In active mode y_u is signed: an accepted change is ``wrong``.
- ``aborted``: the server raised ``AbortedError`` and returned no sum.
- ``wrong``: any other sum, a sum over fewer than ``min_survivors``, a client revealing both kinds
  of share of one peer to the point of reconstruction (``leaked``), or an honest client named as a
  forger. Must be 0.
- ``crashed``: a party raised anything but RemoteProtocolError/AbortedError from ``receive`` or
  AbortedError from ``close_stage`` (a LocalProtocolError there means a rejected message corrupted
  the party's state), or a rejected message changed the party's stage. Must be 0.

The transport binds a client's messages to its connection, as any real one must (``ServerParty``
trusts ``sender``): a decodable message whose sender is not its connection's client is dropped by
the transport and counted, not handed to the server. ``run_round`` runs the round on
``secagg.driver.drive`` (the driver simulate and the transports use); the tests use it with their
own network hooks (tests/secagg/test_fuzz.py, test_faults.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from secagg import wire
from secagg.client import ClientParty
from secagg.config import GraphKind, Mode, RoundConfig
from secagg.errors import AbortedError, RefusedRequestError, RemoteProtocolError, RoundMismatchError, SecAggError
from secagg.hazmat.sign import SigningKey
from secagg.driver import drive
from secagg.messages import MaskedInput, Message, ShareKind, UnmaskResponse, party_of
from secagg.server import RoundResult, ServerParty
from secagg.simulate import DropoutSchedule
from secagg.state import ProtocolStage, Stage

SERVER = None  # the server's address in an Envelope


@dataclass(frozen=True)
class Envelope:
    """One message on the wire. ``stage``: the protocol stage it belongs to (a server message
    belongs to the stage of the reply it asks for, as in ``simulate``); ``connection``: the client
    whose connection carries it (sender or receiver); ``only_if_rejected``: a retransmission,
    delivered only if every earlier delivery of the same batch was rejected."""

    stage: ProtocolStage
    connection: int
    to_server: bool
    data: bytes | Message  # a message object reaches the party as is (its object API)
    only_if_rejected: bool = False


Network = Callable[[Envelope], Sequence[Envelope]]


def _faithful(env: Envelope) -> Sequence[Envelope]:
    return (env,)


@dataclass
class RoundReport:
    """Everything ``run_round`` saw; ``outcome()`` judges it."""

    config: RoundConfig
    inputs: Mapping[int, np.ndarray]
    result: RoundResult | None = None
    aborted: AbortedError | None = None
    crashes: list[str] = field(default_factory=list)
    rejections: Counter = field(default_factory=Counter)          # error class name -> count
    transport_rejected: int = 0
    genuine_inputs: dict[int, np.ndarray] = field(default_factory=dict)   # y_u as the client made it
    accepted_inputs: dict[int, np.ndarray] = field(default_factory=dict)  # y_u as the server took it
    revealed: dict[tuple[int, ShareKind], set[int]] = field(default_factory=dict)  # by honest clients
    altered_unmask_senders: set[int] = field(default_factory=set)  # their accepted response was altered
    tampered_accepted: Counter = field(default_factory=Counter)   # message type -> count
    hostile_results: list[str] = field(default_factory=list)      # per altered delivery: "accepted" or the error
    faults: Counter = field(default_factory=Counter)              # fault kind -> count (set by the network)
    client_aborts: int = 0

    def expected_sum(self) -> np.ndarray:
        """Plain sum of the survivors' inputs plus the change in transit the server accepted."""
        cfg = self.config
        dtype = wire.word_dtype(cfg.bits)
        total = np.zeros(cfg.dim, dtype=dtype)
        for u in self.result.survivors:
            total += self.inputs[u].astype(dtype)
            total += self.accepted_inputs[u]
            total -= self.genuine_inputs[u]
        if cfg.bits not in (32, 64):
            total &= dtype.type((1 << cfg.bits) - 1)
        return total

    def leaked(self) -> list[int]:
        """Owners of whom honest clients revealed t shares of both b and s^SK (must be empty)."""
        t = self.config.threshold
        owners = {o for o, _ in self.revealed}
        return sorted(o for o in owners if len(self.revealed.get((o, ShareKind.SELF_MASK), ())) >= t
                      and len(self.revealed.get((o, ShareKind.MASK_KEY), ())) >= t)

    def problems(self) -> list[str]:
        """Why the round is wrong (empty if it is right)."""
        out = []
        if self.leaked():
            out.append(f"both shares of clients {self.leaked()} revealed")
        if self.result is None:
            return out
        res, cfg = self.result, self.config
        if len(res.survivors) < cfg.min_survivors:
            out.append(f"sum over {len(res.survivors)} < min_survivors={cfg.min_survivors}")
        missing = set(res.survivors) - set(self.accepted_inputs)
        if missing:
            out.append(f"survivors {sorted(missing)} sent no accepted masked input")
            return out
        if not np.array_equal(res.aggregate, self.expected_sum()):
            out.append("aggregate differs from the plain sum of the survivors")
        if cfg.mode is Mode.ACTIVE and any(not np.array_equal(self.accepted_inputs[u], self.genuine_inputs[u])
                                           for u in res.survivors):
            out.append("an altered masked input was accepted in active mode (y_u is signed there)")
        accused = set(res.forged_shares_from) - self.altered_unmask_senders
        if accused:
            out.append(f"honest clients {sorted(accused)} named as forgers")
        return out

    def outcome(self) -> str:
        if self.crashes:
            return "crashed"
        if self.problems():
            return "wrong"
        if self.result is None:
            return "aborted" if self.aborted is not None else "crashed"
        altered = any(not np.array_equal(self.accepted_inputs[u], self.genuine_inputs[u])
                      for u in self.result.survivors)
        return "exact_altered_input" if altered else "exact"


def run_round(config: RoundConfig, inputs: Mapping[int, np.ndarray], *,
              signing_keys: Mapping[int, SigningKey] | None = None,
              dropouts: DropoutSchedule | None = None, network: Network = _faithful,
              randbytes: Callable[[int], bytes] | None = None, bind_senders: bool = True) -> RoundReport:
    """One round over bytes through ``network``, which maps each genuine envelope to what is
    delivered instead (nothing, a corrupted copy, extra messages, another receiver). Never raises
    for a party's error: each is recorded in the report. ``bind_senders=False`` hands the server
    whatever arrives on a connection (for fuzzing ``ServerParty`` itself)."""
    dropouts = dropouts or DropoutSchedule.none()
    kw = {} if randbytes is None else {"randbytes": randbytes}
    clients = {u: ClientParty(config, u, inputs[u], signing_key=signing_keys[u] if signing_keys else None, **kw)
               for u in config.client_ids}
    server = ServerParty(config)
    rep = RoundReport(config=config, inputs=inputs)
    server_out: list[Message] = []               # the server's answer to the reply being delivered
    replies: list[tuple[int, Envelope]] = []     # the clients' replies to the message being delivered

    def crash(where: str, exc: BaseException) -> None:
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        rep.crashes.append(f"{where}: {type(exc).__name__}: {exc} ({Path(tb.filename).name}:{tb.lineno})")

    def deliver_batch(batch: Sequence[Envelope], genuine: Envelope, deliver_one) -> None:
        accepted = False
        for env in batch:
            if env.only_if_rejected and accepted:
                continue
            altered = not isinstance(env.data, bytes) or env.data != genuine.data or env.connection != genuine.connection
            result = deliver_one(env, altered)
            accepted = accepted or result == "accepted"
            if altered:
                rep.hostile_results.append(result)

    def to_server(u: int, genuine: Envelope) -> list[Message]:
        server_out.clear()
        deliver_batch(network(genuine), genuine, server_receives)
        return list(server_out)

    def server_receives(env: Envelope, tampered: bool) -> str:
        try:
            msg = env.data if not isinstance(env.data, (bytes, bytearray)) else wire.decode(env.data)
        except SecAggError:
            msg = None
        if bind_senders and msg is not None and party_of(msg) != env.connection:
            rep.transport_rejected += 1
            return "transport"
        before = server.stage
        try:
            out = server.receive(env.data)
        except (RemoteProtocolError, AbortedError) as e:
            rep.rejections[type(e).__name__] += 1
            if isinstance(e, AbortedError):
                rep.aborted = rep.aborted or e
            elif server.stage is not before:
                rep.crashes.append(f"server changed stage {before.value} -> {server.stage.value} on a rejected message")
            return type(e).__name__
        except Exception as e:  # noqa: BLE001 - the campaign records every escape
            crash("server.receive", e)
            return "crash"
        if tampered:
            rep.tampered_accepted[type(msg).__name__] += 1
        if isinstance(msg, MaskedInput):
            rep.accepted_inputs[msg.sender] = np.array(msg.words, dtype=wire.word_dtype(config.bits))
        if isinstance(msg, UnmaskResponse) and tampered:
            rep.altered_unmask_senders.add(msg.sender)
        server_out.extend(out)
        return "accepted"

    def client_receives(env: Envelope, tampered: bool) -> str:
        c = clients.get(env.connection)
        if c is None or env.connection in dropouts.gone_by(env.stage) or c.stage is Stage.ABORTED:
            return "not delivered"
        before = c.stage
        try:
            reply = c.receive(env.data)
        except (RemoteProtocolError, AbortedError) as e:
            rep.rejections[type(e).__name__] += 1
            if isinstance(e, (RefusedRequestError, RoundMismatchError, AbortedError)):
                rep.client_aborts += 1
            elif c.stage is not before:
                rep.crashes.append(f"client {c.id} changed stage {before.value} -> {c.stage.value} on a rejected message")
            return type(e).__name__
        except Exception as e:  # noqa: BLE001
            crash(f"client {c.id}.receive", e)
            return "crash"
        if isinstance(reply, MaskedInput):
            rep.genuine_inputs[c.id] = reply.words.copy()
        if isinstance(reply, UnmaskResponse):
            for s in reply.shares:
                rep.revealed.setdefault((s.owner, s.kind), set()).add(c.id)
        replies.append((c.id, Envelope(env.stage, c.id, True, wire.encode(reply))))
        return "accepted"

    def exchange(stage: ProtocolStage, outgoing: Mapping[int, Message | None]):
        for u, m in outgoing.items():
            if u in dropouts.gone_by(stage):
                continue
            if m is None:  # stage 0: the client starts by itself
                yield u, Envelope(stage, u, True, wire.encode(clients[u].start()))
                continue
            genuine = Envelope(stage, u, False, wire.encode(m))
            replies.clear()
            deliver_batch(network(genuine), genuine, client_receives)
            yield from list(replies)

    try:
        drive(server, exchange, deliver=to_server)
    except AbortedError as e:
        rep.aborted = rep.aborted or e
    except Exception as e:  # noqa: BLE001 - the campaign records every escape
        crash("driver (server.close_stage)", e)
    rep.result = server.result
    return rep


# ---------------------------------------------------------------------------- the campaign

FAULT_KINDS = ("bitflip", "truncate", "extend", "wrong_session", "replay_this_session",
               "replay_old_session", "duplicate", "wrong_party")
BITS_CHOICES = (1, 8, 12, 16, 20, 24, 31, 32, 33, 48, 62)


class FaultyNetwork:
    """Corrupts each message with probability ``rate``. A modified message that is rejected is
    retransmitted intact half the time (else it is lost); injected ones (replays, duplicates)
    come before or after the genuine message."""

    def __init__(self, rng: np.random.Generator, rate: float, client_ids: Sequence[int],
                 old_session: Sequence[Envelope] = ()) -> None:
        self.rng, self.rate, self.ids = rng, rate, list(client_ids)
        self.old = list(old_session)
        self.seen: list[Envelope] = []
        self.faults: Counter = Counter()

    def __call__(self, env: Envelope) -> Sequence[Envelope]:
        self.seen.append(env)
        if self.rng.random() >= self.rate:
            return (env,)
        rng = self.rng
        kind = FAULT_KINDS[rng.integers(len(FAULT_KINDS))]
        if kind == "wrong_party" and env.to_server:
            kind = "bitflip"  # the transport binds client messages to their connection
        self.faults[kind] += 1
        data = bytearray(env.data)
        retry = replace(env, only_if_rejected=True)
        if kind == "bitflip":
            for _ in range(rng.integers(1, 4)):
                i = int(rng.integers(len(data) * 8))
                data[i // 8] ^= 1 << (i % 8)
        elif kind == "truncate":
            data = data[:rng.integers(len(data))]
        elif kind == "extend":
            data += rng.bytes(int(rng.integers(1, 9)))
        elif kind == "wrong_session":
            data[4:36] = rng.bytes(32)
        elif kind in ("replay_this_session", "replay_old_session", "duplicate"):
            pool = {"replay_this_session": self.seen[:-1], "replay_old_session": self.old}[kind] \
                if kind != "duplicate" else [env]
            pool = [e for e in pool if e.to_server == env.to_server] or [env]
            old = pool[rng.integers(len(pool))]
            extra = replace(env, data=old.data)
            return (extra, env) if rng.random() < 0.5 else (env, extra)
        elif kind == "wrong_party":
            other = self.ids[rng.integers(len(self.ids))]
            wrong = replace(env, connection=other)
            return (wrong, retry) if rng.random() < 0.5 else (wrong,)
        bad = replace(env, data=bytes(data))
        return (bad, retry) if rng.random() < 0.5 else (bad,)


@dataclass(frozen=True)
class TrialSpec:
    index: int
    n: int
    graph: GraphKind
    k: int | None
    threshold: int
    min_survivors: int
    bits: int
    dim: int
    mode: Mode
    dropout: float
    fault_rate: float
    corrupt_neighbours: int = 0

    def describe(self) -> dict:
        return {"index": self.index, "n": self.n, "graph": self.graph.value, "k": self.k, "t": self.threshold,
                "min_survivors": self.min_survivors, "bits": self.bits, "dim": self.dim, "mode": self.mode.value,
                "c": self.corrupt_neighbours, "dropout": round(self.dropout, 3), "fault_rate": round(self.fault_rate, 3)}


def draw_trial(rng: np.random.Generator, index: int, *, max_n: int = 60) -> TrialSpec:
    """Random round parameters; n is log-uniform in [3, max_n] so small rounds are not rare."""
    n = int(round(np.exp(rng.uniform(np.log(3), np.log(max_n)))))
    graph = GraphKind.SPARSE if n >= 5 and rng.random() < 0.5 else GraphKind.COMPLETE
    k = int(rng.choice(np.arange(2, min(n - 2, 16) + 1, 2))) if graph is GraphKind.SPARSE else None
    degree = n - 1 if k is None else k
    mode = Mode.ACTIVE if rng.random() < 0.5 else Mode.SEMI_HONEST
    c = int(rng.integers(0, max(1, degree // 3))) if mode is Mode.ACTIVE else 0
    lowest = (degree + c) // 2 + 1 if mode is Mode.ACTIVE else 2   # the rules RoundConfig enforces
    return TrialSpec(index=index, n=n, graph=graph, k=k, threshold=int(rng.integers(lowest, degree + 1)),
                     min_survivors=2 + int(rng.beta(1, 3) * (n - 2)), bits=int(rng.choice(BITS_CHOICES)),
                     dim=int(rng.integers(8, 65)), mode=mode, corrupt_neighbours=c,
                     dropout=float(rng.uniform(0, 0.3)) if rng.random() < 0.7 else 0.0,
                     fault_rate=float(rng.uniform(0, 0.1)) if rng.random() < 0.8 else 0.0)


def run_trial(seed: int, index: int, *, old_session: Sequence[Envelope] = (), max_n: int = 60):
    """Trial ``index`` of campaign ``seed``: deterministic (all randomness, keys included, comes
    from one generator), so any trial can be replayed alone. Returns (spec, report, network)."""
    rng = np.random.default_rng([seed, index])
    spec = draw_trial(rng, index, max_n=max_n)
    ids = sorted(int(i) for i in rng.choice(2**20, size=spec.n, replace=False)) if rng.random() < 0.3 \
        else list(range(spec.n))
    keys = ({u: SigningKey.from_private(rng.bytes(32)) for u in ids} if spec.mode is Mode.ACTIVE else None)
    cfg = RoundConfig.new(client_ids=ids, dim=spec.dim, bits=spec.bits, threshold=spec.threshold,
                          min_survivors=spec.min_survivors, graph=spec.graph, k=spec.k,
                          verify_keys={u: k.public for u, k in keys.items()} if keys else None,
                          session_id=rng.bytes(32), max_corrupt_neighbours=spec.corrupt_neighbours)
    dtype = wire.word_dtype(spec.bits)
    inputs = {u: rng.integers(0, 2**spec.bits, size=spec.dim, dtype=np.uint64).astype(dtype) for u in ids}
    dropouts = DropoutSchedule.random(ids, fraction=spec.dropout, rng=rng)
    net = FaultyNetwork(rng, spec.fault_rate, ids, old_session)
    report = run_round(cfg, inputs, signing_keys=keys, dropouts=dropouts, network=net,
                       randbytes=lambda m: rng.bytes(m))
    report.faults = net.faults
    return spec, report, net, dropouts


OUTCOMES = ("exact", "exact_altered_input", "aborted", "wrong", "crashed")


def campaign(trials: int, seed: int, *, max_n: int = 60, on_trial: Callable | None = None) -> dict:
    """Run ``trials`` trials and summarize; ``wrong`` and ``crashed`` must be 0. ``on_trial(spec,
    report, network, dropouts)`` sees every trial (the tests check fault-free ones against an oracle)."""
    t0 = time.perf_counter()
    counts: Counter = Counter()
    by: dict[str, Counter] = {}
    faults: Counter = Counter()
    rejections: Counter = Counter()
    tampered: Counter = Counter()
    abort_reasons: Counter = Counter()
    failures: list[dict] = []
    extra = Counter()
    old: Sequence[Envelope] = ()
    for i in range(trials):
        spec, rep, net, drops = run_trial(seed, i, old_session=old, max_n=max_n)
        old = net.seen
        out = rep.outcome()
        counts[out] += 1
        for key in (f"mode={spec.mode.value}", f"graph={spec.graph.value}",
                    "faults=none" if not net.faults else "faults=some",
                    "n<=10" if spec.n <= 10 else "n<=30" if spec.n <= 30 else "n>30"):
            by.setdefault(key, Counter())[out] += 1
        faults.update(net.faults)
        rejections.update(rep.rejections)
        tampered.update(rep.tampered_accepted)
        extra["transport_rejected"] += rep.transport_rejected
        extra["client_aborts"] += rep.client_aborts
        extra["leaked"] += bool(rep.leaked())
        if rep.result is not None and rep.result.forged_shares_from:
            extra["rounds_with_forgers_identified"] += 1
        if out == "aborted":
            abort_reasons[_reason(str(rep.aborted))] += 1
        if out in ("wrong", "crashed") and len(failures) < 20:
            failures.append({**spec.describe(), "seed": seed, "outcome": out,
                             "why": rep.crashes[:3] + rep.problems()[:3]})
        if on_trial:
            on_trial(spec, rep, net, drops)
    return {
        "trials": trials, "seed": seed, **{k: counts[k] for k in OUTCOMES},
        "leaked": extra["leaked"], "seconds": round(time.perf_counter() - t0, 2),
        "breakdown": {k: dict(v) for k, v in sorted(by.items())},
        "faults_injected": dict(faults), "rejections_by_error": dict(rejections.most_common()),
        "tampered_but_accepted_by_type": dict(tampered), "abort_reasons": dict(abort_reasons.most_common()),
        "transport_rejected": extra["transport_rejected"], "client_aborts": extra["client_aborts"],
        "rounds_with_forgers_identified": extra["rounds_with_forgers_identified"],
        "failures": failures, "max_n": max_n,
        "machine": platform.machine(), "python": platform.python_version(),
    }


def _reason(msg: str) -> str:
    """A short class of an abort message, for the breakdown."""
    for key, name in (("min_survivors", "fewer than min_survivors"), ("live neighbours", "masks unrecoverable"),
                      ("forged or inconsistent", "forged shares, no authentic subset"),
                      ("fewer than t=", "fewer than t shares or signatures")):
        if key in msg:
            return name
    return msg[:60]


def print_table(r: dict) -> None:
    print(f"{r['trials']} trials, seed {r['seed']}, {r['seconds']} s")
    for k in OUTCOMES:
        print(f"  {k:<22}{r[k]:>7}")
    print(f"  {'leaked':<22}{r['leaked']:>7}")
    cols = list(OUTCOMES)
    print(f"\n{'':<22}" + "".join(f"{c[:12]:>13}" for c in cols))
    for key, v in r["breakdown"].items():
        print(f"{key:<22}" + "".join(f"{v.get(c, 0):>13}" for c in cols))
    print("\nfaults injected:", ", ".join(f"{k} {v}" for k, v in sorted(r["faults_injected"].items())))
    print("rejected as:", ", ".join(f"{k} {v}" for k, v in r["rejections_by_error"].items()))
    print("altered yet accepted:", r["tampered_but_accepted_by_type"] or "none")
    print("aborts:", ", ".join(f"{k} {v}" for k, v in r["abort_reasons"].items()))
    for f in r["failures"]:
        print("FAILURE", f)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m secagg.faults", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-n", type=int, default=60)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--replay", type=int, default=None, help="run only this trial index, verbosely")
    a = p.parse_args(argv)
    if a.replay is not None:
        old = run_trial(a.seed, a.replay - 1, max_n=a.max_n)[2].seen if a.replay > 0 else ()
        spec, rep, net, drops = run_trial(a.seed, a.replay, old_session=old, max_n=a.max_n)
        print(spec.describe(), dict(net.faults), {s.name: sorted(v) for s, v in drops.before.items()})
        print("outcome:", rep.outcome(), rep.crashes, rep.problems(), rep.aborted)
        return 0 if rep.outcome() not in ("wrong", "crashed") else 1
    r = campaign(a.trials, a.seed, max_n=a.max_n)
    print_table(r)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(r, indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0 if r["wrong"] == 0 and r["crashed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
