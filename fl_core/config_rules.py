"""The rules between fields of a run config, each reported on the field a user would most likely
change (``fl_core.config`` declares the fields themselves). ``bad`` names the fields that failed
their own checks: a rule that involves one of them is skipped, so that one mistake is reported once."""

from __future__ import annotations

import enum
import math
from typing import Any

from secagg.config import GraphKind

from fl_core.learn.names import MODEL_PARAMETERS, DatasetName, ModelName, OptimizerName, Partition

__all__ = ["DPMode", "InitMode", "cross_problems"]


class DPMode(enum.Enum):
    NONE = "none"
    CLIENT = "client"   # client-level: clip each update, distributed discrete noise inside secagg
    SAMPLE = "sample"   # example-level: DP-SGD on each client (Opacus)


class InitMode(enum.Enum):
    RANDOM = "random"
    PRETRAINED = "pretrained"


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


class _Problems(list):
    def __init__(self, bad):
        super().__init__()
        self.bad = set(bad)

    def add(self, path: str, value: Any, reason: str) -> None:
        shown = value.value if isinstance(value, enum.Enum) else value
        self.append((path, f"got {shown!r}; {reason}"))

    def ok(self, *paths: str) -> bool:
        """Only rules whose fields passed their own checks are checked."""
        return not any(x in self.bad for x in paths)


def cross_problems(cfg, bad=frozenset()) -> list[tuple[str, str]]:
    """Every cross-field problem of ``cfg`` as ``(dotted path, "got VALUE; reason")``."""
    p = _Problems(bad)
    _one_of(cfg, p)
    _cohort_and_data(cfg, p)
    _privacy(cfg, p)
    _secagg(cfg, p)
    _init_and_personalize(cfg, p)
    _audit(cfg, p)
    return list(p)


def _one_of(cfg, p: _Problems) -> None:
    for obj, prefix in ((cfg.local, "local."), (cfg.dp, "dp."), (cfg, "")):
        for a, b in obj.ONE_OF:
            if not p.ok(prefix + a, prefix + b):
                continue
            va, vb = getattr(obj, a), getattr(obj, b)
            if va is not None and vb is not None:
                p.add(prefix + b, vb, f"give {prefix}{a} or {prefix}{b}, not both ({prefix}{a} = {va!r})")
            elif va is None and vb is None and not (obj is cfg.dp and cfg.dp.mode is DPMode.NONE):
                p.add(prefix + a, None, f"give one of {prefix}{a} or {prefix}{b}")


def _cohort_and_data(cfg, p: _Problems) -> None:
    d, sa, n = cfg.data, cfg.secagg, cfg.data.num_clients
    if cfg.clients_per_round is not None and p.ok("data.num_clients", "clients_per_round"):
        lo = 3 if sa.enabled else 1  # secagg: threshold t >= 2 shares among the k = n - 1 others
        if not lo <= cfg.clients_per_round <= n:
            p.add("clients_per_round", cfg.clients_per_round, f"must be an int in [{lo}, data.num_clients = {n}]"
                  + (" (secure aggregation needs 3: each secret is split into t >= 2 shares held by the "
                     "other clients)" if sa.enabled else ""))
    if d.loader is not None:
        return  # the rules below are about the built-in datasets and models
    if p.ok("data.dataset", "data.partition"):
        synthetic = d.dataset is DatasetName.SYNTHETIC
        if synthetic and d.partition is not Partition.NATURAL:
            p.add("data.partition", d.partition, "synthetic data is federated by construction: use 'natural'")
        if not synthetic and d.partition is Partition.NATURAL:
            p.add("data.partition", d.partition, f"{d.dataset.value} is pooled data: use iid, dirichlet or shards")
        if synthetic and d.public_fraction:
            p.add("data.public_fraction", d.public_fraction, "synthetic data has no public part; use 0")
    if p.ok("data.test_fraction", "data.public_fraction") and d.dataset is DatasetName.DIGITS \
            and d.test_fraction + d.public_fraction >= 1:
        p.add("data.public_fraction", d.public_fraction,
              f"with data.test_fraction = {d.test_fraction} nothing is left for the clients")
    if p.ok("model.name", "data.dataset") and cfg.model.factory is None:
        allowed = {DatasetName.DIGITS: {ModelName.MLP}, DatasetName.SYNTHETIC: {ModelName.MLP},
                   DatasetName.MNIST1D: {ModelName.MLP, ModelName.CONV1D}}[d.dataset]
        if cfg.model.name not in allowed:
            p.add("model.name", cfg.model.name, f"{d.dataset.value} needs one of {sorted(x.value for x in allowed)}")


