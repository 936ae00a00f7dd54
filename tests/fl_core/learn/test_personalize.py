import copy

import numpy as np
import pytest
import torch

from fl_core.learn.client import SampleDP, evaluate, local_train
from fl_core.learn.data import load_federated
from fl_core.errors import ConfigFieldError
from fl_core.learn.models import build_model
from fl_core.learn.params import model_to_vector
from fl_core.learn.personalize import PersonalizationReport, personalize, worst_fraction_mean


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models train many times faster on one thread, above all on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("values, expected", [
    (np.arange(1, 11) / 10, 0.1),                       # n = 10: ceil(1.0) = 1 worst client
    (np.arange(1, 21) / 20, (0.05 + 0.10) / 2),         # n = 20: the 2 worst
    (np.arange(1, 16), (1 + 2) / 2),                    # n = 15: ceil(1.5) = 2
    ([0.7], 0.7),                                       # at least one client
    ([0.2, float("nan"), 0.9], 0.2),                    # NaN (empty test split) ignored
    ([], float("nan")),
])
def test_worst_fraction_mean(values, expected):
    out = worst_fraction_mean(values)
    assert (np.isnan(out) and np.isnan(expected)) or out == pytest.approx(expected)


def test_worst_fraction_mean_bad_fraction():
    with pytest.raises(ConfigFieldError, match="fraction"):
        worst_fraction_mean([1.0], fraction=0.0)


def test_report_summary():
    r = PersonalizationReport(global_acc=np.array([0.5, 1.0]), personal_acc=np.array([0.75, 1.0]))
    d = r.as_dict()
    assert d["mean_global"] == 0.75 and d["mean_personal"] == 0.875
    assert d["worst10_global"] == 0.5 and d["worst10_personal"] == 0.75


@pytest.fixture(scope="module")
def skewed():
    # Dirichlet(0.1) label skew: most clients hold one or two classes. The global model is
    # pretrained briefly on the public split, so it is mediocre on every client.
    fds = load_federated("digits", num_clients=20, rng=np.random.default_rng(0), partition="dirichlet",
                         alpha=0.1, public_fraction=0.2)
    g = build_model("mlp", seed=0)
    local_train(g, fds.public, steps=30, lr=0.1, momentum=0.9, batch_size=32, generator=torch.Generator().manual_seed(0))
    return fds, g


def test_fine_tuning_helps_on_label_skewed_clients(skewed):
    fds, g = skewed
    before = model_to_vector(g)
    res = personalize(g, fds.clients, steps=20, lr=0.05, generator=torch.Generator().manual_seed(0))
    r = res.report
    np.testing.assert_array_equal(model_to_vector(g), before)  # global model untouched
    assert r.global_acc.shape == r.personal_acc.shape == (20,)
    # the reported global accuracies are the global model's own, client by client
    assert r.global_acc[3] == evaluate(g, fds.client(3).test)[1]
    # With one or two classes per client, a few local steps shift the classifier toward the
    # local classes. Seen here: mean ~0.80 -> ~0.95; the bounds below leave a wide margin.
    assert r.mean_personal > r.mean_global + 0.05
    assert r.worst10_personal > r.worst10_global
    assert res.personal_params == {}


def test_fedper_personal_heads_are_kept_and_reused(skewed):
    fds, g = skewed
    first = personalize(g, fds.clients[:3], steps=5, lr=0.05, personal_layers=("head",),
                        generator=torch.Generator().manual_seed(1))
    assert sorted(first.personal_params) == [0, 1, 2]
    assert set(first.personal_params[0]) == {"head.weight", "head.bias"}
    second = personalize(g, fds.clients[:3], steps=5, lr=0.05, personal_layers=("head",),
                         personal_params=first.personal_params, generator=torch.Generator().manual_seed(1))
    # Client 1's "global" model in the second call is the global body with its own kept head:
    # build that by hand and compare.
    own = copy.deepcopy(g)
    with torch.no_grad():
        own.head.weight.copy_(first.personal_params[1]["head.weight"])
        own.head.bias.copy_(first.personal_params[1]["head.bias"])
    assert second.report.global_acc[1] == evaluate(own, fds.client(1).test)[1]


def test_bad_arguments(skewed):
    fds, g = skewed
    with pytest.raises(ConfigFieldError, match="steps"):
        personalize(g, fds.clients[:1], steps=0, lr=0.1)
    with pytest.raises(ConfigFieldError, match="exclude"):
        personalize(g, fds.clients[:1], steps=1, lr=0.1, personal_layers=("tail",))
    with pytest.raises(ConfigFieldError, match="personal_params"):
        personalize(g, fds.clients[:1], steps=1, lr=0.1, personal_layers=("head",),
                    personal_params={0: {"body.1.weight": torch.zeros(64, 64)}})


def test_dp_fine_tuning_returns_each_clients_event(skewed):
    from dp.events import ComposedEvent, GaussianEvent, PoissonSampledEvent

    fds, g = skewed
    res = personalize(g, fds.clients[:2], steps=3, lr=0.05, batch_size=8,
                      dp=SampleDP(max_grad_norm=1.0, noise_multiplier=1.0), generator=torch.Generator().manual_seed(0))
    assert sorted(res.events) == [0, 1]
    for i, ev in res.events.items():
        # q = 1 / ceil(n_i / 8) (Opacus' Poisson rate for expected batch 8), 3 noisy steps
        q = 1 / -(-fds.client(i).num_train // 8)
        assert ev == ComposedEvent(PoissonSampledEvent(q, GaussianEvent(1.0)), 3)
