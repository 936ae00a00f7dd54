"""The configuration of one run: a tree of frozen dataclasses, read from TOML and checked up front.

``load_config(path)`` reads TOML, converts every field to its type and checks every value and
every cross-field rule before anything runs. All problems are collected and raised together as one
``ConfigFieldError`` naming each bad field by dotted path (``local.lr``), its value and the reason;
unknown keys are errors too. Constructing a ``RunConfig`` in code runs the same checks.
``dump_config(cfg)`` writes TOML that ``load_config`` reads back to an equal config.

Defaults are the default example: digits over 20 IID clients, 10 sampled per round, an MLP,
client-level distributed DP at a target of epsilon = 8 with secure aggregation.

A one-of pair (``local.epochs``/``local.steps``, ``clients_per_round``/``sampling_rate``,
``dp.target_epsilon``/``dp.noise_multiplier``): the first has a default; giving only the second in
the file switches the first off. Giving both is an error.

Minimal file::

    rounds = 30
    [data]
    dataset = "digits"
    num_clients = 20
    [dp]
    mode = "client"
    target_epsilon = 3.0
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

from dp.accounting import AccountantKind

from fl_core.learn.client import OptimizerName
from fl_core.learn.cohort import Backend
from fl_core.learn.data import DATASET_FEATURES, DatasetName, FederatedDataset, Partition, load_federated
from fl_core.errors import ConfigFieldError
from fl_core.learn.models import ModelName, build_model
from fl_core.learn.params import matches_prefix
from fl_core.learn.strategy import ServerOptName, make_server_optimizer

__all__ = [
    "DPMode", "GradSampleMode", "AccountantKind", "GraphKind", "InitMode", "Backend",
    "DataConfig", "ModelConfig", "LocalConfig", "ServerConfig", "DPConfig", "DropoutConfig",
    "SecAggConfig", "InitConfig", "PersonalizeConfig", "AuditConfig", "RunConfig",
    "load_config", "config_from_dict", "dump_config", "config_problems",
]


class DPMode(enum.Enum):
    NONE = "none"
    CLIENT = "client"   # client-level: clip each update, distributed discrete noise inside secagg
    SAMPLE = "sample"   # example-level: DP-SGD on each client (Opacus)


class GradSampleMode(enum.Enum):  # same values as dp.opacus_adapter.GradSampleMode (which imports Opacus)
    HOOKS = "hooks"
    FUNCTORCH = "functorch"
    EW = "ew"
    GHOST = "ghost"


class GraphKind(enum.Enum):  # same values as secagg.config.GraphKind
    COMPLETE = "complete"    # classic SecAgg (Bonawitz et al. 2017)
    SPARSE = "sparse"        # SecAgg+ (Bell et al. 2020), k-regular neighbour graph


class InitMode(enum.Enum):
    RANDOM = "random"
    PRETRAINED = "pretrained"


@dataclass(frozen=True)
class DataConfig:
    """Which built-in dataset and how it is spread over clients (see ``fl_core.learn.data``)."""

    dataset: DatasetName = DatasetName.DIGITS
    num_clients: int = 20
    partition: Partition = Partition.IID        # synthetic needs "natural"
    alpha: float = 0.5                          # Dirichlet concentration (partition = "dirichlet")
    shards_per_client: int = 2                  # partition = "shards"
    test_fraction: float = 0.2                  # central test set (digits)
    client_test_fraction: float = 0.2           # each client's own test split
    public_fraction: float = 0.0                # server-side public data (pretraining)
    num_samples: int = 5000                     # mnist1d generator size
    synthetic_alpha: float = 1.0
    synthetic_beta: float = 1.0
    loader: str | None = None                   # "module:function" returning a FederatedDataset

    def load(self, *, rng: np.random.Generator) -> FederatedDataset:
        """The federated dataset these fields describe (``fl_core.learn.data.load_federated``)."""
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("dataset", "loader")}
        return load_federated(self.dataset, rng=rng, **kw)


@dataclass(frozen=True)
class ModelConfig:
    name: ModelName = ModelName.MLP
    hidden: int = 64
    factory: str | None = None  # "module:function" (or class) building the nn.Module with no arguments

    def build(self, *, in_features: int, num_classes: int = 10, seed: int | None = None) -> nn.Module:
        """``fl_core.learn.models.build_model`` with these fields."""
        return build_model(self.name, in_features=in_features, num_classes=num_classes, hidden=self.hidden, seed=seed)


@dataclass(frozen=True)
class LocalConfig:
    """Local training per client and round (``fl_core.learn.client.local_train``). ``backend``: "opacus",
    the reference, trains the sampled clients one after the other (Opacus for DP-SGD); "cohort"
    trains them all at once with the same semantics (``fl_core.learn.cohort``, docs/cohort.md)."""

    ONE_OF: ClassVar[tuple[tuple[str, str], ...]] = (("epochs", "steps"),)
    epochs: int | None = 2
    steps: int | None = None
    lr: float = 0.1
    optimizer: OptimizerName = OptimizerName.SGD
    momentum: float = 0.9
    batch_size: int = 16
    prox_mu: float = 0.0
    backend: Backend = Backend.OPACUS


@dataclass(frozen=True)
class ServerConfig:
    """Server optimizer (``fl_core.learn.strategy``); fields the chosen optimizer does not use are ignored."""

    optimizer: ServerOptName = ServerOptName.FEDAVG
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def hparams(self) -> dict[str, float]:
        """The hyperparameters the chosen optimizer takes: ``make_server_optimizer(opt, **hparams())``."""
        cls = type(make_server_optimizer(self.optimizer))
        return {k: getattr(self, k) for k in cls.HPARAMS}


@dataclass(frozen=True)
class AdaptiveClipSection:
    """``[dp.adaptive_clip]``: Andrew et al. (NeurIPS 2021) quantile clipping, client mode only.
    The clip starts at ``dp.l2_clip`` and moves geometrically (step ``learning_rate``) toward the
    ``target_quantile`` of the update norms; each client's clipped-or-not bit rides in the secure
    sum, with noise std ``bit_noise`` clients on the count (default: expected clients / 20)."""

    enabled: bool = False
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    bit_noise: float | None = None


@dataclass(frozen=True)
class DPConfig:
    """Differential privacy. ``target_epsilon``: calibrate the noise so the planned rounds spend
    it; or give ``noise_multiplier`` directly. ``epsilon_budget``: stop before a round would
    exceed it (default: the target). ``l2_clip`` is the update clip (client mode) or per-example
    gradient clip (sample mode). ``bits``: field bits for the distributed noise (default:
    ``secagg.bits``). Other fields are ignored when ``mode = "none"``.
    """

    ONE_OF: ClassVar[tuple[tuple[str, str], ...]] = (("target_epsilon", "noise_multiplier"),)
    mode: DPMode = DPMode.CLIENT
    target_epsilon: float | None = 8.0
    noise_multiplier: float | None = None
    epsilon_budget: float | None = None
    delta: float = 1e-5
    l2_clip: float = 1.0
    bits: int | None = None
    accountant: AccountantKind = AccountantKind.RDP
    grad_sample_mode: GradSampleMode = GradSampleMode.HOOKS
    # client mode: reveal and subtract the survivors' excess noise shares (Dordis, EuroSys 2024)
    excess_noise: bool = True
    adaptive_clip: AdaptiveClipSection = field(default_factory=AdaptiveClipSection)


@dataclass(frozen=True)
class DropoutConfig:
    """Probability that a client drops at each secagg stage (simulated), each in [0, 1)."""

    keys: float = 0.0
    shares: float = 0.0
    masked_input: float = 0.0
    consistency: float = 0.0
    unmask: float = 0.0


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation. ``k``: neighbour degree for the sparse graph (even; default chosen
    by the round, O(log n)). ``threshold``: Shamir threshold as a fraction of the neighbourhood,
    t = ceil(threshold * k) (default chosen by the round). ``min_survivors``: fraction of the
    sampled clients below which the round aborts. ``bits``: modulus 2^bits.
    """

    enabled: bool = True
    graph: GraphKind = GraphKind.COMPLETE
    corrupt: float = 0.05       # tolerated corrupt fraction for the automatic (k, t) rule
    update_clip: float = 10.0   # L2 clip before fixed-point encoding (no client-level DP)
    k: int | None = None
    threshold: float | None = None
    bits: int = 32
    min_survivors: float = 0.5
    dropout: DropoutConfig = field(default_factory=DropoutConfig)


