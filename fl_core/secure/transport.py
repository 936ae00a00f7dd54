"""Transport-neutral glue between secagg's sans-I/O parties and any carrier of bytes.

A secure round is a few request/reply exchanges between a server and its clients, each carrying
opaque bytes. Flower's Message API (the ``flower`` package) is one carrier; anything that can send
bytes to a set of clients and collect the replies that arrive before a deadline is another. Nothing here
imports a framework, so the same code is tested in one process and runs over Flower unchanged.

- ``RoundSetup``: what the server sends first: the public ``RoundConfig``, the round number, a
  public round seed and an ``InputSpec`` saying how a client turns its update into words. JSON, so
  another implementation can read it (docs/flower.md, "Use with any transport").
- ``client_begin`` / ``client_step``: the client as pure functions of (state bytes, message bytes);
  a carrier that handles each message in a fresh process (Flower) keeps the state between messages.
  ``client_begin`` takes the client's own ``ClientPolicy`` (secagg: its verify keys and floors)
  and refuses a setup that does not meet it, so no carrier can forget the check.
- ``run_server_round``: the server over an ``Exchange`` callable. A client whose reply does not
  come back before the deadline is a dropout. The server only ever sees masked words.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from secagg import wire
from secagg.client import ClientParty
from secagg.config import ClientPolicy, GraphKind, RoundConfig
from secagg.errors import (ConfigError, DecodeError, InputError, RefusedRequestError,
                           RemoteProtocolError, SecAggError)
from secagg.hazmat.sign import SigningKey
from secagg.driver import drive
from secagg.messages import Message, party_of
from secagg.server import RoundResult, ServerParty
from secagg.state import ProtocolStage

from fl_core.secure.inputs import (InputKind, InputSpec, ddg_plan, decode_aggregate, encode_input,  # noqa: F401
                                   known_words)

__all__ = ["ProtocolStage", "InputKind", "InputSpec", "RoundSetup", "StepResult", "Exchange", "ServerRoundStats",
           "encode_input", "decode_aggregate", "known_words", "check_setup", "client_begin", "client_step",
           "run_server_round", "min_survivors_for", "ddg_plan", "SETUP_VERSION", "ClientPolicy", "saved_setup",
           "saved_client_id"]

SETUP_VERSION = 1
_STATE_MAGIC = b"SAfs"  # client state: setup bytes + ClientParty.to_state()


# ---------------------------------------------------------------------------- round setup


def _config_to_dict(cfg: RoundConfig) -> dict:
    return {"session_id": cfg.session_id.hex(), "client_ids": list(cfg.client_ids), "dim": cfg.dim,
            "bits": cfg.bits, "threshold": cfg.threshold, "min_survivors": cfg.min_survivors,
            "graph": cfg.graph.value, "k": cfg.k,
            "verify_keys": None if cfg.verify_keys is None else {str(u): pk.hex() for u, pk in cfg.verify_keys.items()},
            "max_corrupt_neighbours": cfg.max_corrupt_neighbours,
            "graph_seed": None if cfg.graph_seed is None else cfg.graph_seed.hex(),
            "insecure_weak_threshold": cfg.insecure_weak_threshold, "excess_noise": cfg.excess_noise}


def _config_from_dict(d: Mapping) -> RoundConfig:
    """Inverse of ``_config_to_dict``; the fields after ``verify_keys`` default as RoundConfig's do
    when absent (setups written before they were carried)."""
    graph = GraphKind(d["graph"])
    vk, seed = d["verify_keys"], d.get("graph_seed")
    return RoundConfig(session_id=bytes.fromhex(d["session_id"]), client_ids=tuple(int(u) for u in d["client_ids"]),
                       dim=d["dim"], bits=d["bits"], threshold=d["threshold"], min_survivors=d["min_survivors"],
                       graph=graph, k=d["k"] if graph is GraphKind.SPARSE else None,
                       verify_keys=None if vk is None else {int(u): bytes.fromhex(pk) for u, pk in vk.items()},
                       max_corrupt_neighbours=d.get("max_corrupt_neighbours", 0),
                       graph_seed=None if seed is None else bytes.fromhex(seed),
                       insecure_weak_threshold=d.get("insecure_weak_threshold", False),
                       excess_noise=d.get("excess_noise", False))


@dataclass(frozen=True)
class RoundSetup:
    """The first message of a round; every client of the round gets the same bytes."""

    config: RoundConfig
    round_number: int
    round_seed: bytes       # 32 public bytes: the DDG rotation seed
    input: InputSpec

    def __post_init__(self) -> None:
        if not isinstance(self.round_seed, bytes) or len(self.round_seed) != 32:
            raise ConfigError(f"round_seed must be 32 bytes, got {self.round_seed!r:.80}")
        if self.config.dim != self.input.word_dim or self.config.bits != self.input.bits:
            raise ConfigError(f"config has dim={self.config.dim}, bits={self.config.bits}; the input spec "
                              f"gives dim={self.input.word_dim}, bits={self.input.bits}")

    def to_bytes(self) -> bytes:
        return json.dumps({"v": SETUP_VERSION, "config": _config_to_dict(self.config), "round": self.round_number,
                           "round_seed": self.round_seed.hex(), "input": self.input.to_dict()},
                          separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundSetup:
        """Parse; a malformed or invalid setup is a DecodeError naming what was wrong. The last few
        setups parsed are reused, so a process serving many clients builds each graph once."""
        return _parse_setup(bytes(data))

    @classmethod
    def _parse(cls, data: bytes) -> RoundSetup:
        try:
            d = json.loads(bytes(data))
            if d["v"] != SETUP_VERSION:
                raise ValueError(f"setup version {d['v']!r}, this library reads {SETUP_VERSION}")
            return cls(config=_config_from_dict(d["config"]), round_number=int(d["round"]),
                       round_seed=bytes.fromhex(d["round_seed"]), input=InputSpec.from_dict(d["input"]))
        except (ValueError, KeyError, TypeError, SecAggError) as e:
            raise DecodeError(f"round setup is malformed: {e}") from None


@functools.lru_cache(maxsize=4)
def _parse_setup(data: bytes) -> RoundSetup:
    return RoundSetup._parse(data)


def check_setup(setup: RoundSetup, client_id: int, *, policy: ClientPolicy,
                max_epsilon: float | None = None) -> None:
    """A client's own checks before it spends effort: it is in the round, the round meets what the
    client holds itself (``policy``, secagg's ``ClientPolicy``: its verify keys and floors, from its
    own configuration, never from the server), and it keeps the promises its DP plan relies on;
    ``max_epsilon``: the largest epsilon it accepts (a round without DP is then refused).
    RefusedRequestError naming what was wrong otherwise (the client drops out)."""
    cfg, spec = setup.config, setup.input
    if not isinstance(policy, ClientPolicy):
        raise ConfigError(f"policy must be a secagg.config.ClientPolicy, got {policy!r:.80}")
    if client_id not in cfg.client_ids:
        raise RefusedRequestError(f"client {client_id} is not in the round's client_ids")
    policy.check(cfg)
    if spec.kind is InputKind.DDG:
        if cfg.min_survivors < spec.min_survivors:
            raise RefusedRequestError(f"round min_survivors={cfg.min_survivors} is below the "
                                      f"min_survivors={spec.min_survivors} the noise is calibrated for")
        if cfg.n > spec.num_clients:
            raise RefusedRequestError(f"round has n={cfg.n} clients, the DP plan's range holds num_clients="
                                      f"{spec.num_clients}")
        if max_epsilon is not None and (spec.epsilon is None or spec.epsilon > max_epsilon):
            raise RefusedRequestError(f"round promises epsilon={spec.epsilon!r}, this client accepts at most "
                                      f"max_epsilon={max_epsilon!r}")
    elif max_epsilon is not None:
        raise RefusedRequestError(f"round has no DP ({spec.kind.value}), this client requires "
                                  f"epsilon <= max_epsilon={max_epsilon!r}")


# ---------------------------------------------------------------------------- client side


@dataclass(frozen=True)
class StepResult:
    """A client's reply (None if it refused or failed), its state to keep, and the error if any."""

    reply: bytes | None
    state: bytes
    error: SecAggError | None = None


