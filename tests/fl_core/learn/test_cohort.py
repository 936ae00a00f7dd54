"""The vectorized cohort trainer: same gradients, noise, sampling, events and runs as the Opacus path.

Independent references used below: Opacus itself (``GradSampleModule`` + ``DPOptimizer`` for
clipped sums; ``fl_core.learn.client.local_train``, i.e. ``dp.opacus_adapter``, for whole trainings),
a per-example loop with plain autograd, the closed-form softmax-regression gradient in numpy, and
distributional facts (chi-square, binomial) with bounds stated where they are used.
"""

import copy
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from dp.accounting import Accountant, AccountantKind
from dp.events import UnitOfPrivacy
from fl_core.learn.client import SampleDP, local_train
from fl_core.learn.cohort import (Backend, UnsupportedLayerError, check_model, clipped_grad_sum, plan_client,
                                  train_cohort)
from fl_core.learn.per_example import make_twin
from fl_core.config import config_from_dict, dump_config, load_config
from fl_core.errors import ConfigFieldError
from fl_core.learn.models import build_model

DP = SampleDP(max_grad_norm=1.0, noise_multiplier=1.0)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models train faster on one thread, above all on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gens(n, base=100):
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


def client_data(sizes, shape=(64,), seed=0, classes=10):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)) for n in sizes]


class SeqMLP(nn.Module):
    """A Linear applied along a sequence axis (per-example input (1, 4, 2)): not tapped, so its
    per-example gradients come from vmap(grad) directly."""

    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Unflatten(1, (4, 2)), nn.Linear(2, 3), nn.Tanh(), nn.Flatten())
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        return self.head(self.seq(x))


class Shared(nn.Module):
    """One Linear called twice per example: its per-example gradient is a sum of two outer
    products, so the norm identity does not apply and it must not be tapped."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


def naive_clipped_sum(model, x, y, c):
    """Per-example loop with plain autograd and Opacus' clip factor min(1, C / (norm + 1e-6))."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for i in range(len(y)):
        g = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), params)
        norm = torch.sqrt(sum((v.double() ** 2).sum() for v in g))
        f = min(1.0, c / (float(norm) + 1e-6))
        total = [t + f * v.double() for t, v in zip(total, g)]
    return total


def opacus_clipped_sum(model, x, y, c):
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    gsm = GradSampleModule(copy.deepcopy(model))
    opt = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.1), noise_multiplier=0.0, max_grad_norm=c,
                      expected_batch_size=len(y))
    F.cross_entropy(gsm(x), y).backward()
    opt.clip_and_accumulate()
    return [p.summed_grad for p in gsm.parameters() if p.requires_grad]


MODELS = {
    "mlp": (lambda: build_model("mlp", in_features=64, seed=1), (64,)),
    "cnn28": (lambda: build_model("cnn28", seed=1), (1, 28, 28)),
    "conv1d": (lambda: build_model("conv1d", in_features=40, seed=1), (40,)),
    "seq": (lambda: torch.manual_seed(1) and SeqMLP(), (8,)),
    "shared": (lambda: torch.manual_seed(1) and Shared(), (6,)),
}


