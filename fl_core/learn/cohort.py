"""Vectorized cohort trainer: many simulated clients' local training in one batched step.

The reference path trains the sampled clients one after the other (``fl_core.learn.client.local_train``,
Opacus for DP-SGD). This module stacks the clients' parameters along a leading client axis and
runs every local step of a whole cohort at once with ``torch.func``: ``functional_call`` of one
model over ``vmap`` across clients (each with its own parameters, data and optimizer state) and,
for DP-SGD, ``vmap`` of ``grad`` across the examples of each client's batch, which gives the
per-example gradients that are clipped (Abadi et al., CCS 2016).

Privacy semantics are those of per-client Opacus DP-SGD (``dp.opacus_adapter``), step for step:

- Poisson sampling per client at q = 1 / ceil(n / batch_size), a fresh Bernoulli(q) draw for each
  example and step (Opacus' ``UniformWithReplacementSampler``); variable batch sizes are handled by
  padding to the largest batch of the step and a 0/1 mask, never by truncation;
- each example's gradient (over all trainable parameters) is scaled by
  min(1, C / (||g|| + 1e-6)) (Opacus' ``DPOptimizer.clip_and_accumulate``), the scaled gradients
  are summed, N(0, (z C)^2) noise is added to the sum, and the result is divided by the expected
  batch size int(n q) (Opacus' ``loss_reduction = "mean"`` convention); empty batches still take a
  noisy step, as in Opacus;
- SGD, SGD with momentum and Adam then step per client, exactly as ``torch.optim`` does;
- the privacy event of a client is ``ComposedEvent(PoissonSampledEvent(q, GaussianEvent(z)), steps)``,
  the one the Opacus path records.

Given the same per-client ``torch.Generator`` as the reference path, the cohort draws the same
random numbers in the same order (a 62-bit seed from the client's generator; Poisson masks from a
generator seeded with it, including the one draw a torch ``DataLoader`` makes per epoch; noise
from a generator seeded with it + 1, per parameter in ``named_parameters`` order), so a seeded run
reproduces the reference run up to floating point. Without generators every client gets a fresh
``torch.Generator`` seeded with 63 bits from ``os.urandom``.

Clients that have fewer examples or fewer steps are masked, not padded with fake work: a client
whose steps are done leaves the computation, and nothing any client does depends on another's data
or randomness. The cohort is split into chunks whose estimated memory fits ``memory_budget``.

Per-example gradients through ``vmap`` are only as correct as the model's forward is per-example:
layers that mix the examples of a batch (BatchNorm), keep state (running statistics), draw
randomness (dropout) or have no verified rule are refused with ``UnsupportedLayerError`` naming the
layer, and every call checks on a few real examples that the batched forward equals the per-example
forward. Convolutions run as unfold + matmul (im2col), whose per-example weight gradients batch into
one matrix product; ``vmap``'s rule for native convolutions turns them into grouped convolutions
with one group per example, which is correct but far slower on CPU. Linear layers applied once per
example to a vector never build per-example weight gradients: their norms and clipped sum come from
the layer's input and output gradient (see ``_TapLinear``). docs/cohort.md has the details,
the tests that check each claim against Opacus, and the benchmarks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import vmap
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from dp.events import ComposedEvent, GaussianEvent, PoissonSampledEvent

from fl_core.errors import bad_field
from fl_core.learn.client import LocalResult, OptimizerName, SampleDP, check_local_options
from fl_core.learn.data import as_tensors
from fl_core.learn.names import Backend
from fl_core.learn.params import matches_prefix, named_trainable
from fl_core.learn.per_example import (PROBE_EXAMPLES, Twin, UnsupportedLayerError, activations_per_example,
                                       check_model, dp_client_fn, make_twin, plain_client_fn, sample_loss_fn)
from fl_core.learn.stacked_optimizer import StackedOptimizer

__all__ = [
    "Backend",
    "UnsupportedLayerError",
    "CohortResult",
    "ClientPlan",
    "plan_client",
    "check_model",
    "clipped_grad_sum",
    "train_cohort",
    "DEFAULT_MEMORY_BUDGET",
]

#: Bytes one chunk of the cohort may use on CPU (estimated); fixed, so that a seeded run chunks,
#: and therefore rounds, the same way on every machine.
DEFAULT_MEMORY_BUDGET = 1 << 30


# --------------------------------------------------------------------------- per-client plan


@dataclass(frozen=True)
class ClientPlan:
    """One client's local training, fixed before it starts.

    ``steps``: optimizer steps; ``batches_per_epoch``: ceil(n / batch_size); with DP-SGD,
    ``sampling_rate`` q = 1 / batches_per_epoch and ``expected_batch`` = int(n q), the divisor
    Opacus uses (floored as Opacus does; 1 where that float product rounds to 0).
    """

    examples: int
    steps: int
    batches_per_epoch: int
    sampling_rate: float | None = None
    expected_batch: int | None = None


def plan_client(n: int, *, batch_size: int, epochs: int | None, steps: int | None, dp: bool) -> ClientPlan:
    """The plan of a client with ``n`` examples (Opacus' rules for q and the expected batch)."""
    nb = math.ceil(n / batch_size)
    total = steps if steps is not None else epochs * nb
    if not dp:
        return ClientPlan(examples=n, steps=total, batches_per_epoch=nb)
    q = 1.0 / nb
    return ClientPlan(examples=n, steps=total, batches_per_epoch=nb, sampling_rate=q,
                      expected_batch=int(n * q) or 1)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CohortResult:
    """What a cohort's local training produced, client by client in input order.

    ``results[i]`` is client i's ``LocalResult`` (as ``local_train`` returns it; no
    ``opacus_epsilon``); ``personal[i]`` maps the ``exclude``d (personal) parameter names to their
    trained values; ``sampled_examples[i]`` counts the examples its batches held over all steps.
    ``chunk_size`` is the largest chunk trained at once.
    """

    results: tuple[LocalResult, ...]
    personal: tuple[dict[str, torch.Tensor], ...]
    sampled_examples: tuple[int, ...]
    chunk_size: int
    chunks: int


def _materialize(data: Dataset | tuple) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = as_tensors(data)
    if tensors is not None:
        return tensors
    x, y = next(iter(DataLoader(data, batch_size=len(data))))
    return torch.as_tensor(x), torch.as_tensor(y)


def _fresh_generator() -> torch.Generator:
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "big") >> 1)


