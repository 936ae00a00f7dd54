"""In-process round: n ClientParty objects and one ServerParty over bytes, run by secagg.driver.

Every message crosses as bytes (``wire.encode`` / ``decode``), exactly as a real transport would
carry it. A dropout schedule says which clients vanish before which protocol stage; a vanished
client sends nothing from then on. The result holds what the server learned, who survived each
stage, what the server received (bytes or SHA-256 digests), and per-stage timings and byte counts.
"""

from __future__ import annotations

import enum
import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from . import masking, wire
from .client import ClientParty
from .config import Mode, RoundConfig
from .driver import drive
from .encoding import FixedPointEncoding
from .errors import AbortedError, ConfigError, InputError, OverflowRiskError
from .hazmat.sign import SigningKey
from .messages import Message
from .server import ServerParty
from .state import ProtocolStage


class Transcript(enum.Enum):
    FULL = "full"      # keep every message's bytes
    DIGEST = "digest"  # keep SHA-256 of each (for audits of big rounds)
    NONE = "none"


@dataclass(frozen=True)
class DropoutSchedule:
    """``before[s]``: clients that vanish before sending their stage-``s`` message."""

    before: Mapping[ProtocolStage, frozenset[int]] = field(default_factory=dict)

    @classmethod
    def none(cls) -> "DropoutSchedule":
        return cls({})

    @classmethod
    def at(cls, **stages: set[int] | list[int]) -> "DropoutSchedule":
        """DropoutSchedule.at(MASKED_INPUT={3}, UNMASK={5, 6})"""
        return cls({ProtocolStage[name]: frozenset(ids) for name, ids in stages.items()})

    @classmethod
    def random(cls, client_ids, *, fraction: float, rng: np.random.Generator,
               stages=tuple(ProtocolStage)) -> "DropoutSchedule":
        """Drop ``fraction`` of the clients in total, each before a stage drawn uniformly from ``stages``."""
        if not 0 <= fraction < 1:
            raise ConfigError(f"dropout fraction must be in [0, 1), got {fraction!r}")
        ids = np.array(sorted(client_ids))
        gone = rng.choice(ids, size=int(round(fraction * len(ids))), replace=False)
        when = rng.choice(np.array([int(s) for s in stages]), size=len(gone))
        before: dict[ProtocolStage, set[int]] = defaultdict(set)
        for c, s in zip(gone.tolist(), when.tolist()):
            before[ProtocolStage(s)].add(int(c))
        return cls({s: frozenset(v) for s, v in before.items()})

    def gone_by(self, stage: ProtocolStage) -> frozenset[int]:
        """Clients that have vanished by the time stage ``stage`` is sent."""
        return frozenset().union(*(ids for s, ids in self.before.items() if s <= stage))


@dataclass
class StageStats:
    client_seconds: float = 0.0   # wall-clock while the stage's clients ran (concurrently)
    server_seconds: float = 0.0
    upload_bytes: int = 0         # client -> server
    download_bytes: int = 0       # server -> client
    messages: int = 0


@dataclass
class SimulationResult:
    aggregate: np.ndarray | None          # sum mod 2**bits over ``survivors``; None if aborted
    survivors: tuple[int, ...]
    stage_survivors: dict[str, tuple[int, ...]]
    transcript: list[tuple[int, int, bytes]]  # (stage, sender, bytes or digest) the server received
    stages: dict[ProtocolStage, StageStats]
    client_seconds: dict[int, float]          # per client, all its stages (its own wall-clock)
    aborted: AbortedError | None = None
    masked_input_bytes: dict[int, int] = field(default_factory=dict)
    decoded: np.ndarray | None = None         # float sum, when an encoding was given
    noise_seeds: dict[int, bytes] = field(default_factory=dict)  # revealed excess noise seeds

    @property
    def round_seconds(self) -> float:
        """Wall-clock of the round, input generation excluded."""
        return sum(s.client_seconds + s.server_seconds for s in self.stages.values())

    @property
    def server_seconds(self) -> float:
        return sum(s.server_seconds for s in self.stages.values())


#: Stages whose clients run concurrently: only where their work is mostly masks (AES-CTR and numpy
#: release the GIL). Measured at n=300, d=1000 (masks negligible, 2 cores): the round took
#: 1.28 and 1.52 s on one thread, 1.80 and 1.54 s with clients on two.
CONCURRENT_STAGES = frozenset({ProtocolStage.MASKED_INPUT})

InputSource = Mapping[int, np.ndarray] | Callable[[int], np.ndarray]