@dataclass(frozen=True)
class InitConfig:
    """Global model initialization: seeded random, or a ``state_dict`` file (``checkpoint``; a
    relative path is taken from the config file's folder)."""

    mode: InitMode = InitMode.RANDOM
    checkpoint: str | None = None


@dataclass(frozen=True)
class PersonalizeConfig:
    """Per-client fine-tuning: ``steps`` local steps (0 = off) after training and every ``every``
    rounds (0 = only at the end); ``personal_layers`` (name prefixes, e.g. ["head"]) never leave
    the clients (FedPer); ``lr`` defaults to ``local.lr``."""

    steps: int = 0
    every: int = 0
    personal_layers: tuple[str, ...] = ()
    lr: float | None = None


@dataclass(frozen=True)
class AuditConfig:
    """What the run keeps for ``python -m fl_core audit`` (docs/audit.md). ``record_rounds``: keep
    the bytes of every message the server received in the first N rounds, for the server-view
    check (0 = none). ``canaries``: client-level canary clients inserted into rounds (needs
    ``dp.mode = "client"``); ``null_canaries``: never-inserted ones for the null (default 1000:
    they are never sent, so they cost only the audit's time). ``canary_examples``: sample-level canary examples, each included with
    probability 1/2 (needs ``dp.mode = "sample"``)."""

    record_rounds: int = 1
    canaries: int = 0
    null_canaries: int | None = None
    canary_examples: int = 0