def _chunk_size(plans: Sequence[ClientPlan], *, dim: int, sample_dim: int, acts: int, batch_size: int,
                dp: bool, budget: int) -> int:
    """Clients per chunk so that the estimate below stays within ``budget`` bytes.

    Per client: parameters, start copy, gradient and up to two optimizer buffers (6 d floats),
    plus per example of its largest likely batch the saved activations and their gradients (2 x)
    and, with DP-SGD, twice the per-example gradient floats (``sample_dim``: untapped parameters,
    plus the input and output of each tapped Linear). The likely Poisson batch is the expectation
    plus 3 standard deviations. Checked against peak RSS on CPU (docs/cohort.md): the CNN at 16
    clients, 1.0 GB estimated, 0.6-0.95 GB measured; the MLP at 256 clients, 70 MB vs 64 MB.
    """
    if dp:
        e = max(p.expected_batch for p in plans)
        b = e + 3 * math.sqrt(e) + 1
        per_example = 2 * acts + 2 * sample_dim
    else:
        b, per_example = batch_size, 2 * acts
    per_client = 4 * (6 * dim + b * per_example)
    return max(1, int(budget // per_client))


# --------------------------------------------------------------------------- training


def clipped_grad_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, max_grad_norm: float,
                     loss_fn: Callable | None = None) -> dict[str, torch.Tensor]:
    """Sum over the batch ``(x, y)`` of the per-example gradients of ``model``'s trainable
    parameters, each clipped to ``max_grad_norm`` (what Opacus stores in ``p.summed_grad``).

    The same code as one client's DP-SGD step in ``train_cohort``, before noise; exposed so that it
    can be checked against Opacus on a given batch.
    """
    device = next(model.parameters()).device
    check_model(model, dp=True)
    twin = make_twin(model, device, x[:PROBE_EXAMPLES])
    params = {n: p.detach().unsqueeze(0) for n, p in model.named_parameters() if p.requires_grad}
    client = dp_client_fn(twin, loss_fn or F.cross_entropy, float(max_grad_norm))
    summed, _ = vmap(client)(params, x.unsqueeze(0), y.unsqueeze(0), torch.ones(1, len(y), device=device))
    return {n: v[0] for n, v in summed.items()}


def train_cohort(model: nn.Module, datasets: Sequence[Dataset | tuple], *, epochs: int | None = None,
                 steps: int | None = None, optimizer: OptimizerName | str = OptimizerName.SGD, lr: float = 0.1,
                 momentum: float = 0.0, batch_size: int = 32, prox_mu: float = 0.0, exclude: Sequence[str] = (),
                 generators: Sequence[torch.Generator] | None = None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 dp: SampleDP | None = None, start: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
                 chunk_size: int | None = None, memory_budget: int | None = None,
                 device: torch.device | str | None = None, allow: Sequence[type[nn.Module]] = ()) -> CohortResult:
    """Train one copy of ``model`` per dataset, all at once; ``model`` itself is not changed.

    Options mean what they mean for ``local_train`` (``dp`` switches on per-client DP-SGD with
    Opacus' semantics; its ``grad_sample_mode``, ``accountant``, ``delta`` and
    ``max_physical_batch_size`` concern Opacus only and are ignored). ``generators``: one CPU
    ``torch.Generator`` per client, used as ``local_train`` uses its ``generator`` (so the same
    generators give the same run); None draws each client's seed from ``os.urandom``.
    ``start[i]``: values for some of client i's parameters (e.g. its personal layers) replacing
    the model's. ``loss_fn(logits, y)`` returns the batch mean (default cross-entropy).
    ``chunk_size`` clients train at once (default: as many as fit ``memory_budget`` bytes, by
    default ``DEFAULT_MEMORY_BUDGET`` on CPU and 60% of the free memory on a GPU); a chunk that
    runs out of GPU memory is retried in halves. ``allow``: extra layer types to accept (see
    ``check_model``).
    """
    opt_name = check_local_options(epochs, steps, optimizer, lr, momentum, batch_size, prox_mu, dp)
    _check_cohort_options(datasets, generators=generators, start=start, chunk_size=chunk_size,
                          memory_budget=memory_budget, dp=dp)
    k_all = len(datasets)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    check_model(model, dp=dp is not None, allow=allow)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise bad_field("model", type(model).__name__, "has no trainable parameters")
    shared = [n for n, _ in named_trainable(model, exclude=exclude)]
    personal = [n for n, _ in named if matches_prefix(n, tuple(exclude))]
    data = [_materialize(d) for d in datasets]
    _check_data(data, start, {n: p.shape for n, p in named})
    twin = make_twin(model, device, data[0][0][:PROBE_EXAMPLES].to(device))
    plans = [plan_client(len(y), batch_size=batch_size, epochs=epochs, steps=steps, dp=dp is not None)
             for _, y in data]
    gens = list(generators) if generators is not None else [_fresh_generator() for _ in data]
    if chunk_size is None:
        chunk_size = _auto_chunk_size(twin, named, plans, data[0][0][:1].to(device), batch_size=batch_size,
                                      dp=dp is not None, budget=memory_budget, device=device)
    cfg = dict(twin=twin, named=named, shared=shared, personal=personal, opt_name=opt_name, lr=lr,
               momentum=momentum, batch_size=batch_size, prox_mu=prox_mu, loss_fn=loss_fn or F.cross_entropy,
               dp=dp, device=device)
    out: list = [None] * k_all
    i, largest, chunks = 0, 0, 0
    while i < k_all:
        size = min(chunk_size, k_all - i)
        ids = range(i, i + size)
        saved = [gens[j].get_state() for j in ids]
        try:
            res = _train_chunk([data[j] for j in ids], [plans[j] for j in ids], [gens[j] for j in ids],
                               [start[j] if start is not None else None for j in ids], **cfg)
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            for j, s in zip(ids, saved):
                gens[j].set_state(s)
            chunk_size = size // 2
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        out[i:i + size] = res
        i, largest, chunks = i + size, max(largest, size), chunks + 1
    return CohortResult(results=tuple(r[0] for r in out), personal=tuple(r[1] for r in out),
                        sampled_examples=tuple(r[2] for r in out), chunk_size=largest, chunks=chunks)


def _check_cohort_options(datasets, *, generators, start, chunk_size, memory_budget, dp) -> None:
    """The arguments ``train_cohort`` takes beyond ``local_train``'s, checked before any work."""
    if dp is not None:
        for name in ("max_grad_norm", "noise_multiplier"):
            v = getattr(dp, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise bad_field(f"dp.{name}", v, "must be a finite number > 0")
    if isinstance(datasets, (Dataset, tuple)) or not isinstance(datasets, Sequence) or not datasets:
        raise bad_field("datasets", type(datasets).__name__, "must be a non-empty list of client datasets")
    k_all = len(datasets)
    if generators is not None and len(generators) != k_all:
        raise bad_field("generators", f"{len(generators)} generators", f"need one per dataset ({k_all})")
    if start is not None and len(start) != k_all:
        raise bad_field("start", f"{len(start)} entries", f"need one per dataset ({k_all}) or None")
    for name, v in (("chunk_size", chunk_size), ("memory_budget", memory_budget)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise bad_field(name, v, "must be a positive int or None")


def _check_data(data, start, shapes) -> None:
    """Every client has examples of one shape; ``start`` names trainable parameters with their shapes."""
    for i, (x, y) in enumerate(data):
        if len(y) == 0:
            raise bad_field(f"datasets[{i}]", "0 examples", "needs at least one training example")
        if x.shape[1:] != data[0][0].shape[1:]:
            raise bad_field(f"datasets[{i}]", tuple(x.shape[1:]), f"example shape differs from datasets[0]'s "
                            f"{tuple(data[0][0].shape[1:])}")
    for i, over in enumerate(start or ()):
        for n, v in (over or {}).items():
            if n not in shapes or tuple(v.shape) != tuple(shapes[n]):
                raise bad_field(f"start[{i}]", n, f"must name trainable parameters with their shapes "
                                f"({ {k: tuple(s) for k, s in shapes.items()} })")


def _auto_chunk_size(twin: Twin, named, plans, x1: torch.Tensor, *, batch_size: int, dp: bool,
                     budget: int | None, device: torch.device) -> int:
    """Clients per chunk from the memory estimate (``_chunk_size``), evened out over the chunks."""
    if budget is None:
        budget = int(0.6 * torch.cuda.mem_get_info(device)[0]) if device.type == "cuda" else DEFAULT_MEMORY_BUDGET
    acts = activations_per_example(twin.module, x1)
    sample_dim = sum(p.numel() for n, p in named if n not in twin.tapped) + sum(
        twin.module.get_submodule(m).in_features + out for m, (_, _, out) in twin.taps.items())
    size = _chunk_size(plans, dim=sum(p.numel() for _, p in named), sample_dim=sample_dim, acts=acts,
                       batch_size=batch_size, dp=dp, budget=budget)
    k_all = len(plans)
    return math.ceil(k_all / math.ceil(k_all / size))  # equal chunks, none larger


def _train_chunk(data, plans, gens, start, *, twin, named, shared, personal, opt_name, lr, momentum, batch_size,
                 prox_mu, loss_fn, dp, device):
    """Train the clients of one chunk for all their steps; one result triple per client."""
    k = len(data)
    params = {n: p.detach().to(device).unsqueeze(0).repeat(k, *([1] * p.dim())) for n, p in named}
    for i, over in enumerate(start):
        for n, v in (over or {}).items():
            params[n][i].copy_(v.to(device))
    begin = {n: v.clone() for n, v in params.items()}
    opt = StackedOptimizer(opt_name, lr=lr, momentum=momentum, params=params)
    xs = torch.cat([x for x, _ in data]).to(device)
    ys = torch.cat([y for _, y in data]).to(device)
    offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(y) for _, y in data])[:-1]]), dtype=torch.long)
    steps = torch.tensor([p.steps for p in plans])
    loss_sum = torch.zeros(k, dtype=torch.float64)
    drawn = torch.zeros(k, dtype=torch.long)
    batches = _Batches(plans, gens, batch_size=batch_size, dp=dp is not None, device=device)
    if dp is not None:
        client = vmap(dp_client_fn(twin, loss_fn, float(dp.max_grad_norm)))
        std = float(dp.noise_multiplier) * float(dp.max_grad_norm)
        expected = torch.tensor([float(p.expected_batch) for p in plans], device=device)
    else:
        client = vmap(plain_client_fn(sample_loss_fn(twin.module, loss_fn)))

    for t in range(int(steps.max())):
        rows = torch.nonzero(steps > t).flatten()
        active = rows.tolist()
        idx = batches.draw(t, active)
        lens = torch.tensor([len(v) for v in idx])
        width = max(1, int(lens.max()))
        local = torch.zeros(len(active), width, dtype=torch.long)
        if int(lens.max()):
            local[:, :int(lens.max())] = torch.nn.utils.rnn.pad_sequence(idx, batch_first=True)
        valid = torch.arange(width)[None, :] < lens[:, None]
        gidx = torch.where(valid, local + offsets[rows][:, None], offsets[rows][:, None]).to(device)
        valid_f = valid.to(device=device, dtype=xs.dtype)
        sub = None if len(active) == k else rows.to(device)
        p_act = params if sub is None else {n: v[sub] for n, v in params.items()}
        if dp is not None:
            summed, losses = client(p_act, xs[gidx], ys[gidx], valid_f)
            noise = {n: torch.empty_like(v) for n, v in summed.items()}
            for r, j in enumerate(active):  # Opacus' order: parameter by parameter, one generator each
                for n, v in noise.items():
                    torch.normal(0.0, std, size=v.shape[1:], generator=batches.noise_gens[j], out=v[r])
            e = expected[rows.to(device)] if sub is not None else expected
            grads = {n: (summed[n] + noise[n]) / e.reshape(-1, *([1] * (summed[n].dim() - 1))) for n in summed}
        else:
            grads, losses = client(p_act, xs[gidx], ys[gidx], valid_f)
            if prox_mu:  # FedProx (Li et al., MLSys 2020, Eq. 2): gradient of mu/2 ||w - w_start||^2
                b_act = begin if sub is None else {n: v[sub] for n, v in begin.items()}
                for n in shared:
                    grads[n] = grads[n] + prox_mu * (p_act[n] - b_act[n])
        loss_sum[rows] += losses.detach().to("cpu", torch.float64)
        drawn[rows] += lens
        opt.step(params, grads, sub, t)
    return _chunk_results(params, begin, plans, loss_sum, drawn, shared=shared, personal=personal, dp=dp,
                          device=device)


