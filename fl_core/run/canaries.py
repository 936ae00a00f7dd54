"""Canaries for empirical privacy estimation, and what a run records for its audit.

Client level (Andrew, Kairouz, Oh, Oprea, McMahan, Suriyakumar, "One-shot Empirical Privacy
Estimation for Federated Learning", ICLR 2024, arXiv:2302.03098): canary clients whose update is
a random unit direction times the clip norm take part in rounds like real clients, through the
same clipping, noise shares and secure aggregation. Never-inserted canaries (directions drawn the
same way, never sent) give the null. The cosine of the final model delta with each direction is
the test statistic; Gaussians fitted to the two sets of cosines give an epsilon estimate
(``dp.empirical``, where the estimators live: pure math, no torch).

Sample level (Steinke, Nasr, Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS
2023, arXiv:2305.08846): canary examples, each included in its client's data with probability
1/2; after training the auditor scores each canary, guesses "in" for the top scores and "out" for
the bottom ones, and the number of correct guesses gives an epsilon lower bound at a stated
confidence (their Theorem 3 for (epsilon, delta)-DP).

``AuditRecorder`` is the run's side of ``python -m fl_core audit``: it inserts the canaries and
keeps, under ``RUN_DIR/audit/``, the global model after every round and the bytes of every
message the server received in the first ``audit.record_rounds`` rounds (docs/audit.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from secagg.simulate import Transcript

from fl_core.errors import FLError, bad_field
from fl_core.learn.data import ClientData, FederatedDataset, as_tensors
from fl_core.run.rundir import AUDIT_DIR

__all__ = [
    "ClientCanaries", "ExampleCanaries", "AuditRecorder", "AUDIT_DIR",
    "read_messages", "write_messages", "read_trajectory",
]
DEFAULT_NULL_CANARIES = 1000  # never sent, so they cost only the audit's time; more of them narrow the interval
META = "meta.json"
TRAJECTORY = "trajectory.f32"  # raw little-endian float32 rows of ``dim`` values
_MAGIC = b"FLAUDIT1"


def _seed_int(seed: bytes) -> int:
    return int.from_bytes(hashlib.sha256(b"fl_core/canaries/v1" + seed).digest(), "big")


def _rng(seed: bytes, *key: int) -> np.random.Generator:
    """An independent numpy generator per (seed, key): canary j, round r, ... (SeedSequence spawn keys)."""
    return np.random.default_rng(np.random.SeedSequence(_seed_int(seed), spawn_key=key))


# --------------------------------------------------------------------------- canaries


@dataclass(frozen=True)
class ClientCanaries:
    """``inserted`` canary clients that take part in rounds and ``null`` ones that never do.

    Canary j (0 <= j < inserted + null) has the unit direction ``direction(j)``, uniform on the
    sphere (a normalised Gaussian vector); inserted canary j sends ``l2_clip * direction(j)`` as
    its update, under client id ``first_id + j``. Participation follows the real clients' rule
    (as in Andrew et al.: canaries are sampled like clients): with Poisson sampling each canary
    joins each round with probability ``rate``; with fixed-size cohorts ``per_round`` of them are
    drawn without replacement, so a canary is in a round as often as a real client is.
    """

    seed: bytes
    dim: int
    inserted: int
    null: int
    l2_clip: float
    first_id: int
    rate: float
    per_round: int | None = None   # fixed-size cohorts; None: Poisson at ``rate``

    def direction(self, j: int) -> np.ndarray:
        v = _rng(self.seed, 0, j).standard_normal(self.dim)
        return v / np.linalg.norm(v)

    def directions(self, js) -> np.ndarray:
        """Rows: the unit directions of canaries ``js`` (float64)."""
        return np.stack([self.direction(int(j)) for j in js]) if len(js) else np.zeros((0, self.dim))

    def members(self, r: int) -> list[int]:
        """Indices (0 <= j < inserted) of the canaries taking part in round r (0-based)."""
        if not self.inserted:
            return []
        rng = _rng(self.seed, 1, r)
        if self.per_round is not None:
            return sorted(rng.choice(self.inserted, size=self.per_round, replace=False).tolist())
        return np.flatnonzero(rng.random(self.inserted) < self.rate).tolist()

    def updates(self, r: int) -> dict[int, np.ndarray]:
        """``{client id: update}`` of the canaries in round r: clip norm times their direction."""
        return {self.first_id + j: (self.l2_clip * self.direction(j)).astype(np.float32) for j in self.members(r)}

    @property
    def expected_per_round(self) -> float:
        return float(self.per_round) if self.per_round is not None else self.rate * self.inserted

    @property
    def max_per_round(self) -> int:
        return self.per_round if self.per_round is not None else self.inserted


@dataclass(frozen=True)
class ExampleCanaries:
    """``count`` canary examples: random inputs in the data's value range with random labels.

    Canary i lives on client ``i % num_clients`` and is included in its training data with
    probability 1/2 (Steinke et al.: independent inclusions are what make one run enough).
    """

    seed: bytes
    count: int
    num_clients: int

    def included(self) -> np.ndarray:
        return _rng(self.seed, 2).random(self.count) < 0.5

    def examples(self, input_shape: tuple[int, ...], num_classes: int, lo: float, hi: float):
        rng = _rng(self.seed, 3)
        x = rng.uniform(lo, hi, size=(self.count, *input_shape)).astype(np.float32)
        y = rng.integers(0, num_classes, size=self.count)
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    def augment(self, data: FederatedDataset) -> FederatedDataset:
        """``data`` with each included canary appended to its client's training set."""
        trains = [as_tensors(c.train) for c in data.clients]
        if any(t is None for t in trains):
            raise bad_field("audit.canary_examples", self.count,
                            "canary examples need clients whose training data are TensorDatasets")
        lo = min(float(t[0].min()) for t in trains)
        hi = max(float(t[0].max()) for t in trains)
        x, y = self.examples(data.input_shape, data.num_classes, lo, hi)
        keep = self.included()
        holder = np.arange(self.count) % self.num_clients
        clients = []
        for u, (c, (cx, cy)) in enumerate(zip(data.clients, trains)):
            mine = np.flatnonzero(keep & (holder == u))
            if len(mine):
                c = ClientData(TensorDataset(torch.cat([cx, x[mine]]), torch.cat([cy, y[mine]])), c.test)
            clients.append(c)
        return FederatedDataset(clients=tuple(clients), test=data.test, num_classes=data.num_classes,
                                input_shape=data.input_shape, public=data.public, name=data.name)