@dataclass(frozen=True)
class RunConfig:
    """One federated run. Constructing it checks every field; ``ConfigFieldError`` names them all."""

    ONE_OF: ClassVar[tuple[tuple[str, str], ...]] = (("clients_per_round", "sampling_rate"),)
    rounds: int = 30
    clients_per_round: int | None = 10
    secure_randomness: bool = True   # DP noise and protocol secrets from os.urandom; False: from seed
    sampling_rate: float | None = None
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    init: InitConfig = field(default_factory=InitConfig)
    personalize: PersonalizeConfig = field(default_factory=PersonalizeConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)

    def __post_init__(self) -> None:
        problems = config_problems(self)
        if problems:
            raise ConfigFieldError(problems)

    def expected_clients_per_round(self) -> float:
        """clients_per_round, or sampling_rate * num_clients under Poisson sampling."""
        if self.clients_per_round is not None:
            return float(self.clients_per_round)
        return (self.sampling_rate or 0.0) * self.data.num_clients


# --------------------------------------------------------------------------- value checks


class _Problems(list):
    def add(self, path: str, value: Any, reason: str) -> None:
        shown = value.value if isinstance(value, enum.Enum) else value
        self.append((path, f"got {shown!r}; {reason}"))

    def int_at_least(self, path: str, v: Any, lo: int) -> None:
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            self.add(path, v, f"must be an int >= {lo}")

    def number_in(self, path: str, v: Any, lo: float, hi: float, *, lo_open: bool = False,
                  hi_open: bool = False) -> bool:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not ok:
            self.add(path, v, f"must be a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")
        return ok

    def enum(self, path: str, v: Any, cls: type[enum.Enum]) -> None:
        if not isinstance(v, cls):
            self.add(path, v, f"must be one of {[m.value for m in cls]}")


