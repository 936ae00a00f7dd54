"""Sample-level DP-SGD on one client with Opacus; the only module that imports Opacus at load time.

``train_dp_sgd`` copies the caller's model, wraps the copy, its optimizer and a data loader with
Opacus' ``PrivacyEngine`` (Poisson sampling, per-example clipping to ``max_grad_norm``, Gaussian
noise, the per-sample-gradient engine the caller picks, ``BatchMemoryManager`` for logical batches
larger than memory), trains for a number of epochs or steps, and returns the update (trained minus
initial trainable parameters, flattened) with the privacy event that covers it:
``ComposedEvent(PoissonSampledEvent(q, GaussianEvent(z)), steps)``, built from the steps Opacus'
own accountant recorded, so what we account for is what ran. The caller's model is never wrapped
or modified.

Noise (``NoiseSource``). By default (``CSPRNG``) the Gaussian noise of every step comes from
``dp.noise``'s AES-256-CTR keystream through ``dp.noise.secure_gaussian`` (the sum-of-four
construction Opacus' secure_mode uses against floating-point attacks, Holohan and Braghin 2021),
plugged in through Opacus' public extension point: a ``DPOptimizer`` subclass whose
``add_noise`` adds that noise (``SECURE_GAUSSIAN_NAME`` names it). ``TORCH`` keeps Opacus' plain
``torch.normal`` (Mersenne Twister), for comparisons only. Poisson sampling still uses a torch
generator (seeded from the OS, or from ``seed`` in tests).
"""

from __future__ import annotations

import contextlib
import copy
import enum
import hashlib
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .accounting import AccountantKind, coerce_kind
from .calibration import calibrate_noise_multiplier
from .errors import DPConfigError
from .grad_sample import GradSampleMode
from .noise import SECURE_GAUSSIAN_NAME, NoiseGenerator, secure_gaussian
from .events import (
    ComposedEvent,
    GaussianEvent,
    PoissonSampledEvent,
    UnitOfPrivacy,
    check_count,
    check_delta,
    check_positive,
)

__all__ = ["GradSampleMode", "NoiseSource", "DPSGDResult", "CSPRNGDPOptimizer",
           "CSPRNGDPOptimizerFastGradientClipping", "train_dp_sgd", "TORCH_NORMAL_NAME"]

TORCH_NORMAL_NAME = "torch.normal (Mersenne Twister), Opacus without secure_mode"


class NoiseSource(enum.Enum):
    """Where DP-SGD's Gaussian noise comes from."""

    CSPRNG = "csprng"  # dp.noise keystream, sum-of-four construction (the default)
    TORCH = "torch"  # torch.normal, Opacus' default; for comparisons only

    @property
    def description(self) -> str:
        return SECURE_GAUSSIAN_NAME if self is NoiseSource.CSPRNG else TORCH_NORMAL_NAME


