"""Local training on one client: the update it would send, and evaluation.

``local_train`` trains the model it is given *in place* (pass the client's working copy of the
global model) and returns ``LocalResult.update = trained - start`` as a float32 vector laid out by
``fl_core.learn.params``. Non-private training lives here; with ``dp=SampleDP(...)`` the same call runs
sample-level DP-SGD through ``dp.opacus_adapter`` (the only module that imports Opacus, imported
only then) and the result carries the privacy event of the steps that ran.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from fl_core.learn.data import as_tensors
from fl_core.learn.names import OptimizerName
from fl_core.errors import ConfigFieldError, bad_field
from fl_core.learn.params import model_to_vector, named_trainable

__all__ = ["OptimizerName", "SampleDP", "LocalResult", "local_train", "evaluate", "check_local_options"]


@dataclass(frozen=True)
class SampleDP:
    """Sample-level DP-SGD options (Abadi et al., CCS 2016), passed to ``dp.opacus_adapter``.

    Each step Poisson-samples examples at rate q = 1 / ceil(n / batch_size) (Opacus' rule), clips
    each example's gradient to ``max_grad_norm`` and adds Gaussian noise of std
    ``noise_multiplier * max_grad_norm``. ``accountant`` and ``delta`` only feed Opacus' own epsilon
    kept for audits; the run's accountant composes ``LocalResult.event``. Values are the names of
    ``dp.opacus_adapter.GradSampleMode`` and ``dp.accounting.AccountantKind``.
    """

    max_grad_norm: float
    noise_multiplier: float
    grad_sample_mode: str | enum.Enum = "hooks"
    accountant: str | enum.Enum = "rdp"
    delta: float | None = None
    max_physical_batch_size: int | None = None


@dataclass(frozen=True)
class LocalResult:
    """What one client's local training produced.

    ``update``: trained minus starting parameters (float32, ``params`` layout, personal layers
    excluded); ``num_examples``: size of the local training set; ``num_steps``: optimizer steps
    taken; ``loss``: mean training loss (data term only, no proximal term) over those steps (with
    DP-SGD: over the examples Poisson sampling drew). ``event``: with DP-SGD the
    ``dp.events.ComposedEvent`` of the noisy steps that ran (unit of privacy: one example), else
    None. ``opacus_epsilon``: Opacus' own epsilon at ``SampleDP.delta``, for audits.
    """

    update: np.ndarray
    num_examples: int
    num_steps: int
    loss: float
    event: object | None = None
    opacus_epsilon: float | None = None


def check_local_options(epochs, steps, optimizer, lr, momentum, batch_size, prox_mu, dp) -> OptimizerName:
    """Every bad option of ``local_train`` (and ``train_cohort``) at once, as one ``ConfigFieldError``;
    returns the optimizer as an ``OptimizerName``."""
    problems = []
    if dp is not None and not isinstance(dp, SampleDP):
        problems.append(("dp", f"got {dp!r:.80}; must be a SampleDP or None"))
    elif dp is not None and prox_mu:
        problems.append(("prox_mu", f"got {prox_mu!r}; the FedProx term is not supported with DP-SGD "
                         "(Opacus would clip it per example): use 0"))
    if (epochs is None) == (steps is None):
        problems.append(("epochs", f"got epochs={epochs!r}, steps={steps!r}; give exactly one of them"))
    for name, v in (("epochs", epochs), ("steps", steps)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            problems.append((name, f"got {v!r}; must be a positive int"))
    try:
        opt = OptimizerName(optimizer)
    except ValueError:
        opt = None
        problems.append(("optimizer", f"got {optimizer!r}; must be one of {[o.value for o in OptimizerName]}"))
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        problems.append(("lr", f"got {lr!r}; must be a finite number > 0"))
    if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
        problems.append(("momentum", f"got {momentum!r}; must be in [0, 1)"))
    elif opt is OptimizerName.ADAM and momentum:
        problems.append(("momentum", f"got {momentum!r}; Adam has no momentum option (use 0)"))
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        problems.append(("batch_size", f"got {batch_size!r}; must be a positive int"))
    if not (isinstance(prox_mu, (int, float)) and math.isfinite(prox_mu) and prox_mu >= 0):
        problems.append(("prox_mu", f"got {prox_mu!r}; must be a finite number >= 0"))
    if problems:
        raise ConfigFieldError(problems)
    return opt


def _batches(data, tensors: tuple[torch.Tensor, torch.Tensor] | None, batch_size: int,
             generator: torch.Generator | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled minibatches (the last one may be smaller)."""
    if tensors is not None:
        x, y = tensors
        perm = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y), batch_size):
            idx = perm[i:i + batch_size]
            yield x[idx], y[idx]
    else:
        yield from DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)