def _privacy(cfg, p: _Problems) -> None:
    lc, dp, sa, n = cfg.local, cfg.dp, cfg.secagg, cfg.data.num_clients
    if p.ok("local.optimizer", "local.momentum") and lc.optimizer is OptimizerName.ADAM and lc.momentum:
        p.add("local.momentum", lc.momentum, "Adam has no momentum option: use 0 (the default with SGD is 0.9)")
    if dp.adaptive_clip.enabled and dp.mode is not DPMode.CLIENT and p.ok("dp.adaptive_clip.enabled", "dp.mode"):
        p.add("dp.adaptive_clip.enabled", dp.adaptive_clip.enabled, "adaptive clipping runs inside client-level DP "
              "(dp.mode = 'client')")
    if dp.mode is DPMode.NONE:
        return
    if dp.mode is DPMode.CLIENT and getattr(dp.adjacency, "value", None) == "add-remove" \
            and p.ok("dp.adjacency", "dp.mode"):
        p.add("dp.adjacency", dp.adjacency, "add-remove is not offered for client-level DP: a departing client "
              "takes its noise share and, with a fixed cohort, another takes its place, and no accounting here "
              "covers either; use zero-out or replace-one")
    if p.ok("dp.target_epsilon", "dp.epsilon_budget") and dp.target_epsilon is not None \
            and dp.epsilon_budget is not None and dp.target_epsilon > dp.epsilon_budget:
        p.add("dp.target_epsilon", dp.target_epsilon, f"exceeds dp.epsilon_budget = {dp.epsilon_budget}")
    if dp.mode is DPMode.CLIENT:
        if not sa.enabled and p.ok("secagg.enabled"):
            p.add("dp.mode", dp.mode, "client-level DP adds its noise in shares inside secure aggregation: "
                  "set secagg.enabled = true")
        if p.ok("dp.delta", "data.num_clients") and dp.delta >= 1 / n:
            p.add("dp.delta", dp.delta, f"must be < 1/num_clients = {1 / n:.3g} for client-level DP")
    if dp.mode is DPMode.SAMPLE and p.ok("local.prox_mu") and lc.prox_mu:
        p.add("local.prox_mu", lc.prox_mu, "FedProx is not supported with DP-SGD (dp.mode = 'sample'): use 0")
    if dp.bits is not None and p.ok("dp.bits", "secagg.bits") and dp.bits > sa.bits:
        p.add("dp.bits", dp.bits, f"exceeds secagg.bits = {sa.bits}")


def _secagg(cfg, p: _Problems) -> None:
    sa = cfg.secagg
    if sa.graph is GraphKind.COMPLETE and sa.k is not None and p.ok("secagg.graph"):
        p.add("secagg.k", sa.k, "applies only to graph = 'sparse' (the complete graph has degree n - 1)")
    if sa.graph is GraphKind.SPARSE and sa.k is not None and p.ok("secagg.k") and sa.k % 2:
        p.add("secagg.k", sa.k, "the SecAgg+ Harary graph needs an even degree")
    if sa.enabled and cfg.clients_per_round is not None and p.ok("secagg.min_survivors", "clients_per_round") \
            and math.ceil(sa.min_survivors * cfg.clients_per_round) < 2:
        p.add("secagg.min_survivors", sa.min_survivors,
              f"with clients_per_round = {cfg.clients_per_round} this allows a sum of one client's input")


def _init_and_personalize(cfg, p: _Problems) -> None:
    ini, pz = cfg.init, cfg.personalize
    if ini.mode is InitMode.PRETRAINED and ini.checkpoint is None and p.ok("init.checkpoint"):
        p.add("init.checkpoint", None, "init.mode = 'pretrained' needs a state_dict file path")
    if ini.mode is InitMode.RANDOM and ini.checkpoint is not None and p.ok("init.mode"):
        p.add("init.checkpoint", ini.checkpoint, "is set but init.mode = 'random'; remove it or use 'pretrained'")
    if p.ok("personalize.every", "personalize.steps") and pz.every > 0 and pz.steps == 0:
        p.add("personalize.every", pz.every, "needs personalize.steps > 0")
    if p.ok("personalize.every", "rounds") and pz.every > cfg.rounds:
        p.add("personalize.every", pz.every, f"exceeds rounds = {cfg.rounds}")
    if pz.personal_layers and cfg.model.factory is None and p.ok("personalize.personal_layers", "model.name"):
        names = MODEL_PARAMETERS[cfg.model.name]  # checked at run time against a custom model
        unused = [x for x in pz.personal_layers if not any(_matches(n, x) for n in names)]
        if unused:
            p.add("personalize.personal_layers", list(pz.personal_layers),
                  f"prefixes {unused} match no layer of {cfg.model.name.value} (layers: {list(names)})")
        elif all(any(_matches(n, x) for x in pz.personal_layers) for n in names):
            p.add("personalize.personal_layers", list(pz.personal_layers), "leaves no shared layer to train")


def _audit(cfg, p: _Problems) -> None:
    """Canaries go through the mechanism whose claim they test."""
    au, dp = cfg.audit, cfg.dp
    if p.ok("audit.canaries", "dp.mode") and au.canaries and dp.mode is not DPMode.CLIENT:
        p.add("audit.canaries", au.canaries, "canary clients audit client-level DP: needs dp.mode = 'client'")
    if p.ok("audit.canaries") and au.canaries == 1:
        p.add("audit.canaries", au.canaries, "use 0 or at least 2 (a Gaussian is fitted to their statistics)")
    if p.ok("audit.canary_examples", "dp.mode") and au.canary_examples and dp.mode is not DPMode.SAMPLE:
        p.add("audit.canary_examples", au.canary_examples,
              "canary examples audit sample-level DP: needs dp.mode = 'sample'")
    if p.ok("audit.null_canaries") and au.null_canaries is not None and not au.canaries:
        p.add("audit.null_canaries", au.null_canaries, "needs audit.canaries > 0")