class _KeystreamNoise:
    """``add_noise`` with noise from a ``NoiseGenerator`` (a mixin for Opacus' optimizers).

    Opacus' own ``add_noise`` runs with the noise multiplier set to 0 (it then adds exact zeros
    and does its bookkeeping), and our noise of std noise_multiplier * max_grad_norm is added to
    each gradient after it; the multiplier is restored before the accountant's step hook reads it.
    """

    def __init__(self, *args, keystream: NoiseGenerator, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.keystream = keystream

    def add_noise(self) -> None:
        z = self.noise_multiplier
        self.noise_multiplier = 0.0
        try:
            super().add_noise()
        finally:
            self.noise_multiplier = z
        std = z * self.max_grad_norm
        for p in self.params:
            noise = secure_gaussian(p.grad.numel(), std, gen=self.keystream)
            p.grad += torch.from_numpy(noise).to(p.grad.device, p.grad.dtype).view_as(p.grad)


class CSPRNGDPOptimizer(_KeystreamNoise, DPOptimizer):
    """Opacus' DPOptimizer with noise from ``dp.noise`` (see ``_KeystreamNoise``)."""


class CSPRNGDPOptimizerFastGradientClipping(_KeystreamNoise, DPOptimizerFastGradientClipping):
    """Opacus' ghost-clipping optimizer with noise from ``dp.noise``."""


def _check_noise(noise: NoiseSource | str) -> NoiseSource:
    if isinstance(noise, NoiseSource):
        return noise
    try:
        return NoiseSource(noise)
    except ValueError:
        choices = [m.value for m in NoiseSource]
        raise DPConfigError(f"noise must be one of {choices}, got {noise!r}") from None


@dataclass(frozen=True)
class DPSGDResult:
    """What one client's private training produced.

    ``update`` is float32 and concatenates (trained - initial) of the trainable parameters in
    ``model.named_parameters()`` order; ``param_names`` and ``param_shapes`` say how to unflatten.
    ``event`` covers exactly ``steps`` noisy steps at sampling rate ``sampling_rate``; the unit of
    privacy is one training example. ``opacus_epsilon`` is Opacus' own accountant's epsilon at
    ``delta`` (when a delta was given), kept for audits beside ours.
    """

    update: np.ndarray
    param_names: tuple[str, ...]
    param_shapes: tuple[tuple[int, ...], ...]
    event: ComposedEvent
    steps: int
    examples: int
    noise_multiplier: float
    sampling_rate: float
    max_grad_norm: float
    mean_loss: float
    model: nn.Module
    unit: UnitOfPrivacy = UnitOfPrivacy.EXAMPLE
    delta: float | None = None
    opacus_epsilon: float | None = None
    noise_generator: str = SECURE_GAUSSIAN_NAME


def _check_mode(mode: GradSampleMode | str) -> GradSampleMode:
    if isinstance(mode, GradSampleMode):
        return mode
    try:
        return GradSampleMode(mode)
    except ValueError:
        choices = [m.value for m in GradSampleMode]
        raise DPConfigError(f"grad_sample_mode must be one of {choices}, got {mode!r}") from None


def _check_model(model: nn.Module) -> None:
    """Refuse layers that mix examples (BatchNorm) or that Opacus cannot clip, naming them."""
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        culprits = sorted({f"{name or '<root>'} ({type(m).__name__})"
                           for name, m in model.named_modules()
                           if isinstance(m, nn.modules.batchnorm._BatchNorm)})
        where = f" at {', '.join(culprits)}" if culprits else ""
        raise DPConfigError(
            f"model is not compatible with DP-SGD{where}: {'; '.join(str(e) for e in errors)}. "
            "BatchNorm mixes the examples of a batch, so per-example clipping does not bound one "
            "example's influence; replace it with GroupNorm (opacus.validators.ModuleValidator.fix)"
        )


def _loader(data: Dataset | DataLoader, batch_size: int | None,
            generator: torch.Generator | None) -> DataLoader:
    if isinstance(data, DataLoader):
        if batch_size is not None and batch_size != data.batch_size:
            raise DPConfigError(f"batch_size={batch_size!r} conflicts with the DataLoader's "
                                f"batch_size={data.batch_size!r}; pass one of them")
        if generator is not None:
            return DataLoader(data.dataset, batch_size=data.batch_size, generator=generator,
                              collate_fn=data.collate_fn, num_workers=data.num_workers)
        return data
    if not isinstance(data, Dataset):
        raise DPConfigError(f"data must be a Dataset (e.g. TensorDataset) or a DataLoader, "
                            f"got {type(data).__name__}")
    if batch_size is None:
        raise DPConfigError("batch_size is required when data is a Dataset, got None")
    check_count(batch_size, "batch_size")
    if len(data) == 0:  # type: ignore[arg-type]
        raise DPConfigError("data is empty: DP-SGD needs at least one example, got len 0")
    return DataLoader(data, batch_size=batch_size, generator=generator)


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def train_dp_sgd(
    model: nn.Module,
    data: TensorDataset | Dataset | DataLoader,
    *,
    max_grad_norm: float,
    lr: float = 0.1,
    batch_size: int | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    delta: float | None = None,
    accountant: AccountantKind | str = AccountantKind.PRV,
    grad_sample_mode: GradSampleMode | str = GradSampleMode.HOOKS,
    max_physical_batch_size: int | None = None,
    loss_fn: nn.Module | None = None,
    optimizer_factory: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
    device: torch.device | str | None = None,
    seed: int | None = None,
    noise: NoiseSource | str = NoiseSource.CSPRNG,
) -> DPSGDResult:
    """Train a copy of ``model`` with DP-SGD and return its update and privacy event.

    Give exactly one of ``epochs`` / ``steps`` and one of ``noise_multiplier`` /
    ``target_epsilon`` (which needs ``delta``; the noise is then the smallest our ``accountant``
    accepts for the planned steps). The expected batch is ``batch_size`` examples: the accounted
    sampling rate is Opacus' 1 / int(1 / (1 / len(loader))) (``dp.calibration
    .dp_sgd_sampling_rate``), and the noise is calibrated for that rate. ``loss_fn`` (default cross-entropy) must average
    over the batch; ``optimizer_factory`` (default SGD with ``lr``) receives the copy's parameters.
    """
    mode = _check_mode(grad_sample_mode)
    source = _check_noise(noise)
    kind = coerce_kind(accountant)
    max_grad_norm = check_positive("max_grad_norm", max_grad_norm)
    if (epochs is None) == (steps is None):
        raise DPConfigError(f"give exactly one of epochs and steps, got epochs={epochs!r}, "
                            f"steps={steps!r}")
    if (noise_multiplier is None) == (target_epsilon is None):
        raise DPConfigError("give exactly one of noise_multiplier and target_epsilon, got "
                            f"noise_multiplier={noise_multiplier!r}, "
                            f"target_epsilon={target_epsilon!r}")
    if delta is not None:
        delta = check_delta(delta)
    if target_epsilon is not None and delta is None:
        raise DPConfigError(f"target_epsilon={target_epsilon!r} needs delta, got None")
    if max_physical_batch_size is not None:
        check_count(max_physical_batch_size, "max_physical_batch_size")
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    if getattr(loss_fn, "reduction", "mean") != "mean":
        raise DPConfigError(f"loss_fn must average over the batch (reduction='mean'), got "
                            f"reduction={loss_fn.reduction!r}")
    work = copy.deepcopy(model).train()  # the caller's model is never wrapped nor trained
    _check_model(work)
    if not _trainable(work):
        raise DPConfigError("model has no trainable parameters")

    sample_gen = noise_gen = None
    if seed is not None:
        sample_gen = torch.Generator().manual_seed(seed)
        noise_gen = torch.Generator(device=device or "cpu").manual_seed(seed + 1)
    loader = _loader(data, batch_size, sample_gen)
    planned = (check_count(steps, "steps") if steps is not None
               else check_count(epochs, "epochs") * len(loader))
    q = 1.0 / int(1.0 / (1.0 / len(loader)))  # the rate Opacus will record (and we charge)
    if target_epsilon is not None:
        noise_multiplier = calibrate_noise_multiplier(
            target_epsilon=target_epsilon, delta=delta, sampling_rate=q, steps=planned,
            accountant=kind)
    z = check_positive("noise_multiplier", noise_multiplier)

    if device is not None:
        work = work.to(device)
    names_params = _trainable(work)
    initial = [p.detach().clone() for _, p in names_params]
    optimizer = (optimizer_factory or (lambda ps: torch.optim.SGD(ps, lr=lr)))(
        [p for _, p in names_params])

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=kind.value)
    wrapped = engine.make_private(
        module=work, optimizer=optimizer, criterion=loss_fn, data_loader=loader,
        noise_multiplier=z, max_grad_norm=max_grad_norm, poisson_sampling=True,
        grad_sample_mode=mode.value, noise_generator=noise_gen)
    if mode is GradSampleMode.GHOST:
        gsm, dp_opt, criterion, dp_loader = wrapped
    else:
        (gsm, dp_opt, dp_loader), criterion = wrapped, loss_fn
    if source is NoiseSource.CSPRNG:
        dp_opt, criterion = _with_keystream_noise(engine, gsm, dp_opt, criterion, dp_loader,
                                                  loss_fn, mode, seed)

    def taken() -> int:  # noisy steps Opacus' accountant has recorded so far
        return sum(int(n) for _, _, n in engine.accountant.history)

    examples, loss_sum = 0, 0.0
    with warnings.catch_warnings():
        # Known noise: torch's note on full backward hooks when inputs need no grad (Opacus'
        # hooks), and Opacus' notes on empty Poisson batches.
        warnings.filterwarnings("ignore", message=r"Full backward hook is firing")
        warnings.filterwarnings("ignore", message=r".*[Ee]mpty batch")
        while taken() < planned:
            before = taken()
            ctx = (BatchMemoryManager(data_loader=dp_loader, optimizer=dp_opt,
                                      max_physical_batch_size=max_physical_batch_size)
                   if max_physical_batch_size is not None else contextlib.nullcontext(dp_loader))
            with ctx as batches:
                for xb, yb in batches:
                    if device is not None:
                        xb, yb = xb.to(device), yb.to(device)
                    dp_opt.zero_grad()
                    loss = criterion(gsm(xb), yb)
                    loss.backward()
                    dp_opt.step()
                    if len(xb):
                        examples += len(xb)
                        loss_sum += float(loss.detach()) * len(xb)
                    if taken() >= planned:
                        break
            if taken() == before:  # pragma: no cover - an epoch with no step would loop forever
                raise DPConfigError("an epoch over the data loader took no optimizer step")

    history = list(engine.accountant.history)
    if len({(float(zz), float(qq)) for zz, qq, _ in history}) != 1:  # pragma: no cover
        raise DPConfigError(f"Opacus recorded mixed steps {history!r}; expected one (z, q)")
    z_run, q_run = float(history[0][0]), float(history[0][1])
    # Opacus runs int(1 / (1 / L)) batches per epoch and accounts q = 1 / that count, which for
    # some L (93, 99, ...) is 1 / (L - 1) > 1 / L, the rate it samples at: conservative, so the
    # event records what Opacus accounted. A smaller accounted rate would under-report: refuse.
    if not math.isclose(z_run, z) or (q_run < q and not math.isclose(q_run, q)):  # pragma: no cover
        raise DPConfigError(f"Opacus accounted (z={z_run}, q={q_run}), planned (z={z}, q={q})")
    n_steps = taken()
    event = ComposedEvent(PoissonSampledEvent(q_run, GaussianEvent(z_run)), n_steps)
    opacus_eps = None
    if delta is not None:
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("ignore")
            opacus_eps = float(engine.accountant.get_epsilon(delta=delta))

    update = torch.cat([(p.detach() - p0).reshape(-1) for (_, p), p0 in zip(names_params, initial)])
    trained = copy.deepcopy(model)
    trained.load_state_dict({k: v.detach().cpu() for k, v in work.state_dict().items()})
    return DPSGDResult(
        update=update.cpu().numpy().astype(np.float32),
        param_names=tuple(n for n, _ in names_params),
        param_shapes=tuple(tuple(p.shape) for _, p in names_params),
        event=event, steps=n_steps, examples=examples, noise_multiplier=z_run,
        sampling_rate=q_run, max_grad_norm=max_grad_norm,
        mean_loss=loss_sum / examples if examples else math.nan, model=trained,
        delta=delta, opacus_epsilon=opacus_eps, noise_generator=source.description,
    )