class _Batches:
    """The examples each client trains on at each step, drawn in the reference path's order.

    With DP-SGD, as ``dp.opacus_adapter``: a 62-bit seed from the client's generator; Poisson
    masks from a generator seeded with it (plus the one draw a new DataLoader iterator makes per
    epoch), noise from one seeded with it + 1 on the training device. Without: ``local_train``'s
    ``torch.randperm`` on the client's generator at the start of each epoch.
    """

    def __init__(self, plans, gens, *, batch_size: int, dp: bool, device: torch.device):
        self.plans, self.gens, self.batch_size, self.dp = plans, gens, batch_size, dp
        self.perms: list[torch.Tensor | None] = [None] * len(plans)
        if dp:
            seeds = [int(torch.randint(0, 2**62, (1,), generator=g)) for g in gens]
            self.sample_gens = [torch.Generator().manual_seed(s) for s in seeds]
            self.noise_gens = [torch.Generator(device=device).manual_seed(s + 1) for s in seeds]

    def draw(self, t: int, active: Sequence[int]) -> list[torch.Tensor]:
        idx = []
        for j in active:
            pl = self.plans[j]
            pos = t % pl.batches_per_epoch  # step within the epoch
            if self.dp:
                if pos == 0:  # a new DataLoader iterator draws its base seed from the sampling generator
                    torch.empty((), dtype=torch.int64).random_(generator=self.sample_gens[j])
                mask = torch.rand(pl.examples, generator=self.sample_gens[j]) < pl.sampling_rate
                idx.append(mask.nonzero().flatten())
            else:
                if pos == 0:  # local_train shuffles each epoch with torch.randperm on its generator
                    self.perms[j] = torch.randperm(pl.examples, generator=self.gens[j])
                idx.append(self.perms[j][pos * self.batch_size:(pos + 1) * self.batch_size])
        return idx


def _chunk_results(params, begin, plans, loss_sum, drawn, *, shared, personal, dp, device) -> list:
    """(LocalResult, personal parameters, examples drawn) per client of a trained chunk."""
    k = len(plans)
    upd = torch.cat([(params[n] - begin[n]).reshape(k, -1) for n in shared], dim=1) if shared else \
        torch.zeros(k, 0, device=device)
    upd = upd.detach().to("cpu", torch.float32).numpy()
    out = []
    for i, pl in enumerate(plans):
        if dp is not None:
            loss = float(loss_sum[i] / drawn[i]) if drawn[i] else math.nan
            event = ComposedEvent(PoissonSampledEvent(pl.sampling_rate, GaussianEvent(float(dp.noise_multiplier))),
                                  pl.steps)
        else:
            loss, event = float(loss_sum[i] / pl.steps), None
        res = LocalResult(update=upd[i].copy(), num_examples=pl.examples, num_steps=pl.steps, loss=loss, event=event)
        own = {n: params[n][i].detach().to("cpu").clone() for n in personal}
        out.append((res, own, int(drawn[i])))
    return out
