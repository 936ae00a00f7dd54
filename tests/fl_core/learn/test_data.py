import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import Dataset

from fl_core.learn.data import (
    ClientData,
    FederatedDataset,
    Partition,
    digits_split,
    load_digits_arrays,
    load_federated,
    load_mnist1d_arrays,
    make_synthetic,
    partition_dirichlet,
    partition_iid,
    partition_indices,
    partition_shards,
    split_train_test,
)
from fl_core.errors import ConfigFieldError


def _assert_exact_cover(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))


def test_digits_arrays():
    x, y = load_digits_arrays()
    # scikit-learn documents digits as 1797 8x8 images with pixel values 0..16, 10 classes.
    assert x.shape == (1797, 64) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    x[0, 0] = 5.0  # a copy: the cache is not changed
    assert load_digits_arrays()[0][0, 0] != 5.0


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 300), k=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_iid_partition_is_balanced_cover(n, k, seed):
    if k > n:
        with pytest.raises(ConfigFieldError):
            partition_iid(n, k, rng=np.random.default_rng(seed))
        return
    parts = partition_iid(n, k, rng=np.random.default_rng(seed))
    _assert_exact_cover(parts, n)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), alpha=st.sampled_from([0.1, 0.5, 5.0]), k=st.integers(2, 20))
def test_dirichlet_partition_cover_and_min_size(seed, alpha, k):
    labels = np.random.default_rng(seed).integers(0, 10, 400)
    parts = partition_dirichlet(labels, k, alpha=alpha, rng=np.random.default_rng(seed), min_size=3)
    _assert_exact_cover(parts, 400)
    assert min(len(p) for p in parts) >= 3


def _mean_top_class_share(labels, parts):
    return np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts])


def test_dirichlet_alpha_controls_skew():
    # Statistical check with fixed seeds. With alpha = 0.05 most of a class goes to one or two of
    # 20 clients, so a client's largest class is most of its data; with alpha = 1000 the shares
    # are 1/20 each up to a std of ~0.7% (Dir(1000) over 20: sqrt(p(1-p)/(20*1000+1))), so every
    # client gets nearly the class balance of digits (largest class 183/1797 = 0.102). Bounds
    # are loose on both sides.
    _, y = load_digits_arrays()
    skewed = partition_dirichlet(y, 20, alpha=0.05, rng=np.random.default_rng(0))
    near_iid = partition_dirichlet(y, 20, alpha=1000.0, rng=np.random.default_rng(0))
    assert _mean_top_class_share(y, skewed) > 0.5
    assert _mean_top_class_share(y, near_iid) < 0.25


def test_dirichlet_impossible_is_an_error():
    with pytest.raises(ConfigFieldError) as e:
        partition_dirichlet(np.zeros(10, dtype=int), 5, alpha=0.5, rng=np.random.default_rng(0), min_size=3)
    assert e.value.fields == ["num_clients"]
    with pytest.raises(ConfigFieldError, match="alpha"):
        partition_dirichlet(np.zeros(10, dtype=int), 2, alpha=0.0, rng=np.random.default_rng(0))


def test_shards_partition():
    _, y = load_digits_arrays()
    parts = partition_shards(y, 20, shards_per_client=2, rng=np.random.default_rng(0))
    _assert_exact_cover(parts, len(y))
    # 40 label-sorted shards of ~45 examples; a shard straddles at most one class boundary
    # (classes have >= 174 examples), so a client with 2 shards sees at most 4 labels.
    assert all(len(np.unique(y[p])) <= 4 for p in parts)
    assert np.mean([len(np.unique(y[p])) for p in parts]) < 3.5
    with pytest.raises(ConfigFieldError, match="shards_per_client"):
        partition_shards(y, 1000, shards_per_client=2, rng=np.random.default_rng(0))


def test_partitions_are_seeded():
    _, y = load_digits_arrays()
    for scheme in (Partition.IID, Partition.DIRICHLET, Partition.SHARDS):
        a = partition_indices(y, 10, scheme, rng=np.random.default_rng(3))
        b = partition_indices(y, 10, scheme, rng=np.random.default_rng(3))
        c = partition_indices(y, 10, scheme, rng=np.random.default_rng(4))
        assert all(np.array_equal(p, q) for p, q in zip(a, b))
        assert not all(np.array_equal(p, q) for p, q in zip(a, c))
    with pytest.raises(ConfigFieldError, match="partition"):
        partition_indices(y, 10, "natural", rng=np.random.default_rng(0))
    with pytest.raises(ConfigFieldError, match="partition"):
        partition_indices(y, 10, "random", rng=np.random.default_rng(0))


@pytest.mark.parametrize("n, frac, n_test", [(10, 0.2, 2), (2, 0.2, 1), (3, 0.01, 1), (1, 0.5, 0), (10, 0.0, 0)])
def test_split_train_test(n, frac, n_test):
    tr, te = split_train_test(n, frac, rng=np.random.default_rng(0))
    assert len(te) == n_test and len(tr) == n - n_test
    assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(n))


def _rows(ds):
    x, y = ds.tensors
    return sorted(map(tuple, np.column_stack([x.numpy(), y.numpy()]).tolist()))


def test_digits_split_is_a_partition():
    s = digits_split(rng=np.random.default_rng(0), public_fraction=0.2, test_fraction=0.2)
    # round(0.2 * 1797) = 359 test and 359 public; 1797 - 718 = 1079 private
    assert (len(s.test), len(s.public), len(s.private)) == (359, 359, 1079)
    x, y = load_digits_arrays()
    whole = sorted(map(tuple, np.column_stack([x, y]).tolist()))
    assert sorted(_rows(s.test) + _rows(s.public) + _rows(s.private)) == whole
    with pytest.raises(ConfigFieldError, match="public_fraction"):
        digits_split(rng=np.random.default_rng(0), public_fraction=0.5, test_fraction=0.5)