def _section_problems(cfg: RunConfig) -> _Problems:
    p = _Problems()
    d, m, lc, s, dp, sa, ini, pz = (cfg.data, cfg.model, cfg.local, cfg.server, cfg.dp, cfg.secagg, cfg.init,
                                     cfg.personalize)
    inf = math.inf
    p.int_at_least("rounds", cfg.rounds, 1)
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**63:
        p.add("seed", cfg.seed, "must be an int in [0, 2^63)")
    # data
    p.enum("data.dataset", d.dataset, DatasetName)
    p.int_at_least("data.num_clients", d.num_clients, 1)
    p.enum("data.partition", d.partition, Partition)
    p.number_in("data.alpha", d.alpha, 0, inf, lo_open=True, hi_open=True)
    p.int_at_least("data.shards_per_client", d.shards_per_client, 1)
    p.number_in("data.test_fraction", d.test_fraction, 0, 1, lo_open=True, hi_open=True)
    p.number_in("data.client_test_fraction", d.client_test_fraction, 0, 1, hi_open=True)
    p.number_in("data.public_fraction", d.public_fraction, 0, 1, hi_open=True)
    p.int_at_least("data.num_samples", d.num_samples, 50)
    p.number_in("data.synthetic_alpha", d.synthetic_alpha, 0, inf, hi_open=True)
    p.number_in("data.synthetic_beta", d.synthetic_beta, 0, inf, hi_open=True)
    for path, v in (("data.loader", d.loader), ("model.factory", m.factory)):
        if v is not None and (not isinstance(v, str) or v.count(":") != 1 or not all(v.split(":"))):
            p.add(path, v, 'must be "module:function"')
    # model
    p.enum("model.name", m.name, ModelName)
    p.int_at_least("model.hidden", m.hidden, 1)
    # local
    for name in ("epochs", "steps"):
        v = getattr(lc, name)
        if v is not None:
            p.int_at_least(f"local.{name}", v, 1)
    p.number_in("local.lr", lc.lr, 0, inf, lo_open=True, hi_open=True)
    p.enum("local.optimizer", lc.optimizer, OptimizerName)
    p.number_in("local.momentum", lc.momentum, 0, 1, hi_open=True)
    p.int_at_least("local.batch_size", lc.batch_size, 1)
    p.number_in("local.prox_mu", lc.prox_mu, 0, inf, hi_open=True)
    p.enum("local.backend", lc.backend, Backend)
    # server
    p.enum("server.optimizer", s.optimizer, ServerOptName)
    p.number_in("server.lr", s.lr, 0, inf, lo_open=True, hi_open=True)
    p.number_in("server.momentum", s.momentum, 0, 1, hi_open=True)
    p.number_in("server.beta1", s.beta1, 0, 1, hi_open=True)
    p.number_in("server.beta2", s.beta2, 0, 1, hi_open=True)
    p.number_in("server.tau", s.tau, 0, inf, lo_open=True, hi_open=True)
    # dp
    p.enum("dp.mode", dp.mode, DPMode)
    for name in ("target_epsilon", "epsilon_budget", "noise_multiplier"):
        v = getattr(dp, name)
        if v is not None:
            p.number_in(f"dp.{name}", v, 0, inf, lo_open=True, hi_open=True)
    p.number_in("dp.delta", dp.delta, 0, 1, lo_open=True, hi_open=True)
    p.number_in("dp.l2_clip", dp.l2_clip, 0, inf, lo_open=True, hi_open=True)
    if dp.bits is not None:
        p.int_at_least("dp.bits", dp.bits, 1)
    p.enum("dp.accountant", dp.accountant, AccountantKind)
    p.enum("dp.grad_sample_mode", dp.grad_sample_mode, GradSampleMode)
    # secagg
    if not isinstance(sa.enabled, bool):
        p.add("secagg.enabled", sa.enabled, "must be true or false")
    p.enum("secagg.graph", sa.graph, GraphKind)
    if sa.k is not None:
        p.int_at_least("secagg.k", sa.k, 2)
    if sa.threshold is not None:
        p.number_in("secagg.threshold", sa.threshold, 0, 1, lo_open=True)
    if isinstance(sa.bits, bool) or not isinstance(sa.bits, int) or not 1 <= sa.bits <= 62:
        p.add("secagg.bits", sa.bits, "must be an int in [1, 62]")
    p.number_in("secagg.min_survivors", sa.min_survivors, 0, 1, lo_open=True)
    p.number_in("secagg.corrupt", sa.corrupt, 0, 1, hi_open=True)
    p.number_in("secagg.update_clip", sa.update_clip, 0, inf, lo_open=True, hi_open=True)
    if not isinstance(cfg.secure_randomness, bool):
        p.add("secure_randomness", cfg.secure_randomness, "must be true or false")
    for f in dataclasses.fields(DropoutConfig):
        p.number_in(f"secagg.dropout.{f.name}", getattr(sa.dropout, f.name), 0, 1, hi_open=True)
    # init
    p.enum("init.mode", ini.mode, InitMode)
    if ini.checkpoint is not None and (not isinstance(ini.checkpoint, str) or not ini.checkpoint):
        p.add("init.checkpoint", ini.checkpoint, "must be a non-empty path")
    # personalize
    p.int_at_least("personalize.steps", pz.steps, 0)
    p.int_at_least("personalize.every", pz.every, 0)
    if not isinstance(pz.personal_layers, tuple) or not all(isinstance(x, str) and x for x in pz.personal_layers):
        p.add("personalize.personal_layers", pz.personal_layers, "must be a list of non-empty name prefixes")
    if pz.lr is not None:
        p.number_in("personalize.lr", pz.lr, 0, inf, lo_open=True, hi_open=True)
    # audit
    for name in ("record_rounds", "canaries", "canary_examples"):
        p.int_at_least(f"audit.{name}", getattr(cfg.audit, name), 0)
    if cfg.audit.null_canaries is not None:
        p.int_at_least("audit.null_canaries", cfg.audit.null_canaries, 2)
    return p


