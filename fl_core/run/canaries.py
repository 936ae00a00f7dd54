"""Canaries for empirical privacy estimation, the estimators, and what a run records for its audit.

Client level (Andrew, Kairouz, Oh, Oprea, McMahan, Suriyakumar, "One-shot Empirical Privacy
Estimation for Federated Learning", ICLR 2024, arXiv:2302.03098): canary clients whose update is
a random unit direction times the clip norm take part in rounds like real clients, through the
same clipping, noise shares and secure aggregation. Never-inserted canaries (directions drawn the
same way, never sent) give the null. The cosine of the final model delta with each direction is
the test statistic; Gaussians fitted to the two sets of cosines give an epsilon estimate.

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
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import optimize, special, stats
from torch.utils.data import TensorDataset

from secagg.simulate import Transcript

from fl_core.learn.data import ClientData, FederatedDataset, as_tensors
from fl_core.errors import FLError, bad_field

__all__ = [
    "ClientCanaries", "ExampleCanaries", "AuditRecorder", "AUDIT_DIR",
    "epsilon_two_gaussians", "epsilon_gdp", "GaussianFitEstimate", "gaussian_fit_estimate",
    "one_run_p_value", "one_run_epsilon_lower_bound", "OneRunAudit", "one_run_audit",
    "read_messages", "write_messages", "read_trajectory",
]

AUDIT_DIR = "audit"
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


# --------------------------------------------------------------------------- estimators


def _log_tail(x: float, mean: float, std: float, *, upper: bool) -> float:
    """log P[N(mean, std^2) > x] (upper) or < x."""
    z = (mean - x) / std if upper else (x - mean) / std
    return float(special.log_ndtr(z))


def _log_sub(a: float, b: float) -> float:
    """log(e^a - e^b), -inf when b >= a."""
    if b >= a:
        return -math.inf
    return a + math.log(-math.expm1(b - a))


def _log_hockey_stick(m1: float, s1: float, m0: float, s0: float, eps: float) -> float:
    """log of P[L > eps] - e^eps Q[L > eps], P = N(m1, s1^2), Q = N(m0, s0^2), L = log dP/dQ.

    This is the hockey-stick divergence H_{e^eps}(P || Q), i.e. the smallest delta for which the
    pair is (eps, delta)-indistinguishable in this direction. L(x) = a x^2 + b x + c is
    quadratic, so {L > eps} is a half-line or an interval (or its complement), whose Gaussian
    masses are exact (the computation of Andrew et al. App. C / Steinke, arXiv:2210.00597).
    """
    a = 0.5 * (1 / s0**2 - 1 / s1**2)
    b = m1 / s1**2 - m0 / s0**2
    c = 0.5 * (m0**2 / s0**2 - m1**2 / s1**2) + math.log(s0 / s1)
    if a == 0:
        if b == 0:
            return -math.inf  # identical distributions
        t = (eps - c) / b
        up = b > 0
        lp, lq = _log_tail(t, m1, s1, upper=up), _log_tail(t, m0, s0, upper=up)
    else:
        disc = b * b - 4 * a * (c - eps)
        if disc <= 0:  # L - eps never changes sign: the divergence is 1 - e^eps <= 0 or 0
            return -math.inf
        # Stable roots (no cancellation when a is tiny, i.e. nearly equal variances): q = -(b +
        # sign(b) sqrt(disc)) / 2, roots q / a and (c - eps) / q.
        q = -0.5 * (b + math.copysign(math.sqrt(disc), b))
        lo, hi = sorted((q / a, (c - eps) / q))
        if a > 0:  # L > eps outside [lo, hi]
            lp = np.logaddexp(_log_tail(lo, m1, s1, upper=False), _log_tail(hi, m1, s1, upper=True))
            lq = np.logaddexp(_log_tail(lo, m0, s0, upper=False), _log_tail(hi, m0, s0, upper=True))
        else:      # L > eps inside (lo, hi)
            lp = _log_sub(_log_tail(hi, m1, s1, upper=False), _log_tail(lo, m1, s1, upper=False))
            lq = _log_sub(_log_tail(hi, m0, s0, upper=False), _log_tail(lo, m0, s0, upper=False))
    return _log_sub(float(lp), eps + float(lq))


def epsilon_two_gaussians(*, mean_in: float, std_in: float, mean_out: float, std_out: float,
                          delta: float) -> float:
    """The smallest eps for which N(mean_in, std_in^2) and N(mean_out, std_out^2) are
    (eps, delta)-indistinguishable in both directions (inf if no finite eps below 1e4 works)."""
    for name, v in (("std_in", std_in), ("std_out", std_out)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise bad_field(name, v, "must be a finite number > 0")
    if not 0 < delta < 1:
        raise bad_field("delta", delta, "must be in (0, 1)")
    log_delta = math.log(delta)

    def excess(eps: float) -> float:
        return max(_log_hockey_stick(mean_in, std_in, mean_out, std_out, eps),
                   _log_hockey_stick(mean_out, std_out, mean_in, std_in, eps)) - log_delta

    if excess(0.0) <= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    while excess(hi) > 0:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            return math.inf
    return float(optimize.brentq(excess, lo, hi, xtol=1e-10, rtol=1e-12))


def epsilon_gdp(mu: float, delta: float) -> float:
    """eps at delta of mu-Gaussian DP: N(mu, 1) against N(0, 1) (Dong, Roth, Su 2019, Cor. 2.13)."""
    if mu <= 0:
        return 0.0
    return epsilon_two_gaussians(mean_in=float(mu), std_in=1.0, mean_out=0.0, std_out=1.0, delta=delta)


@dataclass(frozen=True)
class GaussianFitEstimate:
    """Gaussians fitted to the statistics of inserted and of never-inserted canaries.

    ``mu`` = (mean_in - mean_out) / pooled std: with equal variances (what the Gaussian mechanism
    gives in high dimension, Andrew et al. Thm. 3.1) the pair is mu-Gaussian DP and ``epsilon``
    its eps at delta. ``mu_low``/``mu_high`` is the two-sided ``confidence`` interval of mu from
    the noncentral t distribution of the two-sample t statistic (exact for Gaussian statistics),
    and ``epsilon_low``/``epsilon_high`` its image. ``epsilon_separate_variances``: the paper's
    estimator with each Gaussian's own variance; it is biased upwards with few canaries (any
    sampling difference between the two standard deviations reads as privacy loss).
    """

    n_in: int
    n_out: int
    mean_in: float
    std_in: float
    mean_out: float
    std_out: float
    mu: float
    mu_low: float
    mu_high: float
    epsilon: float
    epsilon_low: float
    epsilon_high: float
    epsilon_separate_variances: float
    delta: float
    confidence: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _mu_interval(t_obs: float, df: int, scale: float, confidence: float) -> tuple[float, float]:
    """Two-sided ``confidence`` interval for mu from the observed two-sample t statistic.

    t = mu_hat / scale follows the noncentral t distribution with df degrees of freedom and
    noncentrality mu / scale; each end solves P[T >= t_obs] = tail or P[T <= t_obs] = tail.
    Where scipy's noncentral t cannot be evaluated (huge noncentrality), the normal
    approximation T ~ N(nc, 1 + nc^2 / (2 df)) is used instead."""
    tail = (1 - confidence) / 2

    def end(upper: bool) -> float:
        def f(mu: float) -> float:
            nc = mu / scale
            return (stats.nct.cdf(t_obs, df, nc) if upper else stats.nct.sf(t_obs, df, nc)) - tail
        lo, hi = (t_obs - 40) * scale, (t_obs + 40) * scale
        try:
            fl, fh = f(lo), f(hi)
            if np.isfinite(fl) and np.isfinite(fh) and fl * fh < 0:
                return float(optimize.brentq(f, lo, hi, xtol=1e-10))
        except (ValueError, FloatingPointError):
            pass
        z = stats.norm.isf(tail) * math.sqrt(1 + t_obs**2 / (2 * df))
        return (t_obs + z) * scale if upper else (t_obs - z) * scale

    return end(upper=False), end(upper=True)


def gaussian_fit_estimate(inserted, null, *, delta: float, confidence: float = 0.95) -> GaussianFitEstimate:
    """Fit both canary sets (see ``GaussianFitEstimate``); each needs at least 2 statistics."""
    a, b = np.asarray(inserted, dtype=np.float64), np.asarray(null, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        raise bad_field("canaries", (a.size, b.size), "need at least 2 inserted and 2 null canary statistics")
    if not 0 < confidence < 1:
        raise bad_field("confidence", confidence, "must be in (0, 1)")
    k1, k0 = a.size, b.size
    m1, m0 = float(a.mean()), float(b.mean())
    s1, s0 = float(a.std(ddof=1)), float(b.std(ddof=1))
    pooled = math.sqrt(((k1 - 1) * s1**2 + (k0 - 1) * s0**2) / (k1 + k0 - 2))
    if not pooled > 0:
        raise FLError("canary statistics have zero spread: cannot fit Gaussians")
    mu = (m1 - m0) / pooled
    scale = math.sqrt(1 / k1 + 1 / k0)
    mu_lo, mu_hi = _mu_interval(mu / scale, k1 + k0 - 2, scale, confidence)
    lo_abs = 0.0 if mu_lo <= 0 <= mu_hi else min(abs(mu_lo), abs(mu_hi))
    hi_abs = max(abs(mu_lo), abs(mu_hi))
    sep = epsilon_two_gaussians(mean_in=m1, std_in=max(s1, 1e-300), mean_out=m0, std_out=max(s0, 1e-300),
                                delta=delta)
    return GaussianFitEstimate(
        n_in=k1, n_out=k0, mean_in=m1, std_in=s1, mean_out=m0, std_out=s0, mu=mu, mu_low=mu_lo, mu_high=mu_hi,
        epsilon=epsilon_gdp(abs(mu), delta), epsilon_low=epsilon_gdp(lo_abs, delta),
        epsilon_high=epsilon_gdp(hi_abs, delta),
        epsilon_separate_variances=sep, delta=delta, confidence=confidence)


def one_run_p_value(*, m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P-value of v or more correct guesses out of r, m canaries, if the run were (eps, delta)-DP.

    Steinke, Nasr, Jagielski 2023, Theorem 3: with f(w) = P[Binomial(r, e^eps/(1+e^eps)) >= w],
    P[W >= v] <= f(v) + 2 m delta max_{1 <= i <= v} (f(v - i) - f(v)) / i.
    """
    if not (0 <= v <= r <= m):
        raise bad_field("v", (m, r, v), "need 0 <= v <= r <= m (correct guesses, guesses, canaries)")
    q = float(special.expit(eps))
    f_v = float(stats.binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(1.0, f_v)
    i = np.arange(1, v + 1)
    gaps = (stats.binom.sf(v - i - 1, r, q) - f_v) / i
    return min(1.0, f_v + 2 * m * delta * float(np.max(gaps)))


def one_run_epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, significance: float) -> float:
    """The largest eps whose (eps, delta) claim the guesses reject at level ``significance``
    (0 when even eps = 0 is not rejected). Rejecting eps rejects every smaller eps too, since
    (eps', delta)-DP with eps' < eps implies (eps, delta)-DP; the p-value grows with eps."""
    p = lambda e: one_run_p_value(m=m, r=r, v=v, eps=e, delta=delta)  # noqa: E731
    if r == 0 or p(0.0) > significance:
        return 0.0
    hi = 1.0
    while p(hi) <= significance:
        hi *= 2
        if hi > 1e3:
            return math.inf
    return float(optimize.brentq(lambda e: p(e) - significance, 0.0, hi, xtol=1e-9))


