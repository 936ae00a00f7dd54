import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fl_core.learn.client import evaluate, local_train
from fl_core.learn.data import load_federated
from fl_core.errors import CheckpointError, ConfigFieldError, ShapeMismatchError
from fl_core.learn.models import build_model
from fl_core.learn.params import model_to_vector, vector_to_model
from fl_core.learn.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedYogi, ServerOptName, make_server_optimizer



@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models train many times faster on one thread, above all on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


vec = arrays(np.float32, 6, elements=st.floats(-100, 100, width=32))


@settings(max_examples=50, deadline=None)
@given(x=vec, d=vec)
def test_fedavg_lr1_adds_the_mean_delta(x, d):
    x_copy, d_copy = x.copy(), d.copy()
    out = make_server_optimizer("fedavg").step(x, d)
    # float64 sum of two float32 values, rounded once to float32 = the float32 sum
    np.testing.assert_array_equal(out, (x.astype(np.float64) + d).astype(np.float32))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(d, d_copy)  # inputs untouched


def test_fedavg_server_lr():
    out = FedAvg(lr=0.5).step(np.array([1.0, 2.0], np.float32), np.array([2.0, -4.0], np.float32))
    np.testing.assert_allclose(out, [2.0, 0.0])  # x + 0.5 * delta


def test_fedavgm_two_steps_by_hand():
    # m1 = d1 = (1, -2), x1 = (1, -2); m2 = 0.9 m1 + d2 = (1.4, -1.3), x2 = x1 + m2 = (2.4, -3.3)
    opt = FedAvgM(lr=1.0, momentum=0.9)
    x = opt.step(np.zeros(2, np.float32), np.array([1.0, -2.0]))
    np.testing.assert_allclose(x, [1.0, -2.0])
    x = opt.step(x, np.array([0.5, 0.5]))
    np.testing.assert_allclose(x, [2.4, -3.3], rtol=1e-6)


# One step from x0 = 0 with Delta = 0.1, beta1 = 0.9, beta2 = 0.99, tau = 0.5, lr = 1, worked by hand
# from Reddi et al. 2021, Algorithm 2 (m_{-1} = 0, v_{-1} = tau^2 = 0.25, Delta^2 = 0.01):
#   m0 = 0.1 * 0.1 = 0.01 for all three.
#   Adagrad: v0 = 0.25 + 0.01 = 0.26;                  x1 = 0.01 / (sqrt(0.26) + 0.5)   = 0.00990195136
#   Adam:    v0 = 0.99 * 0.25 + 0.01 * 0.01 = 0.2476;  x1 = 0.01 / (sqrt(0.2476) + 0.5)  = 0.01002411590
#   Yogi:    v_{-1} > Delta^2 so sign = +1: v0 = 0.25 - 0.01 * 0.01 = 0.2499;
#                                                      x1 = 0.01 / (sqrt(0.2499) + 0.5)  = 0.01000100020
# (x1 evaluated with 30-digit decimal arithmetic.)
@pytest.mark.parametrize("cls, v0, x1", [
    (FedAdagrad, 0.26, 0.00990195135927848),
    (FedAdam, 0.2476, 0.0100241158958786),
    (FedYogi, 0.2499, 0.0100010002000500),
])
def test_adaptive_single_step_by_hand(cls, v0, x1):
    hp = dict(lr=1.0, beta1=0.9, tau=0.5)
    if cls is not FedAdagrad:
        hp["beta2"] = 0.99
    opt = cls(**hp)
    out = opt.step(np.zeros(1, np.float32), np.array([0.1]))
    st_ = opt.state_dict()["state"]
    np.testing.assert_allclose(st_["m"], [0.01], rtol=1e-12)
    np.testing.assert_allclose(st_["v"], [v0], rtol=1e-12)
    np.testing.assert_allclose(out, [x1], rtol=1e-6)


