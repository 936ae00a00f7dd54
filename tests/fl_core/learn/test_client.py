import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from dp.accounting import AccountantKind
from fl_core.learn.client import OptimizerName, SampleDP, evaluate, local_train
from fl_core.config import GradSampleMode  # the config's enums are accepted too
from fl_core.learn.data import load_federated
from fl_core.errors import ConfigFieldError
from fl_core.learn.models import build_model
from fl_core.learn.params import model_to_vector


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models train many times faster on one thread, above all on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits():
    return load_federated("digits", num_clients=5, rng=np.random.default_rng(0))


def test_one_sgd_step_known_answer():
    # Linear 2 -> 2 with zero weights, one example x = (1, 0), label 0. Logits are 0, softmax
    # p = (1/2, 1/2); the cross-entropy gradient is (p - e_0) x^T = [[-1/2, 0], [1/2, 0]].
    # One SGD step with lr 1 gives W = [[1/2, 0], [-1/2, 0]], which is also the update.
    m = nn.Linear(2, 2, bias=False)
    nn.init.zeros_(m.weight)
    data = (torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    res = local_train(m, data, steps=1, lr=1.0, batch_size=1)
    np.testing.assert_allclose(res.update, [0.5, 0.0, -0.5, 0.0], atol=1e-7)
    assert res.num_steps == 1 and res.num_examples == 1
    assert res.loss == pytest.approx(math.log(2))      # loss at the start: -log(1/2)
    assert res.update.dtype == np.float32


class _Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.w * x


def test_fedprox_known_answer():
    # loss = w * x with x = 1 has gradient 1; with the proximal term mu/2 (w - w0)^2 the SGD
    # recursion is w_{t+1} = w_t - lr (1 + mu (w_t - w0)). From w0 = 0, lr = 0.1, mu = 2:
    # w1 = -0.1; w2 = -0.1 - 0.1 (1 - 0.2) = -0.18; w3 = -0.18 - 0.1 (1 - 0.36) = -0.244.
    data = (torch.ones(1, 1), torch.zeros(1, dtype=torch.int64))
    m = _Scalar()
    res = local_train(m, data, steps=3, lr=0.1, batch_size=1, prox_mu=2.0, loss_fn=lambda out, y: out.sum())
    np.testing.assert_allclose(res.update, [-0.244], rtol=1e-6)
    m = _Scalar()  # without the term: w3 = -0.3
    res = local_train(m, data, steps=3, lr=0.1, batch_size=1, loss_fn=lambda out, y: out.sum())
    np.testing.assert_allclose(res.update, [-0.3], rtol=1e-6)


def test_step_and_epoch_counts(digits):
    c = digits.client(0)
    n = c.num_train
    m = build_model("mlp", seed=0)
    res = local_train(m, c.train, epochs=2, lr=0.05, batch_size=16, generator=torch.Generator().manual_seed(0))
    assert res.num_steps == 2 * math.ceil(n / 16) and res.num_examples == n
    res = local_train(m, c.train, steps=7, lr=0.05, batch_size=n + 5)  # steps may span several epochs
    assert res.num_steps == 7


def test_update_is_trained_minus_start(digits):
    m = build_model("mlp", seed=0)
    start = model_to_vector(m)
    res = local_train(m, digits.client(1).train, epochs=1, lr=0.1, optimizer="adam")
    np.testing.assert_array_equal(res.update, model_to_vector(m) - start)
    assert np.abs(res.update).max() > 0


def test_short_training_lowers_loss(digits):
    m = build_model("mlp", seed=0)
    train = digits.client(0).train
    before, _ = evaluate(m, train)
    local_train(m, train, epochs=5, lr=0.1, momentum=0.9, batch_size=16, generator=torch.Generator().manual_seed(0))
    after, acc = evaluate(m, train)
    # A random-init 10-class MLP starts near ln 10 = 2.30; five epochs of SGD on ~230 examples
    # should more than halve it.
    assert before > 2.0 and after < 0.5 * before and acc > 0.8


def test_seeded_generator_is_reproducible(digits):
    def run(seed):
        m = build_model("mlp", seed=0)
        return local_train(m, digits.client(0).train, epochs=1, lr=0.1, batch_size=8,
                           generator=torch.Generator().manual_seed(seed)).update

    assert np.array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))


def test_exclude_personal_head(digits):
    m = build_model("mlp", seed=0)
    head = m.head.weight.detach().clone()
    res = local_train(m, digits.client(0).train, steps=5, lr=0.1, exclude=("head",))
    assert res.update.size == 64 * 64 + 64            # body only
    assert not torch.equal(m.head.weight, head)         # the head still trained locally


class _ListDataset(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_generic_dataset_path(digits):
    x, y = digits.client(0).train.tensors
    m = build_model("mlp", seed=0)
    res = local_train(m, _ListDataset(x, y), epochs=1, lr=0.1, batch_size=32, generator=torch.Generator().manual_seed(0))
    assert res.num_examples == len(y) and res.num_steps == math.ceil(len(y) / 32)
    loss_a, acc_a = evaluate(m, _ListDataset(x, y), batch_size=7)
    loss_b, acc_b = evaluate(m, (x, y))
    assert loss_a == pytest.approx(loss_b, rel=1e-5) and acc_a == acc_b


def test_evaluate_known_answer():
    # Zero weights give zero logits: the loss is ln 10 for every example, and argmax picks class 0,
    # so the accuracy is the fraction of label 0 (here 3 of 8).
    m = nn.Linear(4, 10)
    nn.init.zeros_(m.weight)
    nn.init.zeros_(m.bias)
    y = torch.tensor([0, 0, 0, 1, 2, 3, 4, 5])
    loss, acc = evaluate(m, (torch.randn(8, 4), y))
    assert loss == pytest.approx(math.log(10)) and acc == 3 / 8
    assert m.training  # mode restored
    assert all(math.isnan(v) for v in evaluate(m, (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))))