@dataclass(frozen=True)
class OneRunAudit:
    """The best of a few fixed guess sizes; each is tested at significance / (number of sizes)
    (Bonferroni), so ``epsilon_lower_bound`` holds with probability >= ``confidence``."""

    m: int
    included: int
    guesses: int
    correct: int
    epsilon_lower_bound: float
    delta: float
    confidence: float
    per_guess_size: list

    def as_dict(self) -> dict:
        return dict(self.__dict__)


GUESS_FRACTIONS = (0.05, 0.1, 0.25, 0.5)  # k+ = k- = fraction * m


def one_run_audit(scores, included, *, delta: float, confidence: float = 0.95,
                  guess_fractions=GUESS_FRACTIONS) -> OneRunAudit:
    """Guess "in" for the k highest scores and "out" for the k lowest, for k = f * m."""
    s, inc = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    m = s.size
    if m < 2 or inc.shape != s.shape:
        raise bad_field("scores", m, "need at least 2 canaries and one inclusion flag per score")
    order = np.argsort(s, kind="stable")
    sig = (1 - confidence) / len(guess_fractions)
    rows = []
    for f in guess_fractions:
        k = min(max(1, int(f * m)), m // 2)
        correct = int(inc[order[m - k:]].sum() + (~inc[order[:k]]).sum())
        eps = one_run_epsilon_lower_bound(m=m, r=2 * k, v=correct, delta=delta, significance=sig)
        rows.append({"k_in": k, "k_out": k, "correct": correct, "epsilon_lower_bound": eps})
    best = max(rows, key=lambda row: row["epsilon_lower_bound"])
    return OneRunAudit(m=m, included=int(inc.sum()), guesses=2 * best["k_in"], correct=best["correct"],
                       epsilon_lower_bound=best["epsilon_lower_bound"], delta=delta, confidence=confidence,
                       per_guess_size=rows)


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