# --------------------------------------------------------------------------- clipped gradient sums


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("clip", [0.05, 1e6])
def test_clipped_sum_matches_a_per_example_loop(name, clip):
    # clip = 0.05 clips every example (their gradient norms are ~0.5-5); 1e6 clips none, so the
    # sum is the plain gradient of the summed loss.
    make, shape = MODELS[name]
    model = make()
    x, y = client_data([5 if name == "cnn28" else 9], shape=shape, seed=3, classes=3 if name == "shared" else 5)[0]
    ours = clipped_grad_sum(model, x, y, max_grad_norm=clip)
    ref = naive_clipped_sum(model, x, y, clip)
    for (n, p), r in zip(((n, p) for n, p in model.named_parameters()), ref):
        torch.testing.assert_close(ours[n].double(), r, rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("name", ["mlp", "cnn28", "conv1d", "seq"])
def test_clipped_sum_matches_opacus_on_the_same_batch(name):
    make, shape = MODELS[name]
    model = make()
    x, y = client_data([13], shape=shape, seed=4, classes=5)[0]
    ours = clipped_grad_sum(model, x, y, max_grad_norm=0.3)
    ref = opacus_clipped_sum(model, x, y, 0.3)
    for (n, _), r in zip(model.named_parameters(), ref):
        torch.testing.assert_close(ours[n], r, rtol=1e-4, atol=1e-6, msg=n)


def test_softmax_regression_known_answer():
    # For logits W x + b and cross-entropy, one example's gradient is (p - e_y) x^T for W and
    # (p - e_y) for b, p = softmax(W x + b). Computed here in float64 numpy, clipped with Opacus'
    # factor min(1, C / (norm + 1e-6)) and summed; the model's Linear takes the tapped path.
    rng = np.random.default_rng(7)
    W, b = rng.normal(size=(3, 4)), rng.normal(size=3)
    x, y = rng.normal(size=(6, 4)), rng.integers(0, 3, size=6)
    logits = x @ W.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    r = p - np.eye(3)[y]
    gw, gb = r[:, :, None] * x[:, None, :], r
    norms = np.sqrt((gw ** 2).sum((1, 2)) + (gb ** 2).sum(1))
    f = np.minimum(1.0, 0.8 / (norms + 1e-6))
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(W))
        model.bias.copy_(torch.tensor(b))
    ours = clipped_grad_sum(model, torch.tensor(x, dtype=torch.float32), torch.tensor(y), max_grad_norm=0.8)
    np.testing.assert_allclose(ours["weight"].numpy(), (f[:, None, None] * gw).sum(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours["bias"].numpy(), (f[:, None] * gb).sum(0), rtol=1e-5, atol=1e-6)
    assert (f < 1).any()  # the clip was exercised


def test_only_single_call_vector_input_linears_are_tapped():
    for name, expected in (("mlp", {"body.1", "head"}), ("seq", {"head"}), ("shared", {"head"}),
                           ("cnn28", {"body.7", "head"})):
        make, shape = MODELS[name]
        model = make()
        twin = make_twin(model, torch.device("cpu"), torch.randn(3, *shape))
        assert set(twin.taps) == expected, name


@settings(max_examples=25, deadline=None)
@given(k=st.sampled_from([1, 2, 3, 5]), stride=st.sampled_from([1, 2]), pad=st.sampled_from([0, 1, 2, "same"]),
       dilation=st.sampled_from([1, 2]), groups=st.sampled_from([1, 2]),
       mode=st.sampled_from(["zeros", "reflect", "circular"]), one_d=st.booleans(), seed=st.integers(0, 99))
def test_im2col_convolution_equals_torch(k, stride, pad, dilation, groups, mode, one_d, seed):
    if pad == "same" and stride != 1:
        return  # torch refuses padding='same' with stride > 1
    torch.manual_seed(seed)
    cls, shape = (nn.Conv1d, (2, 4, 17)) if one_d else (nn.Conv2d, (2, 4, 13, 11))
    conv = cls(4, 6, k, stride=stride, padding=pad, dilation=dilation, groups=groups, padding_mode=mode)
    x = torch.randn(*shape)
    try:
        ref = conv(x)
    except RuntimeError:
        return  # a kernel larger than the (padded) input: torch refuses it too
    twin = make_twin(nn.Sequential(conv), torch.device("cpu"), None)
    torch.testing.assert_close(twin.module(x), ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- whole trainings


@pytest.mark.parametrize("opt,momentum", [("sgd", 0.9), ("adam", 0.0)])  # plain SGD: the CNN test below
def test_dp_training_reproduces_the_opacus_path(opt, momentum):
    # Same per-client generators: same Poisson batches and noise as dp.opacus_adapter, so the
    # updates agree to float precision. Sizes 5 (< batch: q = 1), 23 and 64 give 1, 2 and 4 steps
    # per epoch and expected batches 5, 11, 16 (int(n q), Opacus' divisor).
    sizes = (5, 23, 64)
    data = client_data(sizes)
    model = build_model("mlp", in_features=64, seed=0)
    ref = [local_train(copy.deepcopy(model), d, epochs=2, batch_size=16, optimizer=opt, momentum=momentum, lr=0.05,
                       dp=DP, generator=g) for d, g in zip(data, gens(3))]
    res = train_cohort(model, data, epochs=2, batch_size=16, optimizer=opt, momentum=momentum, lr=0.05, dp=DP,
                       generators=gens(3))
    for a, b, n in zip(ref, res.results, sizes):
        np.testing.assert_allclose(b.update, a.update, atol=2e-6)
        assert b.num_steps == a.num_steps == 2 * math.ceil(n / 16)
        assert b.event == a.event  # so every accountant gives the same epsilon
        assert b.loss == pytest.approx(a.loss, rel=1e-5)
        for kind in (AccountantKind.RDP, AccountantKind.PRV):
            ea, eb = Accountant(kind, unit=UnitOfPrivacy.EXAMPLE), Accountant(kind, unit=UnitOfPrivacy.EXAMPLE)
            ea.compose(a.event)
            eb.compose(b.event)
            assert eb.get_epsilon(1e-5) == ea.get_epsilon(1e-5)
    assert [p.expected_batch for p in (plan_client(n, batch_size=16, epochs=2, steps=None, dp=True) for n in sizes)] \
        == [5, 11, 16]


def test_dp_training_of_a_cnn_reproduces_the_opacus_path():
    data = client_data((20, 33), shape=(1, 28, 28))
    model = build_model("cnn28", seed=0)
    ref = [local_train(copy.deepcopy(model), d, steps=2, batch_size=16, lr=0.05, dp=DP, generator=g)
           for d, g in zip(data, gens(2))]
    res = train_cohort(model, data, steps=2, batch_size=16, lr=0.05, dp=DP, generators=gens(2))
    for a, b in zip(ref, res.results):
        np.testing.assert_allclose(b.update, a.update, atol=2e-6)
        assert b.event == a.event


@pytest.mark.parametrize("opt,momentum,prox", [("sgd", 0.0, 0.0), ("sgd", 0.9, 0.5), ("adam", 0.0, 0.0)])
def test_plain_training_reproduces_local_train(opt, momentum, prox):
    # Same generator: same shuffles; the last minibatch of an epoch is smaller (masked).
    data = client_data((7, 30, 45))
    model = build_model("mlp", in_features=64, seed=2)
    ref = [local_train(copy.deepcopy(model), d, epochs=2, batch_size=8, optimizer=opt, momentum=momentum, lr=0.1,
                       prox_mu=prox, generator=g) for d, g in zip(data, gens(3))]
    res = train_cohort(model, data, epochs=2, batch_size=8, optimizer=opt, momentum=momentum, lr=0.1, prox_mu=prox,
                       generators=gens(3))
    for a, b in zip(ref, res.results):
        np.testing.assert_allclose(b.update, a.update, atol=2e-6)
        assert (b.num_steps, b.num_examples, b.event) == (a.num_steps, a.num_examples, None)
        assert b.loss == pytest.approx(a.loss, rel=1e-5)


def test_personal_layers_start_per_client_and_stay_out_of_the_update():
    data = client_data((12, 20))
    model = build_model("mlp", in_features=64, seed=3)
    own = [{"head.weight": torch.full((10, 64), 0.01 * (i + 1)), "head.bias": torch.zeros(10)} for i in range(2)]
    ref_models = [copy.deepcopy(model) for _ in range(2)]
    for m, o in zip(ref_models, own):
        m.load_state_dict({**m.state_dict(), **o})
    ref = [local_train(m, d, steps=3, batch_size=8, exclude=("head",), generator=g)
           for m, d, g in zip(ref_models, data, gens(2))]
    res = train_cohort(model, data, steps=3, batch_size=8, exclude=("head",), generators=gens(2), start=own)
    for i, (a, b) in enumerate(zip(ref, res.results)):
        assert b.update.shape == (64 * 64 + 64,)  # the body only
        np.testing.assert_allclose(b.update, a.update, atol=2e-6)
        torch.testing.assert_close(res.personal[i]["head.weight"], ref_models[i].head.weight.detach(), atol=2e-6,
                                   rtol=0)


class PairDataset(torch.utils.data.Dataset):
    """A map-style dataset that is not a TensorDataset (the reference path uses a DataLoader)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_any_map_style_dataset_is_accepted():
    (x, y), = client_data((11,))
    model = build_model("mlp", in_features=64, seed=0)
    ref = local_train(copy.deepcopy(model), PairDataset(x, y), steps=3, batch_size=4, dp=DP, generator=gens(1)[0])
    res = train_cohort(model, [PairDataset(x, y)], steps=3, batch_size=4, dp=DP, generators=gens(1))
    np.testing.assert_allclose(res.results[0].update, ref.update, atol=2e-6)


def test_the_model_passed_in_is_not_changed():
    model = build_model("mlp", in_features=64, seed=0)
    before = copy.deepcopy(model.state_dict())
    train_cohort(model, client_data((10, 10)), steps=2, batch_size=4, dp=DP, generators=gens(2))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


# --------------------------------------------------------------------------- masking, chunking


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 40), min_size=2, max_size=5), epochs=st.integers(1, 2), dp=st.booleans())
def test_a_client_trains_the_same_whatever_its_cohort(sizes, epochs, dp):
    # Clients of different sizes take different numbers of steps (epochs * ceil(n / 8)) and draw
    # different batch sizes; each must end exactly where it ends when trained alone: the others'
    # padding, masks and early finish change nothing.
    data = client_data(sizes, shape=(8,), seed=len(sizes), classes=3)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    kw = dict(epochs=epochs, batch_size=8, dp=DP if dp else None)
    together = train_cohort(model, data, generators=gens(len(sizes)), **kw).results
    for i, d in enumerate(data):
        alone = train_cohort(model, [d], generators=gens(1, base=100 + i), **kw).results[0]
        np.testing.assert_allclose(together[i].update, alone.update, atol=1e-6)
        assert together[i].num_steps == alone.num_steps == epochs * math.ceil(sizes[i] / 8)
        assert together[i].event == alone.event


def test_clients_with_fewer_steps_stop_and_others_are_unaffected():
    # epochs = 1 with batch 4: sizes 4, 9, 17 take 1, 3, 5 steps; each must equal its own solo run.
    data = client_data((4, 9, 17), shape=(8,), classes=3)
    model = nn.Sequential(nn.Linear(8, 3))
    together = train_cohort(model, data, epochs=1, batch_size=4, dp=DP, optimizer="adam", lr=0.01,
                            generators=gens(3)).results
    for i, d in enumerate(data):
        solo = train_cohort(model, [d], epochs=1, batch_size=4, dp=DP, optimizer="adam", lr=0.01,
                            generators=gens(1, base=100 + i)).results[0]
        assert together[i].num_steps == solo.num_steps == [1, 3, 5][i]
        np.testing.assert_allclose(together[i].update, solo.update, atol=1e-7)


def test_chunking_does_not_change_results():
    data = client_data((5, 12, 30, 8, 19))
    model = build_model("mlp", in_features=64, seed=0)
    one = train_cohort(model, data, steps=3, batch_size=8, dp=DP, generators=gens(5), chunk_size=5)
    many = train_cohort(model, data, steps=3, batch_size=8, dp=DP, generators=gens(5), chunk_size=2)
    tiny = train_cohort(model, data, steps=3, batch_size=8, dp=DP, generators=gens(5), memory_budget=1)
    assert (one.chunks, many.chunks, many.chunk_size, tiny.chunk_size, tiny.chunks) == (1, 3, 2, 1, 5)
    for a, b, c in zip(one.results, many.results, tiny.results):
        np.testing.assert_allclose(b.update, a.update, atol=1e-7)
        np.testing.assert_allclose(c.update, a.update, atol=1e-7)


def test_a_thousand_digits_clients_fit_in_automatic_chunks():
    # K = 1000 with the digits MLP: the default 1 GiB budget takes them in one chunk or a few,
    # and every client trains (the memory target, at a size that keeps the test fast).
    data = client_data([8] * 1000, seed=5)
    res = train_cohort(build_model("mlp", in_features=64, hidden=16, seed=0), data, steps=1, batch_size=8, dp=DP,
                       generators=gens(1000))
    assert len(res.results) == 1000 and res.chunks >= 1
    assert all(np.isfinite(r.update).all() and r.num_steps == 1 for r in res.results)


# --------------------------------------------------------------------------- randomness


def zero_loss(out, y):
    return (out * 0).sum()  # every per-example gradient is exactly 0: the step is noise only


def test_noise_has_std_z_c_over_the_expected_batch():
    # With zero gradients and one SGD step at lr 1 the update is -N(0, (zC)^2 I) / E, E = int(n q)
    # per client (Opacus' divisor): sizes 10, 64, 100 with batch 32 give E = 10, 32, 25.
    # Estimate each coordinate's noise as -update * E and compare its variance with (zC)^2:
    # over n = 4810 coordinates per client the ratio has sd sqrt(2/n) = 0.020, so |ratio - 1| < 0.1
    # is a 5-sigma bound; pooled over 3 clients (sd 0.012), < 0.06. Means: |mean| < 5 sigma/sqrt(n).
    # Fixed generators make the test deterministic.
    z, c = 1.3, 0.7
    sizes = (10, 64, 100)
    res = train_cohort(build_model("mlp", in_features=64, seed=0), client_data(sizes), steps=1, batch_size=32, lr=1.0,
                       loss_fn=zero_loss, dp=SampleDP(max_grad_norm=c, noise_multiplier=z), generators=gens(3))
    est = []
    for r, e in zip(res.results, (10, 32, 25)):
        noise = -r.update.astype(np.float64) * e
        assert abs(noise.var() / (z * c) ** 2 - 1) < 0.1
        assert abs(noise.mean()) < 5 * z * c / math.sqrt(len(noise))
        est.append(noise)
    pooled = np.concatenate(est)
    assert abs((pooled ** 2).mean() / (z * c) ** 2 - 1) < 0.06
    # independent across clients: |corr| < 5 / sqrt(4810) = 0.072 (5-sigma under independence)
    for i in range(3):
        for j in range(i):
            assert abs(np.corrcoef(est[i], est[j])[0, 1]) < 0.072


def test_noise_is_fresh_without_generators_and_repeats_with_them():
    data = client_data((16, 16))
    model = build_model("mlp", in_features=64, seed=0)
    kw = dict(steps=1, batch_size=8, dp=DP)
    a, b = (train_cohort(model, data, **kw).results for _ in range(2))
    assert not np.allclose(a[0].update, b[0].update)  # seeds from os.urandom differ
    c, d = (train_cohort(model, data, generators=gens(2), **kw).results for _ in range(2))
    np.testing.assert_array_equal(c[0].update, d[0].update)
    assert not np.allclose(c[0].update, c[1].update)  # each client its own stream


def test_poisson_sampling_rate_and_unbounded_batches():
    # n = 50, batch 10: q = 0.2 per example and step. Over 400 steps a client draws
    # Binomial(20000, 0.2) examples: mean 4000, sd 56.6; 5 sd = 283. A client with n <= batch has
    # q = 1 and draws every example every step (rand in [0, 1) < 1): exactly 7 * 400.
    data = client_data((50, 50, 7), shape=(4,), classes=2)
    model = nn.Linear(4, 2)
    res = train_cohort(model, data, steps=400, batch_size=10, dp=DP, generators=gens(3))
    for drawn in res.sampled_examples[:2]:
        assert abs(drawn - 4000) < 283
    assert res.sampled_examples[2] == 7 * 400
    assert [r.event.event.sampling_rate for r in res.results] == [0.2, 0.2, 1.0]


def test_plan_follows_opacus_rules():
    p = plan_client(100, batch_size=32, epochs=3, steps=None, dp=True)
    # ceil(100/32) = 4 batches per epoch, q = 1/4, E = int(100 * 0.25) = 25, 3 epochs = 12 steps
    assert (p.batches_per_epoch, p.sampling_rate, p.expected_batch, p.steps) == (4, 0.25, 25, 12)
    assert plan_client(49, batch_size=1, epochs=1, steps=None, dp=True).expected_batch == 1  # 49 * (1/49) < 1
    assert plan_client(10, batch_size=4, epochs=None, steps=7, dp=False).steps == 7


# --------------------------------------------------------------------------- refused models


class MixesBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 3)

    def forward(self, x):
        return self.lin(x - x.mean(0, keepdim=True))  # centring over the batch: not per example


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.ones(8))

    def forward(self, x):
        return x * self.s


@pytest.mark.parametrize("dp", [True, False])
def test_batchnorm_is_refused_naming_the_layer(dp):
    model = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    with pytest.raises(UnsupportedLayerError, match=r"'1' \(BatchNorm1d\)") as e:
        train_cohort(model, client_data((8,), shape=(8,), classes=3), steps=1, batch_size=4, dp=DP if dp else None)
    assert e.value.layer == "1" and e.value.layer_type == "BatchNorm1d"
    assert ("mixes the examples" in str(e.value)) == dp


@pytest.mark.parametrize("layer,name", [(nn.LSTM(8, 3, batch_first=True), "LSTM"), (nn.Dropout(0.1), "Dropout"),
                                        (nn.InstanceNorm1d(8, track_running_stats=True), "InstanceNorm1d"),
                                        (Scale(), "Scale")])
def test_layers_without_a_verified_rule_are_refused(layer, name):
    model = nn.Sequential(nn.Linear(8, 8), layer)
    with pytest.raises(UnsupportedLayerError, match=rf"'1' \({name}\)"):
        check_model(model, dp=True)


def test_allow_accepts_a_vouched_layer_and_the_probe_still_checks_it():
    model = nn.Sequential(Scale(), nn.Linear(8, 3))
    with pytest.raises(UnsupportedLayerError):
        check_model(model, dp=True)
    res = train_cohort(model, client_data((6,), shape=(8,), classes=3), steps=1, batch_size=4, dp=DP,
                       allow=(Scale,), generators=gens(1))
    ref = local_train(copy.deepcopy(model), client_data((6,), shape=(8,), classes=3)[0], steps=1, batch_size=4,
                      dp=SampleDP(max_grad_norm=1.0, noise_multiplier=1.0, grad_sample_mode="functorch"),
                      generator=gens(1)[0])  # Opacus' hooks have no rule for Scale; its functorch mode does
    np.testing.assert_allclose(res.results[0].update, ref.update, atol=1e-6)


def test_a_forward_that_mixes_examples_is_refused():
    with pytest.raises(UnsupportedLayerError, match="mixes the examples"):
        train_cohort(MixesBatch(), client_data((8,), shape=(8,), classes=3), steps=1, batch_size=4, dp=DP)


@pytest.mark.parametrize("kwargs,field", [
    (dict(dp=SampleDP(max_grad_norm=1.0, noise_multiplier=0.0)), "dp.noise_multiplier"),
    (dict(dp=SampleDP(max_grad_norm=-1.0, noise_multiplier=1.0)), "dp.max_grad_norm"),
    (dict(generators=gens(3)), "generators"),
    (dict(start=[None]), "start"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(start=[{"head.weight": torch.zeros(2, 2)}, None]), "start[0]"),
    (dict(lr=-1.0), "lr"),
])
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ConfigFieldError) as e:
        train_cohort(build_model("mlp", in_features=64, seed=0), client_data((4, 4)), steps=1, batch_size=4,
                     **kwargs)
    assert field in e.value.fields


def test_empty_or_mismatched_datasets_are_refused():
    model = build_model("mlp", in_features=64, seed=0)
    with pytest.raises(ConfigFieldError, match="datasets"):
        train_cohort(model, [], steps=1)
    with pytest.raises(ConfigFieldError, match=r"datasets\[1\]"):
        train_cohort(model, [client_data((4,))[0], (torch.zeros(0, 64), torch.zeros(0, dtype=torch.long))], steps=1)


# --------------------------------------------------------------------------- runs and config

BASE = {"rounds": 2, "clients_per_round": 6, "secure_randomness": False, "seed": 3,
        "data": {"num_clients": 12}, "model": {"hidden": 16},
        "local": {"epochs": 1, "lr": 0.1, "batch_size": 16, "momentum": 0.0}}


def run_cfg(tmp_path, backend, mode, **over):
    from fl_core.run.loop import run

    d = json.loads(json.dumps(BASE))
    d["local"]["backend"] = backend
    d["dp"] = {"mode": mode, "noise_multiplier": 1.0} if mode == "sample" else {"mode": mode}
    d.update(over)
    out = tmp_path / f"{mode}-{backend}"
    s = run(config_from_dict(d), out, progress=False, log=lambda m: None)
    return s, out


@pytest.mark.parametrize("mode", ["sample", "client", "none"])
def test_a_seeded_run_is_the_same_with_either_backend(tmp_path, mode):
    # The cohort reproduces the per-client generators' draws, so the whole run agrees with the
    # reference: same epsilon (same events), same accuracy, models equal to float precision.
    # (sample mode: few clients, since the report's PRV epsilon per client costs seconds each)
    small = dict(rounds=1, clients_per_round=3, data={"num_clients": 6}, secagg={"min_survivors": 1.0}) \
        if mode == "sample" else {}
    a, da = run_cfg(tmp_path, "opacus", mode, **small)
    b, db = run_cfg(tmp_path, "cohort", mode, **small)
    assert b.epsilon == a.epsilon
    assert b.final_accuracy == a.final_accuracy
    ma, mb = torch.load(da / "model.pt"), torch.load(db / "model.pt")
    for k in ma:
        torch.testing.assert_close(mb[k], ma[k], atol=1e-5, rtol=0)
    pa, pb = (json.loads((d / "privacy.json").read_text()) for d in (da, db))
    assert pa["local_training"]["backend"] == "opacus" and pb["local_training"]["backend"] == "cohort"
    if mode == "sample":
        assert pb["mechanisms"][0]["epsilon_per_client"] == pa["mechanisms"][0]["epsilon_per_client"]
        assert "seeded from (run seed, round, client)" in pb["local_training"]["dp_sgd_noise_generator"]
        # both backends draw the noise from the same keystream construction (the models agree above)
        assert pa["local_training"]["dp_sgd_noise_generator"] == pb["local_training"]["dp_sgd_noise_generator"]
        assert "AES-256-CTR keystream" in pb["local_training"]["dp_sgd_noise_generator"]


def test_production_run_records_the_csprng_seeded_generator(tmp_path):
    s, out = run_cfg(tmp_path, "cohort", "sample", secure_randomness=True, rounds=1, clients_per_round=3,
                     data={"num_clients": 6}, secagg={"min_survivors": 1.0})
    rec = json.loads((out / "privacy.json").read_text())
    assert "os.urandom" in rec["local_training"]["dp_sgd_noise_generator"]
    assert "fl_core.learn.cohort" in rec["mechanisms"][0]["name"]
    assert s.epsilon > 0


def test_config_backend_field(tmp_path):
    d = json.loads(json.dumps(BASE))
    assert config_from_dict(d).local.backend is Backend.OPACUS  # the reference stays the default
    d["local"]["backend"] = "cohort"
    cfg = config_from_dict(d)
    assert cfg.local.backend is Backend.COHORT
    (tmp_path / "c.toml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "c.toml") == cfg
    d["local"]["backend"] = "vmap"
    with pytest.raises(ConfigFieldError) as e:
        config_from_dict(d)
    assert e.value.fields == ["local.backend"] and "'vmap'" in str(e.value)


def test_cli_backend_override(tmp_path):
    from fl_core.cli import main

    d = json.loads(json.dumps(BASE))
    d["dp"] = {"mode": "none"}
    d["rounds"] = 1
    cfg = config_from_dict(d)
    (tmp_path / "c.toml").write_text(dump_config(cfg))
    assert main(["run", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "o"), "--no-progress",
                 "--backend", "cohort"]) == 0
    assert json.loads((tmp_path / "o" / "privacy.json").read_text())["local_training"]["backend"] == "cohort"


def test_bench_cli_writes_its_results(tmp_path):
    from fl_core.tools.bench import main

    path = tmp_path / "b.json"
    assert main(["cohort", "--clients", "3", "--batch", "4", "--json", str(path), "--model", "mlp", "--steps", "2",
                 "--threads", "1"]) == 0
    out = json.loads(path.read_text())
    assert out["clients"] == 3 and out["batch"] == 4 and out["torch_threads"] == 1
    assert out["cohort"]["examples"] == out["opacus_client_after_client"]["examples"] > 0  # same batches
    assert out["max_update_difference"] < 1e-5 and out["speedup"] > 0


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    data = client_data((20, 33), shape=(1, 28, 28))
    model = build_model("cnn28", seed=0)
    # Poisson masks come from CPU generators on both; the noise comes from a CUDA generator, so
    # compare noise-free (tiny z) updates.
    dp = SampleDP(max_grad_norm=1.0, noise_multiplier=1e-12)
    cpu = train_cohort(model, data, steps=2, batch_size=16, dp=dp, generators=gens(2))
    gpu = train_cohort(model, data, steps=2, batch_size=16, dp=dp, generators=gens(2), device="cuda")
    for a, b in zip(cpu.results, gpu.results):
        np.testing.assert_allclose(b.update, a.update, atol=1e-5)


@pytest.mark.slow
def test_backends_agree_within_noise_over_seeds(tmp_path):
    # Production randomness (fresh noise): accuracy and epsilon of both backends over 3 seeds on a
    # sample-level DP-SGD run. Epsilon is a function of the events only, so it is equal; the
    # accuracies differ by the noise, so their means must be within 0.1 (the observed spread of
    # one backend across seeds is ~0.05).
    accs, eps = {}, {}
    for backend in ("opacus", "cohort"):
        for seed in (0, 1, 2):
            s, _ = run_cfg(tmp_path / str(seed), backend, "sample", secure_randomness=True, seed=seed, rounds=8,
                           clients_per_round=8, model={"hidden": 32},
                           local={"epochs": 2, "lr": 0.2, "batch_size": 16, "momentum": 0.0, "backend": backend})
            accs.setdefault(backend, []).append(s.final_accuracy)
            eps.setdefault(backend, []).append(s.epsilon)
    assert eps["opacus"] == eps["cohort"]
    assert abs(np.mean(accs["opacus"]) - np.mean(accs["cohort"])) < 0.1


def test_probe_picks_the_faster_path_and_caches_it(monkeypatch):
    from fl_core.learn import probe as pr

    model = build_model("mlp", in_features=8, seed=0)
    data = (torch.randn(20, 8), torch.randint(0, 10, (20,)))
    calls = []
    real_cohort, real_local = pr.train_cohort, pr.local_train

    def slow_cohort(*a, **k):  # make the vectorized path lose: the cohort path must not take it
        calls.append("cohort")
        import time
        time.sleep(0.2)
        return real_cohort(*a, **k)

    monkeypatch.setattr(pr, "train_cohort", slow_cohort)
    p = pr.pick_backend(model, data, clients=4, batch_size=4, dp=None, refresh=True)
    assert p.backend is Backend.OPACUS and p.opacus_samples_per_s > p.cohort_samples_per_s > 0
    n = len(calls)
    assert pr.pick_backend(model, data, clients=4, batch_size=4, dp=None) is p and len(calls) == n  # cached
    monkeypatch.setattr(pr, "train_cohort", real_cohort)

    def slow_local(*a, **k):
        import time
        time.sleep(0.2)
        return real_local(*a, **k)

    monkeypatch.setattr(pr, "local_train", slow_local)
    assert pr.pick_backend(model, data, clients=4, batch_size=4, dp=None, refresh=True).backend is Backend.COHORT


def test_run_with_the_cohort_backend_trains_with_the_probes_pick(tmp_path, monkeypatch):
    from fl_core.learn import probe as pr
    from fl_core.run.loop import run

    picked = []
    real = pr.pick_backend

    def spy(*a, **k):
        p = real(*a, **k)
        picked.append(p.backend.value)
        return p

    monkeypatch.setattr(pr, "pick_backend", spy)
    d = json.loads(json.dumps(BASE))
    d["dp"] = {"mode": "none"}
    d["rounds"] = 1
    d.setdefault("local", {})["backend"] = "cohort"
    run(config_from_dict(d), tmp_path, progress=False, log=lambda m: None)
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert picked and [r["backend"] for r in rows] == picked[:1]


@pytest.mark.parametrize("cohort_loses", [True, False])
def test_probe_picks_opacus_for_the_cnn_whenever_the_cohort_loses(monkeypatch, cohort_loses):
    """The CNN on a CPU can lose batched (benchmarks/results/cohort_cpu_cnn28_k64_b32.json): the
    probe must then pick Opacus, so the cohort path is never slower; the probe's own rates decide."""
    import time
    from fl_core.learn import probe as pr

    model = build_model("cnn28", hidden=8, seed=0)
    data = (torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,)))
    slow_name = "train_cohort" if cohort_loses else "local_train"
    real = getattr(pr, slow_name)

    def slow(*a, **k):  # one cohort call trains 16 clients, one local_train call one client
        time.sleep(0.8 if cohort_loses else 0.3)
        return real(*a, **k)

    monkeypatch.setattr(pr, slow_name, slow)
    p = pr.pick_backend(model, data, clients=64, batch_size=4, dp=DP, refresh=True)
    faster = Backend.OPACUS if p.opacus_samples_per_s > p.cohort_samples_per_s else Backend.COHORT
    assert p.backend is faster is (Backend.OPACUS if cohort_loses else Backend.COHORT)
    assert p.clients_timed == pr.PROBE_CLIENTS