@pytest.mark.parametrize("kw, fields", [
    (dict(epochs=1, steps=1), ["epochs"]),
    (dict(), ["epochs"]),
    (dict(epochs=0), ["epochs"]),
    (dict(steps=1, lr=-0.1), ["lr"]),
    (dict(steps=1, lr=float("nan")), ["lr"]),
    (dict(steps=1, optimizer="rmsprop"), ["optimizer"]),
    (dict(steps=1, optimizer=OptimizerName.ADAM, momentum=0.9), ["momentum"]),
    (dict(steps=1, momentum=1.0), ["momentum"]),
    (dict(steps=1, batch_size=0), ["batch_size"]),
    (dict(steps=1, prox_mu=-1.0), ["prox_mu"]),
    (dict(steps=True, batch_size=1.5, prox_mu=-1), ["steps", "batch_size", "prox_mu"]),
])
def test_bad_arguments_name_every_field(kw, fields):
    m = build_model("mlp", seed=0)
    with pytest.raises(ConfigFieldError) as e:
        local_train(m, (torch.zeros(2, 64), torch.zeros(2, dtype=torch.int64)), **kw)
    assert e.value.fields == fields


def test_empty_data_refused():
    with pytest.raises(ConfigFieldError, match="train_data"):
        local_train(build_model("mlp"), (torch.zeros(0, 64), torch.zeros(0, dtype=torch.int64)), steps=1)


# --------------------------------------------------------------------------- DP-SGD path


def _dp_data(n=256, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_dp_sgd_event_and_in_place_update():
    from dp.events import ComposedEvent, GaussianEvent, PoissonSampledEvent

    x, y = _dp_data()
    m = build_model("mlp", in_features=8, seed=0)
    start = model_to_vector(m)
    res = local_train(m, (x, y), epochs=2, lr=0.1, batch_size=32, generator=torch.Generator().manual_seed(0),
                      dp=SampleDP(max_grad_norm=1.0, noise_multiplier=1.1, delta=1e-5,
                                  grad_sample_mode=GradSampleMode.HOOKS, accountant=AccountantKind.PRV))
    # 256 examples, batch 32: q = 1 / ceil(256 / 32) = 1/8 and 8 steps per epoch -> 16 noisy steps.
    assert res.num_steps == 16 and res.num_examples == 256
    assert res.event == ComposedEvent(PoissonSampledEvent(0.125, GaussianEvent(1.1)), 16)
    np.testing.assert_array_equal(res.update, model_to_vector(m) - start)  # the model itself trained
    assert res.opacus_epsilon is not None and res.opacus_epsilon > 0 and math.isfinite(res.loss)


def test_dp_sgd_reproducible_from_generator():
    x, y = _dp_data()

    def run(seed):
        m = build_model("mlp", in_features=8, seed=0)
        return local_train(m, (x, y), steps=3, lr=0.1, batch_size=32, generator=torch.Generator().manual_seed(seed),
                           dp=SampleDP(max_grad_norm=1.0, noise_multiplier=1.0)).update

    assert np.array_equal(run(4), run(4))
    assert not np.array_equal(run(4), run(5))


def test_dp_sgd_noise_scale():
    # With a loss whose gradient is zero, one DP-SGD step moves each coordinate by exactly the
    # noise: -lr * N(0, (z C)^2) / B, where B = q n = 32 is Opacus' expected batch size for
    # Poisson sampling (Abadi et al. 2016, Alg. 1). Over d = 8*64+64 + 64*10+10 = 1226
    # coordinates the sample std estimates lr z C / B = 0.5 * 2 * 0.1 / 32 = 3.125e-3 with
    # relative error ~ 1/sqrt(2d) = 2%; the bound is 5 of those.
    x, y = _dp_data()
    m = build_model("mlp", in_features=8, seed=0)
    res = local_train(m, (x, y), steps=1, lr=0.5, batch_size=32, generator=torch.Generator().manual_seed(0),
                      loss_fn=lambda out, yy: (out * 0).sum(),
                      dp=SampleDP(max_grad_norm=0.1, noise_multiplier=2.0))
    assert res.update.size == 1226
    assert abs(res.update.std() / 3.125e-3 - 1) < 0.10
    assert abs(res.update.mean()) < 5 * 3.125e-3 / math.sqrt(1226)


def test_dp_sgd_refusals():
    x, y = _dp_data()
    m = build_model("mlp", in_features=8, seed=0)
    with pytest.raises(ConfigFieldError) as e:
        local_train(m, (x, y), steps=1, prox_mu=0.1, dp=SampleDP(max_grad_norm=1.0, noise_multiplier=1.0))
    assert e.value.fields == ["prox_mu"]
    with pytest.raises(ConfigFieldError) as e:
        local_train(m, (x, y), steps=1, dp={"max_grad_norm": 1.0})
    assert e.value.fields == ["dp"]