# --------------------------------------------------------------------------- message files


def write_messages(path: Path, messages) -> None:
    """(stage, client, bytes) records: magic, then per message stage (1 B), client (4 B BE),
    length (4 B BE) and the bytes."""
    with open(path, "wb") as f:
        f.write(_MAGIC)
        for stage, client, data in messages:
            f.write(struct.pack(">BII", stage, client, len(data)))
            f.write(data)


def read_trajectory(run_dir: Path, dim: int) -> np.ndarray:
    """The global model (``dim`` float32 values) before round 1 and after every round run."""
    raw = np.fromfile(Path(run_dir) / AUDIT_DIR / TRAJECTORY, dtype="<f4")
    if raw.size % dim:
        raise FLError(f"{TRAJECTORY} holds {raw.size} values, not a whole number of rows of {dim}")
    return raw.reshape(-1, dim)


def read_messages(path: Path) -> list[tuple[int, int, bytes]]:
    raw = Path(path).read_bytes()
    if not raw.startswith(_MAGIC):
        raise FLError(f"{path}: not an audit message file (bad magic {raw[:8]!r})")
    out, pos = [], len(_MAGIC)
    while pos < len(raw):
        if pos + 9 > len(raw):
            raise FLError(f"{path}: truncated record header at byte {pos}")
        stage, client, n = struct.unpack_from(">BII", raw, pos)
        pos += 9
        if pos + n > len(raw):
            raise FLError(f"{path}: record of client {client} cut short at byte {pos}")
        out.append((stage, client, raw[pos:pos + n]))
        pos += n
    return out


# --------------------------------------------------------------------------- the run's side