def local_train(model: nn.Module, train_data: Dataset | tuple, *, epochs: int | None = None,
                steps: int | None = None, optimizer: OptimizerName | str = OptimizerName.SGD,
                lr: float = 0.1, momentum: float = 0.0, batch_size: int = 32, prox_mu: float = 0.0,
                exclude: Sequence[str] = (), generator: torch.Generator | None = None,
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                dp: SampleDP | None = None) -> LocalResult:
    """Train ``model`` in place for ``epochs`` passes or ``steps`` minibatches, whichever is given.

    ``prox_mu`` > 0 adds FedProx's proximal term mu/2 * ||w - w_start||^2 over the shared
    parameters (Li et al., MLSys 2020, Eq. 2), pulling local models toward the global one on
    heterogeneous data. ``exclude`` names personal layers (FedPer): they train, but are left out of
    the update and of the proximal term. Shuffling uses ``generator`` only, so a seeded generator
    gives a reproducible run. ``train_data`` is a torch ``Dataset`` of ``(x, y)`` or a pair ``(x, y)``.
    ``loss_fn(logits, y)`` returns the batch mean (default: cross-entropy).

    With ``dp``, training is DP-SGD (see ``SampleDP``); its Poisson sampling and noise are seeded
    from ``generator`` (torch generators: fine for experiments, not a CSPRNG).
    """
    opt_name = check_local_options(epochs, steps, optimizer, lr, momentum, batch_size, prox_mu, dp)
    tensors = as_tensors(train_data)
    n = len(tensors[1]) if tensors is not None else len(train_data)
    if n == 0:
        raise bad_field("train_data", f"{n} examples", "needs at least one training example")
    start_vec = model_to_vector(model, exclude=exclude)

    def make_optimizer(params) -> torch.optim.Optimizer:
        if opt_name is OptimizerName.SGD:
            return torch.optim.SGD(params, lr=lr, momentum=momentum)
        return torch.optim.Adam(params, lr=lr)

    if dp is not None:
        return _local_train_dp(model, train_data, tensors, n, start_vec, exclude=exclude, dp=dp, epochs=epochs,
                               steps=steps, batch_size=batch_size, make_optimizer=make_optimizer,
                               generator=generator, loss_fn=loss_fn)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad])
    loss_fn = loss_fn or nn.functional.cross_entropy
    shared = [p for _, p in named_trainable(model, exclude=exclude)]
    anchors = [p.detach().clone() for p in shared] if prox_mu else []

    total_steps = steps if steps is not None else epochs * math.ceil(n / batch_size)
    was_training = model.training
    model.train()
    losses = torch.zeros(total_steps, dtype=torch.float64)
    done = 0
    while done < total_steps:
        for xb, yb in _batches(train_data, tensors, batch_size, generator):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            losses[done] = loss.detach()
            if prox_mu:
                loss = loss + 0.5 * prox_mu * sum(((p - a) ** 2).sum() for p, a in zip(shared, anchors))
            loss.backward()
            opt.step()
            done += 1
            if done == total_steps:
                break
    model.train(was_training)
    update = model_to_vector(model, exclude=exclude) - start_vec
    return LocalResult(update=update, num_examples=n, num_steps=total_steps, loss=float(losses.mean()))


class _MeanLoss(nn.Module):
    """A loss function as the module Opacus expects (batch mean, ``reduction = "mean"``)."""

    reduction = "mean"

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.fn(out, y)


def _local_train_dp(model, train_data, tensors, n, start_vec, *, exclude, dp: SampleDP, epochs, steps,
                    batch_size, make_optimizer, generator, loss_fn) -> LocalResult:
    from dp.opacus_adapter import train_dp_sgd  # Opacus is imported only when DP-SGD runs

    if tensors is not None:
        train_data = TensorDataset(*tensors)
    seed = None if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))
    criterion = None if loss_fn is None else _MeanLoss(loss_fn)
    res = train_dp_sgd(model, train_data, max_grad_norm=dp.max_grad_norm, noise_multiplier=dp.noise_multiplier,
                       batch_size=batch_size, epochs=epochs, steps=steps, delta=dp.delta,
                       accountant=getattr(dp.accountant, "value", dp.accountant),  # str or any enum of names
                       grad_sample_mode=getattr(dp.grad_sample_mode, "value", dp.grad_sample_mode),
                       max_physical_batch_size=dp.max_physical_batch_size, loss_fn=criterion,
                       optimizer_factory=make_optimizer, seed=seed)
    # The adapter trains a copy; bring its weights back so DP and non-DP calls behave alike.
    model.load_state_dict(res.model.state_dict())
    update = model_to_vector(model, exclude=exclude) - start_vec
    return LocalResult(update=update, num_examples=n, num_steps=res.steps, loss=float(res.mean_loss),
                       event=res.event, opacus_epsilon=res.opacus_epsilon)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | tuple, *, batch_size: int = 1024,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``data`` (eval mode; the model's mode is restored).

    An empty dataset gives ``(nan, nan)`` rather than an error, so a report can show it. A custom
    ``loss_fn(logits, y, reduction=...)`` must accept ``reduction="sum"``, as torch's losses do.
    """
    loss_fn = loss_fn or nn.functional.cross_entropy
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    tensors = as_tensors(data)
    batches = ([(tensors[0][i:i + batch_size], tensors[1][i:i + batch_size]) for i in range(0, len(tensors[1]), batch_size)]
               if tensors is not None else DataLoader(data, batch_size=batch_size))
    for xb, yb in batches:
        out = model(xb)
        total_loss += float(loss_fn(out, yb, reduction="sum"))
        correct += int((out.argmax(dim=1) == yb).sum())
        count += len(yb)
    model.train(was_training)
    if count == 0:
        return float("nan"), float("nan")
    return total_loss / count, correct / count