def _cross_problems(cfg: RunConfig, p: _Problems) -> None:
    """Rules between fields; each is reported on the field a user would most likely change."""
    d, lc, dp, sa, pz = cfg.data, cfg.local, cfg.dp, cfg.secagg, cfg.personalize
    bad = {path for path, _ in p}

    def ok(*paths: str) -> bool:  # only check rules whose fields passed their own checks
        return not any(x in bad for x in paths)

    for obj, prefix in ((lc, "local."), (dp, "dp."), (cfg, "")):
        for a, b in obj.ONE_OF:
            va, vb = getattr(obj, a), getattr(obj, b)
            if va is not None and vb is not None:
                p.add(prefix + b, vb, f"give {prefix}{a} or {prefix}{b}, not both ({prefix}{a} = {va!r})")
            elif va is None and vb is None and not (obj is dp and dp.mode is DPMode.NONE):
                p.add(prefix + a, None, f"give one of {prefix}{a} or {prefix}{b}")
    n = d.num_clients
    if cfg.clients_per_round is not None and ok("data.num_clients"):
        lo = 2 if sa.enabled is True else 1
        if isinstance(cfg.clients_per_round, bool) or not isinstance(cfg.clients_per_round, int) \
                or not lo <= cfg.clients_per_round <= n:
            p.add("clients_per_round", cfg.clients_per_round,
                  f"must be an int in [{lo}, data.num_clients = {n}]" + (" (secure aggregation needs 2)" if lo == 2 else ""))
    if cfg.sampling_rate is not None:
        p.number_in("sampling_rate", cfg.sampling_rate, 0, 1, lo_open=True)
    if ok("data.dataset", "data.partition"):
        synthetic = d.dataset is DatasetName.SYNTHETIC
        if synthetic and d.partition is not Partition.NATURAL:
            p.add("data.partition", d.partition, "synthetic data is federated by construction: use 'natural'")
        if not synthetic and d.partition is Partition.NATURAL:
            p.add("data.partition", d.partition, f"{d.dataset.value} is pooled data: use iid, dirichlet or shards")
        if synthetic and d.public_fraction:
            p.add("data.public_fraction", d.public_fraction, "synthetic data has no public part; use 0")
    if ok("data.test_fraction", "data.public_fraction") and d.dataset is DatasetName.DIGITS \
            and d.test_fraction + d.public_fraction >= 1:
        p.add("data.public_fraction", d.public_fraction,
              f"with data.test_fraction = {d.test_fraction} nothing is left for the clients")
    if ok("model.name", "data.dataset"):
        allowed = {DatasetName.DIGITS: {ModelName.MLP}, DatasetName.SYNTHETIC: {ModelName.MLP},
                   DatasetName.MNIST1D: {ModelName.MLP, ModelName.CONV1D}}[d.dataset]
        if cfg.model.name not in allowed:
            p.add("model.name", cfg.model.name,
                  f"{d.dataset.value} needs one of {sorted(x.value for x in allowed)}")
    if ok("local.optimizer", "local.momentum") and lc.optimizer is OptimizerName.ADAM and lc.momentum:
        p.add("local.momentum", lc.momentum, "Adam has no momentum option: use 0 (the default with SGD is 0.9)")
    # dp
    ac = dp.adaptive_clip
    if ac.enabled is True and dp.mode is not DPMode.CLIENT:
        p.add("dp.adaptive_clip.enabled", ac.enabled, "adaptive clipping runs inside client-level DP "
              "(dp.mode = 'client')")
    if ac.enabled is True:
        p.number_in("dp.adaptive_clip.target_quantile", ac.target_quantile, 0, 1, lo_open=True, hi_open=True)
        p.number_in("dp.adaptive_clip.learning_rate", ac.learning_rate, 0, 10, lo_open=True)
        if ac.bit_noise is not None:
            p.number_in("dp.adaptive_clip.bit_noise", ac.bit_noise, 0, 1e9, lo_open=True)
    if dp.mode is not DPMode.NONE:
        if ok("dp.target_epsilon", "dp.epsilon_budget") and dp.target_epsilon is not None \
                and dp.epsilon_budget is not None and dp.target_epsilon > dp.epsilon_budget:
            p.add("dp.target_epsilon", dp.target_epsilon, f"exceeds dp.epsilon_budget = {dp.epsilon_budget}")
        if dp.mode is DPMode.CLIENT:
            if sa.enabled is False:
                p.add("dp.mode", dp.mode, "client-level DP adds its noise in shares inside secure aggregation: "
                      "set secagg.enabled = true")
            if ok("dp.delta", "data.num_clients") and dp.delta >= 1 / n:
                p.add("dp.delta", dp.delta, f"must be < 1/num_clients = {1 / n:.3g} for client-level DP")
        if dp.mode is DPMode.SAMPLE and ok("local.prox_mu") and lc.prox_mu:
            p.add("local.prox_mu", lc.prox_mu, "FedProx is not supported with DP-SGD (dp.mode = 'sample'): use 0")
        if dp.bits is not None and ok("dp.bits", "secagg.bits") and dp.bits > sa.bits:
            p.add("dp.bits", dp.bits, f"exceeds secagg.bits = {sa.bits}")
    # secagg
    if sa.graph is GraphKind.COMPLETE and sa.k is not None and ok("secagg.graph"):
        p.add("secagg.k", sa.k, "applies only to graph = 'sparse' (the complete graph has degree n - 1)")
    if sa.graph is GraphKind.SPARSE and sa.k is not None and ok("secagg.k") and sa.k % 2:
        p.add("secagg.k", sa.k, "the SecAgg+ Harary graph needs an even degree")
    if sa.enabled is True and cfg.clients_per_round is not None and ok("secagg.min_survivors", "clients_per_round") \
            and math.ceil(sa.min_survivors * cfg.clients_per_round) < 2:
        p.add("secagg.min_survivors", sa.min_survivors,
              f"with clients_per_round = {cfg.clients_per_round} this allows a sum of one client's input")
    # init
    if cfg.init.mode is InitMode.PRETRAINED and cfg.init.checkpoint is None:
        p.add("init.checkpoint", None, "init.mode = 'pretrained' needs a state_dict file path")
    if cfg.init.mode is InitMode.RANDOM and cfg.init.checkpoint is not None:
        p.add("init.checkpoint", cfg.init.checkpoint, "is set but init.mode = 'random'; remove it or use 'pretrained'")
    # personalize
    if ok("personalize.every", "personalize.steps") and pz.every > 0 and pz.steps == 0:
        p.add("personalize.every", pz.every, "needs personalize.steps > 0")
    if ok("personalize.every", "rounds") and pz.every > cfg.rounds:
        p.add("personalize.every", pz.every, f"exceeds rounds = {cfg.rounds}")
    if pz.personal_layers and ok("personalize.personal_layers", "model.name", "model.hidden", "data.dataset"):
        model = build_model(cfg.model.name, in_features=DATASET_FEATURES[d.dataset], hidden=cfg.model.hidden, seed=0)
        names = [n for n, _ in model.named_parameters()]
        unused = [x for x in pz.personal_layers if not any(matches_prefix(n, (x,)) for n in names)]
        if unused:
            p.add("personalize.personal_layers", list(pz.personal_layers),
                  f"prefixes {unused} match no layer of {cfg.model.name.value} (layers: {names})")
        elif all(matches_prefix(n, pz.personal_layers) for n in names):
            p.add("personalize.personal_layers", list(pz.personal_layers), "leaves no shared layer to train")
    # audit: canaries go through the mechanism whose claim they test
    au = cfg.audit
    if ok("audit.canaries", "dp.mode") and au.canaries and dp.mode is not DPMode.CLIENT:
        p.add("audit.canaries", au.canaries, "canary clients audit client-level DP: needs dp.mode = 'client'")
    if ok("audit.canaries") and au.canaries == 1:
        p.add("audit.canaries", au.canaries, "use 0 or at least 2 (a Gaussian is fitted to their statistics)")
    if ok("audit.canary_examples", "dp.mode") and au.canary_examples and dp.mode is not DPMode.SAMPLE:
        p.add("audit.canary_examples", au.canary_examples,
              "canary examples audit sample-level DP: needs dp.mode = 'sample'")
    if ok("audit.null_canaries") and au.null_canaries is not None and not au.canaries:
        p.add("audit.null_canaries", au.null_canaries, "needs audit.canaries > 0")


