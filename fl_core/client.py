"""Local training on one client: the update it would send, and evaluation.

``local_train`` trains the model it is given *in place* (pass the client's working copy of the
global model) and returns ``LocalResult.update = trained - start`` as a float32 vector laid out by
``fl_core.params``. Non-private training lives here; sample-level DP-SGD goes through
``dp.opacus_adapter`` (the only module that imports Opacus).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data import as_tensors
from .errors import ConfigFieldError, bad_field
from .params import model_to_vector, named_trainable

__all__ = ["OptimizerName", "LocalResult", "local_train", "evaluate"]


class OptimizerName(enum.Enum):
    SGD = "sgd"
    ADAM = "adam"


@dataclass(frozen=True)
class LocalResult:
    """What one client's local training produced.

    ``update``: trained minus starting parameters (float32, ``params`` layout, personal layers
    excluded); ``num_examples``: size of the local training set; ``num_steps``: optimizer steps
    taken; ``loss``: mean training loss (data term only, no proximal term) over those steps.
    """

    update: np.ndarray
    num_examples: int
    num_steps: int
    loss: float


def _validate(epochs, steps, optimizer, lr, momentum, batch_size, prox_mu) -> OptimizerName:
    problems = []
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


def _batches(data, batch_size: int, generator: torch.Generator | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled minibatches (the last one may be smaller)."""
    tensors = as_tensors(data)
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
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> LocalResult:
    """Train ``model`` in place for ``epochs`` passes or ``steps`` minibatches, whichever is given.

    ``prox_mu`` > 0 adds FedProx's proximal term mu/2 * ||w - w_start||^2 over the shared
    parameters (Li et al., MLSys 2020, Eq. 2), pulling local models toward the global one on
    heterogeneous data. ``exclude`` names personal layers (FedPer): they train, but are left out of
    the update and of the proximal term. Shuffling uses ``generator`` only, so a seeded generator
    gives a reproducible run. ``train_data`` is a torch ``Dataset`` of ``(x, y)`` or a pair ``(x, y)``.
    """
    opt_name = _validate(epochs, steps, optimizer, lr, momentum, batch_size, prox_mu)
    n = len(train_data[1]) if isinstance(train_data, tuple) else len(train_data)
    if n == 0:
        raise bad_field("train_data", f"{n} examples", "needs at least one training example")
    loss_fn = loss_fn or nn.functional.cross_entropy
    shared = [p for _, p in named_trainable(model, exclude=exclude)]
    start_vec = model_to_vector(model, exclude=exclude)
    anchors = [p.detach().clone() for p in shared] if prox_mu else []
    params = [p for p in model.parameters() if p.requires_grad]
    if opt_name is OptimizerName.SGD:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    else:
        opt = torch.optim.Adam(params, lr=lr)

    total_steps = steps if steps is not None else epochs * math.ceil(n / batch_size)
    was_training = model.training
    model.train()
    losses = torch.zeros(total_steps, dtype=torch.float64)
    done = 0
    while done < total_steps:
        for xb, yb in _batches(train_data, batch_size, generator):
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


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | tuple, *, batch_size: int = 1024,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``data`` (eval mode; the model's mode is restored).

    An empty dataset gives ``(nan, nan)`` rather than an error, so a report can show it.
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