class AuditRecorder:
    """Inserts the configured canaries into a run and keeps what the audit needs (``audit/``).

    The canary seed is derived from the run seed in witness mode (``secure_randomness = false``),
    else drawn from os.urandom and kept in ``audit/meta.json`` (the auditor's secret: the
    directions must not be known to whoever could bias the model towards them).
    """

    def __init__(self, cfg, out: Path, *, resume: bool = False) -> None:
        self.cfg = cfg
        self.audit = cfg.audit
        self.dir = Path(out) / AUDIT_DIR
        self.meta_path = self.dir / META
        meta = json.loads(self.meta_path.read_text()) if resume and self.meta_path.exists() else None
        if meta is not None:
            seed = bytes.fromhex(meta["canary_seed"])
        elif cfg.secure_randomness:
            seed = os.urandom(32)
        else:
            seed = hashlib.sha256(b"fl_core/audit-canaries|" + str(cfg.seed).encode()).digest()
        self.seed = seed
        self.client: ClientCanaries | None = None
        self.examples: ExampleCanaries | None = None
        self.dim: int | None = None
        self.recorded: list[int] = list(meta["recorded_rounds"]) if meta else []
        self.schedule: dict[str, list[int]] = dict(meta.get("canary_schedule", {})) if meta else {}

    @property
    def enabled(self) -> bool:
        a = self.audit
        return bool(a.record_rounds or a.canaries or a.canary_examples)

    def augment_data(self, data: FederatedDataset) -> FederatedDataset:
        if not self.audit.canary_examples:
            return data
        self.examples = ExampleCanaries(seed=self.seed, count=self.audit.canary_examples,
                                        num_clients=data.num_clients)
        return self.examples.augment(data)

    def setup_clients(self, *, dim: int, num_clients: int) -> None:
        """Create the client canaries (ids from ``num_clients`` on); call before sizing rounds."""
        a, cfg = self.audit, self.cfg
        if not a.canaries:
            return
        null = a.null_canaries if a.null_canaries is not None else DEFAULT_NULL_CANARIES
        if cfg.clients_per_round is not None:
            rate = cfg.clients_per_round / num_clients
            per_round = int(round(rate * a.canaries))
        else:
            rate, per_round = float(cfg.sampling_rate), None
        self.client = ClientCanaries(seed=self.seed, dim=dim, inserted=a.canaries, null=null,
                                     l2_clip=cfg.dp.l2_clip, first_id=num_clients, rate=rate, per_round=per_round)

    def expected_canaries(self) -> float:
        return self.client.expected_per_round if self.client else 0.0

    def max_canaries(self) -> int:
        return self.client.max_per_round if self.client else 0

    def canary_updates(self, r: int) -> dict[int, np.ndarray]:
        if self.client is None:
            return {}
        ups = self.client.updates(r)
        self.schedule[str(r)] = sorted(u - self.client.first_id for u in ups)
        return ups

    def transcript(self, r: int) -> Transcript:
        return Transcript.FULL if r < self.audit.record_rounds else Transcript.DIGEST

    def start(self, params: np.ndarray, start_round: int) -> None:
        """Row 0 of the trajectory is the initial model; on resume keep rows 0..start_round."""
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / TRAJECTORY
        self.dim = len(params)
        row_bytes = 4 * self.dim
        if start_round > 0 and path.exists() and path.stat().st_size >= (start_round + 1) * row_bytes:
            with open(path, "r+b") as f:  # drop the rows of rounds that will run again
                f.truncate((start_round + 1) * row_bytes)
            self.recorded = [r for r in self.recorded if r < start_round]
            self.schedule = {k: v for k, v in self.schedule.items() if int(k) < start_round}
        else:
            path.write_bytes(np.asarray(params, dtype="<f4").tobytes())
            for old in self.dir.glob("round_*"):
                old.unlink()
        self._write_meta()

    def end_round(self, r: int, params: np.ndarray, outcome) -> None:
        """After round r (0-based): the model it produced and, if recorded, what the server got."""
        if not self.enabled:
            return
        with open(self.dir / TRAJECTORY, "ab") as f:
            f.write(np.asarray(params, dtype="<f4").tobytes())
        if outcome is not None and outcome.messages is not None:
            write_messages(self.dir / f"round_{r + 1:04d}.msgs", outcome.messages)
            np.save(self.dir / f"round_{r + 1:04d}.aggregate.npy", outcome.aggregate)
            if r not in self.recorded:
                self.recorded.append(r)
        self._write_meta()

    def _write_meta(self) -> None:
        c, e = self.client, self.examples
        meta = {
            "version": 1,
            "canary_seed": self.seed.hex(),
            "dim": self.dim,
            "recorded_rounds": sorted(self.recorded),
            "client_canaries": None if c is None else {
                "inserted": c.inserted, "null": c.null, "dim": c.dim, "l2_clip": c.l2_clip,
                "first_id": c.first_id, "rate": c.rate, "per_round": c.per_round},
            "canary_schedule": self.schedule,
            "example_canaries": None if e is None else {"count": e.count, "num_clients": e.num_clients},
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, self.meta_path)