def _pack_state(setup: bytes, party: bytes) -> bytes:
    return _STATE_MAGIC + struct.pack(">I", len(setup)) + setup + party


def _unpack_state(state: bytes) -> tuple[bytes, bytes]:
    state = bytes(state)
    if state[:4] != _STATE_MAGIC or len(state) < 8:
        raise InputError(f"state is not a saved client session (starts {state[:8]!r})")
    (n,) = struct.unpack_from(">I", state, 4)
    return state[8:8 + n], state[8 + n:]


def client_begin(setup: RoundSetup, *, client_id: int, policy: ClientPolicy, max_epsilon: float | None = None,
                 words: np.ndarray | None = None, signing_key: SigningKey | None = None,
                 randbytes: Callable[[int], bytes] = os.urandom) -> StepResult:
    """Check the setup against what this client holds (``check_setup``: RefusedRequestError, and
    nothing is sent), then start its round: the AdvertiseKeys reply and the state. In active mode
    the party verifies its peers with the keys of ``policy``, the client's own, never the setup's.
    ``words`` (the encoded input) may come now or with the shares step (``client_step(...,
    words=...)``), so a carrier need not keep the input between messages."""
    check_setup(setup, client_id, policy=policy, max_epsilon=max_epsilon)
    cfg = setup.config
    if policy.verify_keys is not None:  # equal to the setup's (checked): the party holds our own copy
        cfg = dataclasses.replace(cfg, verify_keys={u: policy.verify_keys[u] for u in cfg.client_ids})
    party = ClientParty(cfg, client_id, words, signing_key=signing_key, randbytes=randbytes)
    reply = wire.encode(party.start())
    return StepResult(reply, _pack_state(setup.to_bytes(), party.to_state()))