def _with_keystream_noise(engine, gsm, dp_opt, criterion, dp_loader, loss_fn, mode, seed):
    """Opacus' optimizer (and ghost criterion) rebuilt as the keystream-noise subclass.

    Same arguments as Opacus gave its own, and the accountant's step hook attached as
    ``make_private`` does; the optimizer it built is dropped before any step.
    """
    key = (None if seed is None
           else hashlib.sha256(b"dp.opacus_adapter.noise" + str(seed).encode()).digest())
    cls = (CSPRNGDPOptimizerFastGradientClipping if mode is GradSampleMode.GHOST
           else CSPRNGDPOptimizer)
    if type(dp_opt) not in (DPOptimizer, DPOptimizerFastGradientClipping):  # pragma: no cover
        raise DPConfigError(f"keystream noise needs Opacus' flat-clipping optimizer, got "
                            f"{type(dp_opt).__name__}")
    opt = cls(dp_opt.original_optimizer, noise_multiplier=dp_opt.noise_multiplier,
              max_grad_norm=dp_opt.max_grad_norm, expected_batch_size=dp_opt.expected_batch_size,
              loss_reduction=dp_opt.loss_reduction, keystream=NoiseGenerator(key))
    opt.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=1 / len(dp_loader)))
    if mode is GradSampleMode.GHOST:
        criterion = DPLossFastGradientClipping(gsm, opt, loss_fn, "mean")
    return opt, criterion