def test_load_federated_digits():
    fds = load_federated("digits", num_clients=20, rng=np.random.default_rng(0), public_fraction=0.1)
    assert fds.num_clients == 20 and fds.num_classes == 10 and fds.in_features == 64
    # 1797 = 359 central test + 180 public + the clients' train and test parts
    assert len(fds.test) == 359 and len(fds.public) == 180
    assert sum(c.num_train + c.num_test for c in fds.clients) == 1797 - 359 - 180
    assert all(c.num_test >= 1 for c in fds.clients)
    x, y = fds.client(0).train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1] == 64
    assert fds.num_examples().sum() == sum(c.num_train for c in fds.clients)


def test_load_federated_non_iid_and_errors():
    fds = load_federated("digits", num_clients=10, rng=np.random.default_rng(0), partition="dirichlet", alpha=0.1)
    assert fds.num_clients == 10
    with pytest.raises(ConfigFieldError, match="partition"):
        load_federated("digits", num_clients=10, rng=np.random.default_rng(0), partition="natural")
    with pytest.raises(ConfigFieldError, match="name"):
        load_federated("cifar", num_clients=10, rng=np.random.default_rng(0))


def test_mnist1d_offline_and_leaves_global_rngs_alone():
    py, npg = random.getstate(), np.random.get_state()
    x, y, xt, yt = load_mnist1d_arrays(num_samples=500, seed=3)
    assert random.getstate() == py
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), npg))
    # the package splits 80/20 and makes 40-sample signals with 50 examples per class
    assert x.shape == (400, 40) and xt.shape == (100, 40) and x.dtype == np.float32
    assert np.bincount(np.concatenate([y, yt])).tolist() == [50] * 10
    x2, *_ = load_mnist1d_arrays(num_samples=500, seed=3)
    assert np.array_equal(x, x2)
    fds = load_federated("mnist1d", num_clients=5, rng=np.random.default_rng(0), num_samples=500)
    assert fds.in_features == 40 and len(fds.test) == 100
    assert sum(c.num_train + c.num_test for c in fds.clients) == 400


def test_synthetic_shapes_and_sizes():
    data = make_synthetic(1.0, 1.0, num_clients=30, rng=np.random.default_rng(0), max_samples=200)
    assert len(data) == 30
    for x, y in data:
        assert x.shape[1] == 60 and x.dtype == np.float32 and 50 <= len(y) <= 200
        assert y.min() >= 0 and y.max() <= 9


def test_synthetic_beta_controls_input_heterogeneity():
    # Client k's inputs have mean v_k with entries ~ N(B_k, 1), B_k ~ N(0, beta) (beta as std).
    # So the mean over a client's whole x matrix is B_k + N(0, ~1/60) + tiny sampling noise, and
    # its variance across clients is ~ beta^2 + 1/60. With 50 clients, chi2(49)/49 lies in
    # [0.4, 1.9] with probability > 0.9998, so beta = 0 gives < 0.04 and beta = 2 gives > 1.6.
    def spread(beta):
        data = make_synthetic(0.0, beta, num_clients=50, rng=np.random.default_rng(1))
        return np.var([x.mean() for x, _ in data], ddof=1)

    assert spread(0.0) < 0.05
    assert spread(2.0) > 1.0


def test_synthetic_federated():
    fds = load_federated("synthetic", num_clients=8, rng=np.random.default_rng(0))
    assert fds.num_clients == 8 and fds.in_features == 60 and fds.public is None
    assert len(fds.test) == sum(c.num_test for c in fds.clients)
    with pytest.raises(ConfigFieldError, match="partition"):
        load_federated("synthetic", num_clients=8, rng=np.random.default_rng(0), partition="iid")
    with pytest.raises(ConfigFieldError) as e:
        make_synthetic(-1.0, float("nan"), num_clients=0, rng=np.random.default_rng(0))
    assert e.value.fields == ["alpha", "beta", "num_clients"]


class _ListDataset(Dataset):
    def __init__(self, n):
        self.items = [(torch.full((3,), float(i)), i % 2) for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_user_data_interface():
    rng = np.random.default_rng(0)
    clients = [((rng.normal(size=(5, 3)), [0, 1, 2, 0, 1]), (rng.normal(size=(2, 3)), [1, 0])) for _ in range(3)]
    fds = FederatedDataset.from_tensors(clients, test=(rng.normal(size=(4, 3)), [0, 1, 2, 3]))
    assert fds.num_clients == 3 and fds.num_classes == 4 and fds.input_shape == (3,)
    # any torch Dataset works too
    fds2 = FederatedDataset(clients=[ClientData(_ListDataset(6), _ListDataset(2))], test=_ListDataset(3),
                            num_classes=2, input_shape=(3,))
    assert fds2.client(0).num_train == 6
    with pytest.raises(ConfigFieldError, match="y"):
        FederatedDataset.from_tensors([((np.zeros((3, 2)), [0, 1]), (np.zeros((1, 2)), [0]))], test=(np.zeros((1, 2)), [1]))
    with pytest.raises(ConfigFieldError, match="no training examples"):
        FederatedDataset.from_tensors([((np.zeros((0, 2)), []), (np.zeros((1, 2)), [0]))], test=(np.zeros((1, 2)), [1]))