def saved_setup(state: bytes) -> RoundSetup:
    """The round setup a client's saved state belongs to."""
    return RoundSetup.from_bytes(_unpack_state(state)[0])


def saved_client_id(state: bytes, *, signing_key: SigningKey | None = None) -> int:
    """The protocol id of the client a saved state belongs to (active mode: with its signing key)."""
    setup_bytes, party_bytes = _unpack_state(state)
    return ClientParty.from_state(RoundSetup.from_bytes(setup_bytes).config, party_bytes, signing_key=signing_key).id


def client_step(state: bytes, message: bytes, *, signing_key: SigningKey | None = None,
                words: np.ndarray | None = None) -> StepResult:
    """Handle one server message; ``words``: the input, if not given to ``client_begin``, before the
    message that asks for the masked input. A rejected message leaves the state as it was; a
    refused request aborts the party for good (the returned state says so)."""
    setup_bytes, party_bytes = _unpack_state(state)
    setup = RoundSetup.from_bytes(setup_bytes)
    party = ClientParty.from_state(setup.config, party_bytes, signing_key=signing_key)
    try:
        if words is not None:
            party.set_input(words)
        reply = wire.encode(party.receive(message))
    except SecAggError as e:
        return StepResult(None, _pack_state(setup_bytes, party.to_state()), e)
    return StepResult(reply, _pack_state(setup_bytes, party.to_state()))


# ---------------------------------------------------------------------------- server side

#: exchange(stage, {client id: bytes to send}) -> {client id: reply bytes} for the replies that came
#: back before the deadline. ``stage`` (secagg's ``ProtocolStage``) is the stage of the replies the
#: exchange collects: KEYS for the one that sends the RoundSetup, MASKED_INPUT for the one that
#: sends the forwarded shares. The carrier must key replies by the sender it authenticated.
Exchange = Callable[[ProtocolStage, Mapping[int, bytes]], Mapping[int, bytes]]


@dataclass
class ServerRoundStats:
    step_seconds: dict[str, float] = field(default_factory=dict)  # stage key -> seconds of its exchange
    upload_bytes: dict[int, int] = field(default_factory=dict)     # per client, all its replies
    download_bytes: dict[int, int] = field(default_factory=dict)   # per client, all it was sent
    rejected: dict[int, str] = field(default_factory=dict)         # client -> why its reply was dropped
    silent: dict[str, tuple[int, ...]] = field(default_factory=dict)  # stage key -> clients with no reply


def run_server_round(setup: RoundSetup, exchange: Exchange, *,
                     on_step: Callable[[ProtocolStage, tuple[int, ...]], None] | None = None) -> tuple[RoundResult, ServerRoundStats]:
    """Drive a ServerParty through one round over ``exchange`` (on ``secagg.driver.drive``, the
    driver simulate and the fault campaign use); AbortedError if it aborts.

    A reply that does not decode, claims another sender, or that the server rejects is dropped:
    that client is then a dropout like one that never answered.
    """
    cfg = setup.config
    server = ServerParty(cfg)
    stats = ServerRoundStats()
    payload = setup.to_bytes()
    t0 = {ProtocolStage.KEYS: 0.0}

    def carry(stage: ProtocolStage, outgoing: dict[int, Message | None]):
        t0[stage] = time.perf_counter()
        sent = {u: payload if m is None else wire.encode(m) for u, m in outgoing.items()}
        if on_step is not None:
            on_step(stage, tuple(sorted(sent)))
        for u, data in sent.items():
            stats.download_bytes[u] = stats.download_bytes.get(u, 0) + len(data)
        replies = exchange(stage, sent)
        for u in sorted(replies):
            if u not in sent:
                stats.rejected[u] = f"{stage.key} reply from a client that was not asked"
                continue
            stats.upload_bytes[u] = stats.upload_bytes.get(u, 0) + len(replies[u])
            yield u, replies[u]
        stats.silent[stage.key] = tuple(sorted(set(sent) - set(replies)))
        stats.step_seconds[stage.key] = time.perf_counter() - t0[stage]

    def deliver(u: int, data: bytes) -> list[Message]:
        try:
            msg = wire.decode(data)
            if party_of(msg) != u:
                raise RemoteProtocolError(f"client {u} sent a message signed as client {party_of(msg)}")
            return server.receive(msg)
        except RemoteProtocolError as e:
            stats.rejected[u] = str(e)
            return []

    def close(stage: ProtocolStage) -> list[Message]:
        try:
            return server.close_stage()  # the deadline: whoever has not answered dropped out
        finally:
            stats.step_seconds[stage.key] = time.perf_counter() - t0[stage]

    return drive(server, carry, deliver=deliver, close=close), stats


def min_survivors_for(n: int, fraction: float) -> int:
    """The round's absolute floor from a fraction of its n clients (at least 2, at most n)."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"min_survivors fraction must be in (0, 1], got {fraction!r}")
    return min(n, max(2, math.ceil(fraction * n)))
