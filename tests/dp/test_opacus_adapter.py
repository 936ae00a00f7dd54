"""DP-SGD through Opacus: the update, the event, the epsilon, the engines, the refusals.

Small MLPs on random data, fixed seeds. The reference values are derived independently: the
one-step update from per-example gradients computed here in a plain loop, Opacus' epsilon from
Opacus' own accountant for the same run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dp.accounting import Accountant, AccountantKind
from dp.errors import DPConfigError
from dp.events import ComposedEvent, GaussianEvent, PoissonSampledEvent, UnitOfPrivacy
from dp.opacus_adapter import DPSGDResult, GradSampleMode, train_dp_sgd


def data(n: int = 256, dim: int = 10, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    return TensorDataset(x, (x[:, 0] + 0.3 * x[:, 1] > 0).long())


def mlp(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))


def flat_params(model: nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()


def run(mode: GradSampleMode = GradSampleMode.HOOKS, **kw) -> DPSGDResult:
    args = dict(epochs=1, batch_size=32, max_grad_norm=1.0, noise_multiplier=1.0, seed=3,
                grad_sample_mode=mode)
    if "steps" in kw:
        args["epochs"] = None
    args.update(kw)
    return train_dp_sgd(mlp(), data(), **args)


@pytest.fixture(scope="module")
def hooks_result() -> DPSGDResult:
    return run(accountant=AccountantKind.RDP, delta=1e-5)


def test_event_and_steps(hooks_result: DPSGDResult) -> None:
    r = hooks_result
    # 256 examples, batch 32: 8 batches per epoch, so q = 1/8 and 8 noisy steps (Opacus' rule).
    assert r.steps == 8 and r.sampling_rate == 0.125 and r.noise_multiplier == 1.0
    assert r.event == ComposedEvent(PoissonSampledEvent(0.125, GaussianEvent(1.0)), 8)
    assert r.unit is UnitOfPrivacy.EXAMPLE
    # Poisson batches: about 8 * 32 = 256 examples in total; sd = sqrt(8*256*q(1-q)) ~ 15.
    assert abs(r.examples - 256) <= 5 * 15


@pytest.mark.parametrize("kind", [AccountantKind.RDP, AccountantKind.PRV])
def test_our_epsilon_matches_opacus_for_the_run(kind: AccountantKind) -> None:
    r = run(accountant=kind, delta=1e-5, epochs=3)
    ours = Accountant(kind)
    ours.compose(r.event)
    assert r.opacus_epsilon is not None
    assert ours.get_epsilon(1e-5) == pytest.approx(r.opacus_epsilon, rel=0.01)


def test_update_is_trained_minus_initial_and_caller_model_untouched() -> None:
    model = mlp()
    before = flat_params(model)
    r = train_dp_sgd(model, data(), epochs=1, batch_size=32, max_grad_norm=1.0,
                     noise_multiplier=1.0, seed=3)
    np.testing.assert_array_equal(flat_params(model), before)  # not trained
    assert not hasattr(model, "_module") and not any(m._forward_hooks for m in model.modules())
    assert all(not hasattr(p, "grad_sample") for p in model.parameters())
    assert type(r.model) is type(model) and not any(m._forward_hooks for m in r.model.modules())
    np.testing.assert_allclose(r.update, flat_params(r.model) - before, atol=1e-6)
    assert r.update.dtype == np.float32 and r.update.size == 10 * 16 + 16 + 16 * 2 + 2
    assert r.param_names == ("0.weight", "0.bias", "2.weight", "2.bias")
    assert r.param_shapes == ((16, 10), (16,), (2, 16), (2,))


@pytest.mark.parametrize("mode", list(GradSampleMode))
def test_one_full_batch_step_is_the_mean_clipped_gradient(mode: GradSampleMode) -> None:
    """With q = 1 (one batch of all 64 examples) and negligible noise, DP-SGD's step is
    -lr * mean_i clip(g_i, C): computed here from per-example gradients in a plain loop."""
    ds = data(64, seed=4)
    lr, clip = 0.5, 0.05  # C small enough that every example is clipped
    model = mlp(2)
    grads = []
    for x, y in zip(*ds.tensors):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[None]), y[None]).backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        grads.append(g * min(1.0, clip / float(g.norm())))
    expected = -lr * torch.stack(grads).mean(0).numpy()
    r = train_dp_sgd(model, ds, steps=1, batch_size=64, lr=lr, max_grad_norm=clip,
                     noise_multiplier=1e-6, grad_sample_mode=mode, seed=5)
    assert r.sampling_rate == 1.0 and r.examples == 64
    np.testing.assert_allclose(r.update, expected, atol=1e-6)


@pytest.mark.parametrize("mode",
                         [GradSampleMode.GHOST, GradSampleMode.FUNCTORCH, GradSampleMode.EW])
def test_every_engine_gives_the_hooks_update(mode: GradSampleMode,
                                             hooks_result: DPSGDResult) -> None:
    """Same seed, same batches, same noise: the per-sample-gradient engine must not matter."""
    r = run(mode)
    assert r.event == hooks_result.event
    np.testing.assert_allclose(r.update, hooks_result.update, atol=1e-6)


def test_batch_memory_manager_splits_but_counts_logical_steps() -> None:
    r = run(steps=5, max_physical_batch_size=8)
    assert r.steps == 5
    assert r.event == ComposedEvent(PoissonSampledEvent(0.125, GaussianEvent(1.0)), 5)
    full = run(steps=5)
    np.testing.assert_allclose(r.update, full.update, atol=1e-6)  # same logical batches


def test_ghost_with_batch_memory_manager_runs() -> None:
    r = run(GradSampleMode.GHOST, steps=4, max_physical_batch_size=8)
    assert r.steps == 4 and np.all(np.isfinite(r.update)) and np.any(r.update != 0)


def test_target_epsilon_is_met_with_our_accountant() -> None:
    r = run(target_epsilon=2.0, noise_multiplier=None, delta=1e-5, epochs=2,
            accountant=AccountantKind.RDP)
    acc = Accountant(AccountantKind.RDP)
    acc.compose(r.event)
    assert r.steps == 16
    assert 0.99 * 2.0 <= acc.get_epsilon(1e-5) <= 2.0


def test_data_loader_input_sets_the_sampling_rate() -> None:
    loader = DataLoader(data(200), batch_size=25)
    r = train_dp_sgd(mlp(), loader, steps=3, max_grad_norm=1.0, noise_multiplier=0.8, seed=1)
    assert r.sampling_rate == 1 / 8 and r.steps == 3


def test_training_reduces_the_loss() -> None:
    ds = data(512, seed=6)
    model = mlp(3)
    r = train_dp_sgd(model, ds, epochs=5, batch_size=64, lr=0.5, max_grad_norm=1.0,
                     noise_multiplier=0.5, seed=7)
    x, y = ds.tensors
    with torch.no_grad():
        before = float(nn.functional.cross_entropy(model(x), y))
        after = float(nn.functional.cross_entropy(r.model(x), y))
    assert after < 0.8 * before


def test_batchnorm_model_is_refused() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    with pytest.raises(DPConfigError, match=r"BatchNorm1d.*GroupNorm"):
        train_dp_sgd(model, data(), epochs=1, batch_size=32, max_grad_norm=1.0,
                     noise_multiplier=1.0)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(epochs=1, steps=2), "exactly one of epochs and steps"),
    (dict(epochs=None), "exactly one of epochs and steps"),
    (dict(noise_multiplier=None), "exactly one of noise_multiplier and target_epsilon"),
    (dict(target_epsilon=1.0), "exactly one of noise_multiplier and target_epsilon"),
    (dict(noise_multiplier=None, target_epsilon=1.0), "needs delta"),
    (dict(noise_multiplier=0.0), "noise_multiplier"),
    (dict(noise_multiplier=-1.0), "noise_multiplier"),
    (dict(max_grad_norm=0.0), "max_grad_norm"),
    (dict(delta=1.0), "delta"),
    (dict(grad_sample_mode="bogus"), "grad_sample_mode"),
    (dict(accountant="bogus"), "accountant"),
    (dict(batch_size=None), "batch_size"),
    (dict(loss_fn=nn.CrossEntropyLoss(reduction="sum")), "reduction"),
    (dict(max_physical_batch_size=0), "max_physical_batch_size"),
])
def test_bad_parameters_are_typed_errors(kwargs: dict, match: str) -> None:
    args = dict(epochs=1, batch_size=32, max_grad_norm=1.0, noise_multiplier=1.0)
    args.update(kwargs)
    with pytest.raises(DPConfigError, match=match):
        train_dp_sgd(mlp(), data(), **args)


def test_event_epsilon_is_monotone_in_steps() -> None:
    short, long = run(steps=2), run(steps=6)
    eps = []
    for r in (short, long):
        acc = Accountant(AccountantKind.RDP)
        acc.compose(r.event)
        eps.append(acc.get_epsilon(1e-5))
    assert eps[0] < eps[1] and not math.isnan(eps[0])


# --- issue 12: CSPRNG noise, and the charged sampling rate ------------------------------------

def test_default_noise_is_the_keystream_sum_of_four() -> None:
    """With clipping at ~0 the update is -lr * noise / B: it must be exactly our keystream's."""
    import hashlib

    from dp.noise import SECURE_GAUSSIAN_NAME, NoiseGenerator, secure_gaussian

    model = nn.Linear(10, 2)
    r = train_dp_sgd(model, data(64), steps=1, batch_size=64, max_grad_norm=1e-12,
                     noise_multiplier=1e12, lr=1.0, seed=5, accountant="rdp")
    assert r.noise_generator == SECURE_GAUSSIAN_NAME
    gen = NoiseGenerator(hashlib.sha256(b"dp.opacus_adapter.noise" + b"5").digest())
    expected = np.concatenate([secure_gaussian(p.numel(), 1.0, gen=gen)
                               for p in model.parameters()])
    noise = -r.update * 64  # expected batch 64, lr 1, std = z * C = 1
    assert np.allclose(noise, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", [GradSampleMode.HOOKS, GradSampleMode.GHOST])
def test_csprng_and_torch_noise_differ_and_csprng_is_reproducible(mode: GradSampleMode) -> None:
    a = run(mode, steps=2)
    assert np.array_equal(a.update, run(mode, steps=2).update)
    t = run(mode, steps=2, noise="torch")
    assert not np.allclose(a.update, t.update)
    assert "torch.normal" in t.noise_generator and a.steps == t.steps == 2


def test_bad_noise_source_is_a_typed_error() -> None:
    with pytest.raises(DPConfigError, match="'mt19937'"):
        run(steps=1, noise="mt19937")


@pytest.mark.parametrize("batches", [93, 99, 105, 117, 123, 186])
def test_charged_rate_is_what_the_plan_uses(batches: int) -> None:
    """Opacus accounts 1/(L-1) for these L; calibrating for 1/L overspent the target."""
    from dp.calibration import dp_sgd_sampling_rate

    q = dp_sgd_sampling_rate(num_examples=batches, batch_size=1)
    assert q == 1.0 / (batches - 1)
    r = train_dp_sgd(nn.Linear(10, 2), data(batches), steps=3, batch_size=1, max_grad_norm=1.0,
                     target_epsilon=0.5, delta=1e-5, accountant="rdp", seed=0)
    assert r.sampling_rate == q
    acc = Accountant(AccountantKind.RDP)
    acc.compose(r.event)
    assert acc.get_epsilon(1e-5) <= 0.5