def simulate(config: RoundConfig, inputs: InputSource, *, dropouts: DropoutSchedule | None = None,
             signing_keys: Mapping[int, SigningKey] | None = None,
             transcript: Transcript = Transcript.FULL,
             encoding: FixedPointEncoding | None = None,
             randbytes: Callable[[int], bytes] | None = None,
             noise_seeds: Mapping[int, bytes] | None = None,
             workers: int | None = None) -> SimulationResult:
    """Run one round. ``inputs`` maps (or lazily produces) each client's encoded words; a callable
    is asked only when the client needs its input, so a large round never holds n*d words.
    With ``encoding`` (the one the inputs were encoded with) the result also holds the decoded sum.
    ``noise_seeds`` (client -> 32 bytes) is required when ``config.excess_noise`` is set.

    In the masked-input stage clients run concurrently on ``workers`` threads (default:
    secagg.masking's, all cores), at most 2 * workers at a time, so at most that many inputs and
    masked inputs exist at once, and a client's masks take in workers that fall idle. The other
    stages' client work (X25519, HKDF, AES-GCM of 90-byte shares, Shamir) holds the GIL, so there
    clients run one after another: threads only added GIL hand-offs (``CONCURRENT_STAGES``). The
    server's masks use ``workers`` too. The server takes replies in client order, so the sum and
    transcript do not depend on ``workers``. Stage times are wall-clock; input generation is not
    timed."""
    dropouts = dropouts or DropoutSchedule.none()
    if encoding is not None:
        if encoding.bits != config.bits:
            raise ConfigError(f"encoding has bits={encoding.bits}, the round has bits={config.bits}")
        if encoding.max_clients < config.n:
            raise OverflowRiskError(f"encoding is safe for max_clients={encoding.max_clients}, but the round has "
                                    f"n={config.n} clients: their sum could wrap 2^{config.bits}")
    if config.mode is Mode.ACTIVE and signing_keys is None:
        raise ConfigError("the config has verify_keys (active mode): pass signing_keys")
    n_workers = masking.current_workers(workers)
    kwargs = {} if randbytes is None else {"randbytes": randbytes}
    if config.excess_noise:
        if noise_seeds is None:
            raise ConfigError("the config has excess_noise: pass noise_seeds")
        kwargs_of = lambda u: {**kwargs, "noise_seed": noise_seeds[u]}  # noqa: E731
    else:
        kwargs_of = lambda u: kwargs  # noqa: E731
    clients = {u: ClientParty(config, u, signing_key=signing_keys[u] if signing_keys else None, **kwargs_of(u))
               for u in config.client_ids}
    server = ServerParty(config)
    stats = {s: StageStats() for s in ProtocolStage}
    per_client: dict[int, float] = defaultdict(float)
    record: list[tuple[int, int, bytes]] = []
    upload: dict[int, int] = {}
    if callable(inputs):
        get_input = inputs
    else:
        def get_input(u: int) -> np.ndarray:
            if u not in inputs:
                raise InputError(f"inputs has no entry for client {u}, which reached the masked-input stage")
            return inputs[u]
    now = [ProtocolStage.KEYS]

    def run_client(job: tuple[int, bytes | None]) -> tuple[int, bytes | None, float]:
        u, data = job
        c = clients[u]
        t0 = time.perf_counter()
        try:
            msg = c.start() if data is None else c.receive(data)
        except AbortedError:
            msg = None  # this client gave up (e.g. too few neighbours): to the server, a dropout
        reply = None if msg is None else wire.encode(msg)
        return u, reply, time.perf_counter() - t0

    def exchange(stage: ProtocolStage, outgoing: Mapping[int, Message | None]):
        now[0] = stage
        st, gone = stats[stage], dropouts.gone_by(stage)
        order = list(outgoing)
        stage_workers = n_workers if stage in CONCURRENT_STAGES else 1
        batch = 2 * stage_workers
        for i in range(0, len(order), batch):
            t0, part = time.perf_counter(), []
            for u in order[i:i + batch]:  # the server's messages as bytes, a batch at a time, each
                m = outgoing.pop(u)       # freed once sent (n*k forwarded shares would stay alive)
                data = None if m is None else wire.encode(m)
                if data is not None:
                    st.download_bytes += len(data)
                if u not in gone:
                    part.append((u, data))
            st.server_seconds += time.perf_counter() - t0
            if stage is ProtocolStage.MASKED_INPUT:
                for u, _ in part:
                    clients[u].set_input(get_input(u))
            t0, server_before = time.perf_counter(), st.server_seconds
            for u, reply, dt in masking.imap(run_client, part, workers=stage_workers):
                per_client[u] += dt
                if reply is not None:
                    yield u, reply
            st.client_seconds += time.perf_counter() - t0 - (st.server_seconds - server_before)

    def deliver(u: int, data: bytes) -> list[Message]:
        stage = now[0]
        st = stats[stage]
        st.upload_bytes += len(data)
        st.messages += 1
        if stage is ProtocolStage.MASKED_INPUT:
            upload[u] = len(data)
        if transcript is Transcript.FULL:
            record.append((int(stage), u, data))
        elif transcript is Transcript.DIGEST:
            record.append((int(stage), u, hashlib.sha256(data).digest()))
        t0 = time.perf_counter()
        out = server.receive(data)
        st.server_seconds += time.perf_counter() - t0
        return out

    def close(stage: ProtocolStage) -> list[Message]:
        t0 = time.perf_counter()
        try:
            return server.close_stage()
        finally:
            stats[stage].server_seconds += time.perf_counter() - t0

    aborted = None
    try:
        with masking.workers(n_workers):
            drive(server, exchange, deliver=deliver, close=close)
    except AbortedError as e:
        aborted = e
    res = server.result
    decoded = None
    if res is not None and encoding is not None:
        decoded = encoding.decode_sum(res.aggregate, count=len(res.survivors))
    return SimulationResult(decoded=decoded,
                            aggregate=None if res is None else res.aggregate,
                            survivors=() if res is None else res.survivors,
                            stage_survivors=dict(server.stage_survivors), transcript=record, stages=stats,
                            client_seconds=dict(per_client), aborted=aborted, masked_input_bytes=upload,
                            noise_seeds={} if res is None else dict(res.noise_seeds))


def plain_sum(inputs: Mapping[int, np.ndarray], ids, bits: int) -> np.ndarray:
    """The reference: sum of the given clients' words mod 2**bits, computed in the clear."""
    dtype = wire.word_dtype(bits)
    total = np.zeros_like(next(iter(inputs.values())), dtype=dtype)
    for u in ids:
        np.add(total, inputs[u].astype(dtype), out=total)
    if bits not in (32, 64):
        total &= dtype.type((1 << bits) - 1)
    return total