def config_problems(cfg: RunConfig) -> list[tuple[str, str]]:
    """Every problem of ``cfg`` as ``(dotted path, reason)``; empty when valid."""
    p = _section_problems(cfg)
    _cross_problems(cfg, p)
    return list(p)


# --------------------------------------------------------------------------- TOML in


def _convert(value: Any, tp: Any, path: str, problems: _Problems) -> Any:
    """Convert one TOML value to the annotated type; on failure record a problem and return a
    sentinel so the default is used (which lets the other fields still be checked)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _convert(value, args[0], path, problems)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            problems.add(path, value, "must be a table")
            return _MISSING
        return _build(tp, value, path + ".", problems)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.add(path, value, "must be a list of strings")
            return _MISSING
        return tuple(value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            problems.add(path, value, f"must be one of {[m.value for m in tp]}")
            return _MISSING
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.add(path, value, "must be true or false")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.add(path, value, "must be an integer")
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        problems.add(path, value, "must be a number")
    elif tp is str:
        if isinstance(value, str):
            return value
        problems.add(path, value, "must be a string")
    else:  # pragma: no cover - a field type this loader does not know is a bug here
        raise TypeError(f"{path}: unsupported field type {tp!r}")
    return _MISSING


_MISSING = object()


def _build(cls: type, table: Mapping[str, Any], prefix: str, problems: _Problems) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in table:
        if key not in names:
            problems.append((prefix + key, f"unknown key (valid keys here: {names})"))
    kwargs: dict[str, Any] = {}
    for a, b in getattr(cls, "ONE_OF", ()):
        if b in table and a not in table:
            kwargs[a] = None
    for name in names:
        if name in table:
            v = _convert(table[name], hints[name], prefix + name, problems)
            if v is not _MISSING:
                kwargs[name] = v
    if cls is RunConfig:
        return kwargs  # the caller builds it, so that its checks run once with all problems known
    return cls(**kwargs)


def config_from_dict(table: Mapping[str, Any], *, base_dir: str | os.PathLike | None = None,
                     check_files: bool = True) -> RunConfig:
    """Build and check a ``RunConfig`` from parsed TOML. ``init.checkpoint`` is resolved against
    ``base_dir`` and, with ``check_files``, must exist. Raises one ``ConfigFieldError`` naming
    every bad field."""
    problems = _Problems()
    if not isinstance(table, Mapping):
        raise ConfigFieldError([("(config)", f"got {type(table).__name__}; must be a table")])
    kwargs = _build(RunConfig, table, "", problems)
    init = kwargs.get("init")
    if init is not None and init.checkpoint is not None:
        path = Path(init.checkpoint).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        kwargs["init"] = init = InitConfig(mode=init.mode, checkpoint=str(path.resolve()))
        if check_files and not path.is_file():
            problems.add("init.checkpoint", str(path), "file does not exist")
    try:
        cfg = RunConfig(**kwargs)
    except ConfigFieldError as e:
        seen = {path for path, _ in problems}
        problems.extend((path, why) for path, why in e.problems if path not in seen)
        raise ConfigFieldError(problems) from None
    if problems:
        raise ConfigFieldError(problems)
    return cfg


DEFAULT_EXAMPLE = Path(__file__).parent / "default_example.toml"


def default_config() -> RunConfig:
    """The default example: what ``python -m fl_core run`` and ``make demo`` train."""
    return load_config(DEFAULT_EXAMPLE)


def load_config(path: str | os.PathLike, *, check_files: bool = True) -> RunConfig:
    """Read a TOML run config; every bad field is named in one ``ConfigFieldError``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigFieldError([(str(path), f"cannot read the config file: {e.strerror or e}")]) from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigFieldError([(str(path), f"TOML syntax error: {e}")]) from None
    return config_from_dict(table, base_dir=path.parent, check_files=check_files)


# --------------------------------------------------------------------------- TOML out


def _toml_value(v: Any) -> str:
    if isinstance(v, enum.Enum):
        v = v.value
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)  # shortest repr round-trips; "1e-05" and "0.5" are valid TOML floats
    if isinstance(v, str):
        # JSON's escapes are TOML basic-string escapes; TOML also wants DEL escaped.
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007F")
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _dump_table(obj: Any, name: str, out: list[str]) -> None:
    scalars, tables = [], []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            tables.append((f.name, v))
        elif v is not None:
            scalars.append(f"{f.name} = {_toml_value(v)}")
    if name:
        out.append(f"\n[{name}]")
    out.extend(scalars)
    for sub, v in tables:
        _dump_table(v, f"{name}.{sub}" if name else sub, out)


def dump_config(cfg: RunConfig) -> str:
    """The config as TOML (None fields are left out; ``load_config`` reads it back equal)."""
    out: list[str] = ["# fl_core run configuration"]
    _dump_table(cfg, "", out)
    return "\n".join(out) + "\n"
