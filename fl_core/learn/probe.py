"""A measured choice for the cohort path: vectorized only where it beats client after client.

The cohort trainer (``fl_core.learn.cohort``) wins by batching many clients into one step, but on a
CPU a convolutional model can run slower that way than Opacus one client after the other
(benchmarks/results/cohort_cpu_cnn28_k64_b32.json). Both compute the same updates from the same
generators, so the cohort path may take either: ``pick_backend`` times both on this model, on this
machine, with the round's batch size, optimizer and DP setting, on synthetic data of the clients'
input shape (nothing trained here is kept or released), and keeps the answer per (architecture,
device, threads, batch, DP, cohort size) for the life of the process.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from fl_core.learn.client import SampleDP, local_train
from fl_core.learn.cohort import train_cohort
from fl_core.learn.data import as_tensors
from fl_core.learn.names import Backend

__all__ = ["Probe", "pick_backend", "PROBE_CLIENTS", "PROBE_STEPS"]

PROBE_CLIENTS = 16  # cohort size timed (at most the real one): the cohort only gets faster with more
PROBE_STEPS = 2
_CACHE: dict[tuple, "Probe"] = {}


@dataclass(frozen=True)
class Probe:
    backend: Backend                 # COHORT (vectorized) or OPACUS (client after client)
    cohort_samples_per_s: float
    opacus_samples_per_s: float
    clients_timed: int
    seconds: float                   # what the probe cost

    def as_dict(self) -> dict:
        return {**asdict(self), "backend": self.backend.value}


def _key(model: nn.Module, shape, clients: int, batch_size: int, dp: SampleDP | None, optimizer, device) -> tuple:
    arch = (type(model).__module__, type(model).__qualname__,
            tuple((n, tuple(p.shape), p.requires_grad) for n, p in model.named_parameters()))
    return (arch, tuple(shape), min(clients, PROBE_CLIENTS), batch_size, dp is not None, str(optimizer),
            str(device), torch.get_num_threads())


def pick_backend(model: nn.Module, example_data, *, clients: int, batch_size: int, dp: SampleDP | None,
                 optimizer="sgd", lr: float = 0.1, momentum: float = 0.0, device: str = "cpu",
                 refresh: bool = False) -> Probe:
    """Which backend trains ``clients`` clients of ``model`` faster here: the vectorized cohort
    (timed on min(clients, PROBE_CLIENTS) clients, a lower bound on its speed at more) or the
    reference client after client (timed on two). ``example_data``: one client's data, for its
    input shape only. Ties go to the cohort."""
    pair = as_tensors(example_data)
    if pair is None:
        x0 = torch.as_tensor(example_data[0][0])[None]
    else:
        x0 = pair[0][:1]
    key = _key(model, x0.shape[1:], clients, batch_size, dp, optimizer, device)
    if not refresh and key in _CACHE:
        return _CACHE[key]
    t_start = time.perf_counter()
    m = max(1, min(clients, PROBE_CLIENTS))
    n_examples = 4 * batch_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n_examples, *x0.shape[1:], generator=gen, dtype=torch.float32)
    data = [(x, torch.zeros(n_examples, dtype=torch.long)) for _ in range(m)]
    opts = dict(batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum, dp=dp)

    def gens(count: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(1000 + i) for i in range(count)]

    def opacus(count: int, steps: int) -> float:
        t0 = time.perf_counter()
        for d, g in zip(data[:count], gens(count)):
            local_train(copy.deepcopy(model), d, steps=steps, generator=g, **opts)
        return count * steps * batch_size / (time.perf_counter() - t0)

    def cohort(count: int, steps: int) -> float:
        t0 = time.perf_counter()
        train_cohort(model, data[:count], steps=steps, generators=gens(count), device=device, **opts)
        return count * steps * batch_size / (time.perf_counter() - t0)

    if torch.device(device).type != "cpu":  # the reference path trains on the CPU only
        probe = Probe(Backend.COHORT, float("nan"), float("nan"), 0, 0.0)
        _CACHE[key] = probe
        return probe
    opacus(1, 1)   # first-call costs (imports, allocator, Opacus hooks) out of the timing
    cohort(min(m, 2), 1)
    best_o = best_c = 0.0
    for _ in range(2):  # alternate, so a burst of load hits both alike
        best_o = max(best_o, opacus(min(m, 2), PROBE_STEPS))
        best_c = max(best_c, cohort(m, PROBE_STEPS))
    probe = Probe(Backend.COHORT if best_c >= best_o else Backend.OPACUS, best_c, best_o, m,
                  time.perf_counter() - t_start)
    _CACHE[key] = probe
    return probe
