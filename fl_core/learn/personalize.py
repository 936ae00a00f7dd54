"""Personalization: each client fine-tunes the global model on its own data, and we report how
much that helps on its own test split.

FedPer (Arivazhagan et al. 2019): with ``personal_layers`` (name prefixes, e.g. ``("head",)``) each
client keeps its own copy of those layers across rounds; they never leave the client. Pass the
``personal_params`` returned by the previous call to continue from them. With ``dp`` the
fine-tuning is DP-SGD (``fl_core.learn.client.SampleDP``) and each client's privacy event is returned.

Report: per-client accuracy of the global model and of the personalized one on the client's test
split (with the client's id and train/test sizes); their mean, and the mean over the worst 10% of
clients (ceil(n / 10) clients, at least one), the usual fairness view of personalization. The worst
10% is taken over the clients with at least ``MIN_TEST_EXAMPLES`` test examples: a client with one
test example scores 0 or 1 and would decide the figure alone.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fl_core.learn.client import OptimizerName, SampleDP, evaluate, local_train
from fl_core.learn.data import ClientData
from fl_core.errors import bad_field
from fl_core.learn.params import matches_prefix, named_trainable

__all__ = ["MIN_TEST_EXAMPLES", "PersonalizationReport", "PersonalizationResult", "worst_fraction_mean", "personalize"]


MIN_TEST_EXAMPLES = 10  # of a client, to count in the worst-10% figure


def worst_fraction_mean(values: Sequence[float] | np.ndarray, *, fraction: float = 0.1) -> float:
    """Mean of the lowest ``ceil(fraction * n)`` values (at least one); NaNs are ignored."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not 0 < fraction <= 1:
        raise bad_field("fraction", fraction, "must be in (0, 1]")
    if v.size == 0:
        return float("nan")
    k = max(1, math.ceil(fraction * v.size))
    return float(np.sort(v)[:k].mean())


@dataclass(frozen=True)
class PersonalizationReport:
    """Per-client test accuracy before (global) and after (personalized) fine-tuning."""

    global_acc: np.ndarray
    personal_acc: np.ndarray
    train_sizes: np.ndarray | None = None  # per client, same order; None: every client counts
    test_sizes: np.ndarray | None = None
    min_test_examples: int = MIN_TEST_EXAMPLES

    def _counted(self, acc: np.ndarray) -> np.ndarray:
        if self.test_sizes is None:
            return acc
        return acc[np.asarray(self.test_sizes) >= self.min_test_examples]

    @property
    def clients_counted_in_worst10(self) -> int:
        return int(self._counted(self.global_acc).size)

    @property
    def mean_global(self) -> float:
        return float(np.nanmean(self.global_acc))

    @property
    def mean_personal(self) -> float:
        return float(np.nanmean(self.personal_acc))

    @property
    def worst10_global(self) -> float:
        return worst_fraction_mean(self._counted(self.global_acc))

    @property
    def worst10_personal(self) -> float:
        return worst_fraction_mean(self._counted(self.personal_acc))

    def as_dict(self) -> dict[str, object]:
        """JSON-able summary for metrics files (keys ending in ``_acc`` and ``clients`` are per client)."""
        out: dict[str, object] = {
            "mean_global": self.mean_global, "mean_personal": self.mean_personal,
            "worst10_global": self.worst10_global, "worst10_personal": self.worst10_personal,
            "worst10_min_test_examples": self.min_test_examples if self.test_sizes is not None else None,
            "worst10_clients_counted": self.clients_counted_in_worst10,
            "global_acc": [float(x) for x in self.global_acc],
            "personal_acc": [float(x) for x in self.personal_acc]}
        if self.test_sizes is not None:
            out["clients"] = [
                {"client": i, "train_examples": int(tr), "test_examples": int(te),
                 "global_accuracy": float(g), "personalized_accuracy": float(p)}
                for i, (tr, te, g, p) in enumerate(zip(self.train_sizes, self.test_sizes,
                                                       self.global_acc, self.personal_acc))]
        return out


@dataclass(frozen=True)
class PersonalizationResult:
    report: PersonalizationReport
    personal_params: dict[int, dict[str, torch.Tensor]]  # client index -> its personal layers
    events: dict[int, object]                            # client index -> DP event (with dp only)


def _personal_state(model: nn.Module, prefixes: Sequence[str]) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if matches_prefix(n, prefixes)}


def personalize(global_model: nn.Module, clients: Sequence[ClientData], *, steps: int, lr: float,
                batch_size: int = 16, optimizer: OptimizerName | str = OptimizerName.SGD, momentum: float = 0.0,
                personal_layers: Sequence[str] = (),
                personal_params: Mapping[int, Mapping[str, torch.Tensor]] | None = None,
                generator: torch.Generator | None = None, dp: SampleDP | None = None) -> PersonalizationResult:
    """Fine-tune a copy of ``global_model`` for ``steps`` steps on each client's training data
    and evaluate it, and the global model, on that client's test split.

    With ``personal_layers``, client i's copy first takes its personal layers from
    ``personal_params[i]`` (if present), so the "global" accuracy of a FedPer client is that of the
    shared body with its own head. ``global_model`` is not modified.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise bad_field("steps", steps, "must be a positive int")
    personal_layers = tuple(personal_layers)
    if personal_layers:
        named_trainable(global_model, exclude=personal_layers)  # checks the prefixes name layers
    personal_params = personal_params or {}
    g_acc, p_acc, kept, events = [], [], {}, {}
    for i, client in enumerate(clients):
        model = copy.deepcopy(global_model)
        if personal_layers and i in personal_params:
            own = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in personal_params[i].items():
                    if name not in own or not matches_prefix(name, personal_layers):
                        raise bad_field(f"personal_params[{i}]", name, "is not a personal layer of this model")
                    own[name].copy_(value)
        g_acc.append(evaluate(model, client.test)[1])
        res = local_train(model, client.train, steps=steps, lr=lr, batch_size=batch_size, optimizer=optimizer,
                          momentum=momentum, generator=generator, dp=dp)
        if res.event is not None:
            events[i] = res.event
        p_acc.append(evaluate(model, client.test)[1])
        if personal_layers:
            kept[i] = _personal_state(model, personal_layers)
    report = PersonalizationReport(global_acc=np.array(g_acc, dtype=np.float64),
                                   personal_acc=np.array(p_acc, dtype=np.float64),
                                   train_sizes=np.array([len(c.train) for c in clients]),
                                   test_sizes=np.array([len(c.test) for c in clients]))
    return PersonalizationResult(report=report, personal_params=kept, events=events)