def test_yogi_sign_switch_second_step():
    # Yogi increases v only where Delta^2 > v: with tau = 0.01 (v_{-1} = 1e-4) and Delta = 1,
    # sign(1e-4 - 1) = -1 so v0 = 1e-4 + 0.01 * 1 = 0.0101; Adam would give 0.99e-4 + 0.01 = 0.010099.
    yogi, adam = FedYogi(lr=1.0, tau=0.01), FedAdam(lr=1.0, tau=0.01)
    yogi.step(np.zeros(1, np.float32), np.ones(1))
    adam.step(np.zeros(1, np.float32), np.ones(1))
    assert yogi.state_dict()["state"]["v"][0] == pytest.approx(0.0101, rel=1e-12)
    assert adam.state_dict()["state"]["v"][0] == pytest.approx(0.010099, rel=1e-12)


@pytest.mark.parametrize("name", [n.value for n in ServerOptName])
def test_state_dict_resume_is_bit_identical(name):
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=50).astype(np.float32)
    deltas = rng.normal(size=(5, 50)) * 0.1
    a = make_server_optimizer(name)
    xa = x0
    for d in deltas:
        xa = a.step(xa, d)
    b = make_server_optimizer(name)
    xb = x0
    for d in deltas[:3]:
        xb = b.step(xb, d)
    c = make_server_optimizer(name)
    c.load_state_dict(b.state_dict())
    for d in deltas[3:]:
        xb = c.step(xb, d)
    np.testing.assert_array_equal(xa, xb)
    assert c.rounds == 5


def test_load_state_dict_checks():
    a = FedAdam()
    a.step(np.zeros(3, np.float32), np.ones(3))
    with pytest.raises(CheckpointError, match="fedadam"):
        FedYogi().load_state_dict(a.state_dict())
    with pytest.raises(CheckpointError, match="hyperparameters"):
        FedAdam(lr=0.1).load_state_dict(a.state_dict())
    with pytest.raises(CheckpointError):
        FedAdam().load_state_dict({"name": "fedadam"})


def test_hyperparameter_validation():
    with pytest.raises(ConfigFieldError) as e:
        make_server_optimizer("fedadam", momentum=0.9, beta1=1.0, tau=0.0)
    assert sorted(e.value.fields) == ["beta1", "momentum", "tau"]
    with pytest.raises(ConfigFieldError, match="server.optimizer"):
        make_server_optimizer("sgd")
    opt = make_server_optimizer(ServerOptName.FEDAVGM, lr=None, momentum=0.5)
    assert opt.hparams == {"lr": 1.0, "momentum": 0.5}  # None takes the default


def test_shape_and_finiteness_checks():
    opt = FedAdam()
    with pytest.raises(ShapeMismatchError):
        opt.step(np.zeros(3, np.float32), np.zeros(4))
    opt.step(np.zeros(3, np.float32), np.zeros(3))
    with pytest.raises(ShapeMismatchError):
        opt.step(np.zeros(4, np.float32), np.zeros(4))  # state is for length 3
    with pytest.raises(ConfigFieldError, match="mean_update"):
        opt.step(np.zeros(3, np.float32), np.array([0.0, np.nan, 0.0]))


def test_fedavg_20_iid_clients_reach_90_percent_on_digits():
    # Plain FedAvg (McMahan et al. 2017), no secagg and no DP: 20 IID clients, all sampled, two
    # local epochs of SGD per round, server lr 1 = the plain mean of the updates. Eight rounds take
    # about a second on one thread and reach ~95% (90% from round 4 on); the bound 90% leaves
    # room for platform differences.
    fds = load_federated("digits", num_clients=20, rng=np.random.default_rng(0))
    global_model, work = build_model("mlp", seed=0), build_model("mlp", seed=0)
    opt = make_server_optimizer("fedavg", lr=1.0)
    gen = torch.Generator().manual_seed(0)
    x = model_to_vector(global_model)
    for _ in range(8):
        updates = []
        for client in fds.clients:
            vector_to_model(x, work)
            updates.append(local_train(work, client.train, epochs=2, lr=0.1, momentum=0.9, batch_size=10,
                                       generator=gen).update)
        x = opt.step(x, np.mean(updates, axis=0))
    vector_to_model(x, global_model)
    _, acc = evaluate(global_model, fds.test)
    assert acc >= 0.90
