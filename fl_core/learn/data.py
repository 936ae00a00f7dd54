"""Federated datasets that need no download, partitioners, and the interface for user data.

What a run needs is a ``FederatedDataset``: per client a ``ClientData(train, test)`` pair of torch
``Dataset``s, a central ``test`` set held by the server, and optionally a ``public`` set the server
may train on (pretraining). Users bring their own data with ``FederatedDataset.from_tensors`` or by
building ``ClientData`` from any torch ``Dataset``s.

Built in, all generated or shipped with a package (never downloaded at run time):
- ``digits``: scikit-learn's ``load_digits``, 1797 8x8 images scaled to [0, 1] -> 64 float32
  features, 10 classes.
- ``mnist1d``: Greydanus (2020), generated offline with ``mnist1d.data.make_dataset`` (never
  ``get_dataset``, which downloads): 40-sample float32 signals, 10 classes.
- ``synthetic``: LEAF's Synthetic(alpha, beta) (Li et al., "Federated Optimization in Heterogeneous
  Networks", MLSys 2020, Sec. 5.1), federated by construction: one distribution per client.

Partitioners (each returns one index array per client): IID; Dirichlet(alpha) label skew
(Hsu et al. 2019; per class, client shares drawn from Dir(alpha)); shards (McMahan et al., AISTATS
2017: sort by label, cut into equal shards, deal ``shards_per_client`` to each client).

All randomness comes from the ``np.random.Generator`` passed in; nothing touches global RNGs
(``mnist1d`` seeds the global ones, so we restore them around it).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from fl_core.errors import ConfigFieldError, bad_field
from fl_core.learn.names import DATASET_FEATURES, DatasetName, Partition

__all__ = [
    "DatasetName",
    "DATASET_FEATURES",
    "Partition",
    "ClientData",
    "FederatedDataset",
    "DigitsSplit",
    "as_tensors",
    "load_digits_arrays",
    "digits_split",
    "load_mnist1d_arrays",
    "make_synthetic",
    "partition_iid",
    "partition_dirichlet",
    "partition_shards",
    "partition_indices",
    "split_train_test",
    "load_federated",
]


# --------------------------------------------------------------------------- user interface


def _tensor_dataset(x, y) -> TensorDataset:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y, dtype=torch.int64)
    if x.shape[0] != y.shape[0]:
        raise bad_field("y", tuple(y.shape), f"needs one label per example; x has {x.shape[0]} examples")
    if y.dim() != 1:
        raise bad_field("y", tuple(y.shape), "labels must be a 1-D tensor of class indices")
    return TensorDataset(x, y)


def as_tensors(data: Dataset | tuple) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(x, y)`` when ``data`` is a pair of tensors/arrays or a two-tensor ``TensorDataset``, else None.

    Local training and evaluation index such tensors directly, which is much faster for small
    models than a ``DataLoader``; any other ``Dataset`` goes through a ``DataLoader``.
    """
    if isinstance(data, tuple) and len(data) == 2:
        ds = _tensor_dataset(*data)
        return ds.tensors[0], ds.tensors[1]
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return data.tensors[0], data.tensors[1]
    return None


@dataclass(frozen=True)
class ClientData:
    """One client's private data: ``train`` for local training, ``test`` for its own evaluation
    (personalization reports use it). Either may be any map-style torch ``Dataset`` of ``(x, y)``.
    """

    train: Dataset
    test: Dataset

    @property
    def num_train(self) -> int:
        return len(self.train)

    @property
    def num_test(self) -> int:
        return len(self.test)


@dataclass(frozen=True)
class FederatedDataset:
    """Everything a federated run trains and evaluates on.

    ``clients[i]`` is client i's ``ClientData``; ``test`` is the server's central test set;
    ``public`` (optional) is data the server may use in the clear, e.g. to pretrain the global
    model; ``input_shape`` is one example's shape and ``num_classes`` the label count.
    """

    clients: tuple[ClientData, ...]
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    public: Dataset | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        object.__setattr__(self, "clients", tuple(self.clients))
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        if not self.clients:
            raise bad_field("clients", self.clients, "need at least one client")
        empty = [i for i, c in enumerate(self.clients) if c.num_train == 0]
        if empty:
            raise bad_field("clients", f"{len(self.clients)} clients",
                            f"clients {empty[:10]} have no training examples")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise bad_field("num_classes", self.num_classes, "must be an int >= 2")

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    @property
    def in_features(self) -> int:
        """The flat input size (what ``build_model(in_features=...)`` wants)."""
        return int(np.prod(self.input_shape))

    def client(self, i: int) -> ClientData:
        return self.clients[i]

    def num_examples(self) -> np.ndarray:
        """Training examples per client, as an int64 array."""
        return np.array([c.num_train for c in self.clients], dtype=np.int64)

    @classmethod
    def from_tensors(cls, clients: Sequence[tuple[tuple, tuple]], test: tuple, *,
                     num_classes: int | None = None, public: tuple | None = None,
                     name: str = "custom") -> FederatedDataset:
        """Build from ``clients = [((x_train, y_train), (x_test, y_test)), ...]`` and a central
        ``test = (x, y)``; arrays or tensors, x float, y integer class indices. ``num_classes``
        defaults to 1 + the largest label seen.
        """
        cds = tuple(ClientData(_tensor_dataset(*tr), _tensor_dataset(*te)) for tr, te in clients)
        test_ds = _tensor_dataset(*test)
        pub = None if public is None else _tensor_dataset(*public)
        if num_classes is None:
            labels = [test_ds.tensors[1]] + [t.tensors[1] for c in cds for t in (c.train, c.test)]
            num_classes = int(max(int(t.max()) for t in labels if t.numel())) + 1
        return cls(clients=cds, test=test_ds, num_classes=num_classes,
                   input_shape=tuple(test_ds.tensors[0].shape[1:]), public=pub, name=name)


# --------------------------------------------------------------------------- partitioners


def _check_clients(n: int, num_clients: int) -> None:
    if not isinstance(num_clients, int) or isinstance(num_clients, bool) or num_clients < 1:
        raise bad_field("num_clients", num_clients, "must be a positive int")
    if num_clients > n:
        raise bad_field("num_clients", num_clients, f"more clients than the {n} examples to share")


def partition_iid(n: int, num_clients: int, *, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle ``range(n)`` and cut it into ``num_clients`` parts whose sizes differ by at most 1."""
    _check_clients(n, num_clients)
    return [np.sort(p) for p in np.array_split(rng.permutation(n), num_clients)]


def partition_dirichlet(labels: np.ndarray, num_clients: int, *, alpha: float, rng: np.random.Generator,
                        min_size: int = 2, max_tries: int = 1000) -> list[np.ndarray]:
    """Label skew: for each class, split its examples among the clients in proportions drawn from
    Dir(alpha, ..., alpha) (Hsu, Qi, Brown 2019; Yurochkin et al. 2019). Small alpha -> each client
    sees few classes; alpha -> inf approaches IID. Draws again (up to ``max_tries``) until every
    client has at least ``min_size`` examples, so each can have a train and a test example.
    """
    labels = np.asarray(labels)
    _check_clients(len(labels), num_clients)
    if not np.isfinite(alpha) or alpha <= 0:
        raise bad_field("alpha", alpha, "the Dirichlet concentration must be a finite number > 0")
    if min_size * num_clients > len(labels):
        raise bad_field("num_clients", num_clients,
                        f"{num_clients} clients x min_size {min_size} exceed the {len(labels)} examples")
    classes = np.unique(labels)
    owners = np.empty(len(labels), dtype=np.int64)
    for _ in range(max_tries):
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            p = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = np.round(np.cumsum(p) * len(idx)).astype(np.int64)
            counts = np.diff(np.concatenate(([0], cuts)))
            counts[-1] = len(idx) - counts[:-1].sum()
            owners[idx] = np.repeat(np.arange(num_clients), counts)
        sizes = np.bincount(owners, minlength=num_clients)
        if sizes.min() >= min_size:
            return [np.flatnonzero(owners == k) for k in range(num_clients)]
    raise ConfigFieldError([("alpha", f"got {alpha!r}; after {max_tries} draws some client still had fewer "
                             f"than {min_size} examples: use a larger alpha or fewer clients "
                             f"(num_clients = {num_clients})")])


def partition_shards(labels: np.ndarray, num_clients: int, *, shards_per_client: int = 2,
                     rng: np.random.Generator) -> list[np.ndarray]:
    """McMahan et al. (AISTATS 2017, Sec. 3) pathological non-IID split: sort by label, cut into
    ``num_clients * shards_per_client`` equal shards, give each client ``shards_per_client``
    shards at random. Ties within a class are broken at random.
    """
    labels = np.asarray(labels)
    _check_clients(len(labels), num_clients)
    if not isinstance(shards_per_client, int) or isinstance(shards_per_client, bool) or shards_per_client < 1:
        raise bad_field("shards_per_client", shards_per_client, "must be a positive int")
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise bad_field("shards_per_client", shards_per_client,
                        f"{num_shards} shards for {len(labels)} examples leaves empty shards")
    perm = rng.permutation(len(labels))
    order = perm[np.argsort(labels[perm], kind="stable")]
    shards = np.array_split(order, num_shards)
    deal = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in deal]


def partition_indices(labels: np.ndarray, num_clients: int, scheme: Partition | str, *,
                      rng: np.random.Generator, alpha: float = 0.5, shards_per_client: int = 2,
                      min_size: int = 2) -> list[np.ndarray]:
    """Dispatch to one partitioner by ``Partition`` (``NATURAL`` has no meaning for pooled data)."""
    try:
        scheme = Partition(scheme)
    except ValueError:
        raise bad_field("partition", scheme, f"must be one of {[p.value for p in Partition]}") from None
    if scheme is Partition.IID:
        return partition_iid(len(labels), num_clients, rng=rng)
    if scheme is Partition.DIRICHLET:
        return partition_dirichlet(labels, num_clients, alpha=alpha, rng=rng, min_size=min_size)
    if scheme is Partition.SHARDS:
        return partition_shards(labels, num_clients, shards_per_client=shards_per_client, rng=rng)
    raise bad_field("partition", scheme.value, "'natural' applies only to data that come per client")


def split_train_test(n: int, test_fraction: float, *, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle ``range(n)`` into (train, test) index arrays with ``round(test_fraction * n)`` test
    examples, but at least one of each when ``n >= 2`` and ``0 < test_fraction < 1``.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise bad_field("test_fraction", test_fraction, "must be in [0, 1)")
    n_test = int(round(test_fraction * n))
    if test_fraction > 0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    perm = rng.permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _clients_from_parts(x: np.ndarray, y: np.ndarray, parts: Sequence[np.ndarray], *,
                        test_fraction: float, rng: np.random.Generator) -> tuple[ClientData, ...]:
    out = []
    for part in parts:
        tr, te = split_train_test(len(part), test_fraction, rng=rng)
        out.append(ClientData(_tensor_dataset(x[part[tr]], y[part[tr]]), _tensor_dataset(x[part[te]], y[part[te]])))
    return tuple(out)


# --------------------------------------------------------------------------- built-in data


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # ships with scikit-learn; no download

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)  # pixel values are 0..16
    y = d.target.astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits: x float32 (1797, 64) in [0, 1], y int64 (1797,) in 0..9 (copies)."""
    x, y = _digits()
    return x.copy(), y.copy()


@dataclass(frozen=True)
class DigitsSplit:
    """Disjoint public / private / test parts of digits (for "pretrain on public, train privately")."""

    public: TensorDataset
    private: TensorDataset
    test: TensorDataset


def _three_way(n: int, public_fraction: float, test_fraction: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    problems = []
    if not 0.0 <= public_fraction < 1.0:
        problems.append(("public_fraction", f"got {public_fraction!r}; must be in [0, 1)"))
    if not 0.0 < test_fraction < 1.0:
        problems.append(("test_fraction", f"got {test_fraction!r}; must be in (0, 1)"))
    if not problems and public_fraction + test_fraction >= 1.0:
        problems.append(("public_fraction", f"got {public_fraction!r}; public + test fractions "
                         f"({public_fraction} + {test_fraction}) leave no private data"))
    if problems:
        raise ConfigFieldError(problems)
    perm = rng.permutation(n)
    n_test, n_pub = int(round(test_fraction * n)), int(round(public_fraction * n))
    return perm[n_test + n_pub:], perm[n_test:n_test + n_pub], perm[:n_test]


def digits_split(*, rng: np.random.Generator, public_fraction: float = 0.2,
                 test_fraction: float = 0.2) -> DigitsSplit:
    """A random split of digits into public, private and test parts; a fixed rng seed gives a
    fixed split, so pretrained and random-init runs can be compared on the same data."""
    x, y = _digits()
    priv, pub, test = _three_way(len(y), public_fraction, test_fraction, rng)
    return DigitsSplit(public=_tensor_dataset(x[pub], y[pub]), private=_tensor_dataset(x[priv], y[priv]),
                       test=_tensor_dataset(x[test], y[test]))


@functools.lru_cache(maxsize=4)
def _mnist1d(num_samples: int, seed: int) -> tuple[np.ndarray, ...]:
    from mnist1d.data import get_dataset_args, make_dataset  # generated locally, no download

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:  # make_dataset seeds python's and numpy's global RNGs; leave them as we found them
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    out = (d["x"].astype(np.float32), d["y"].astype(np.int64),
           d["x_test"].astype(np.float32), d["y_test"].astype(np.int64))
    for a in out:
        a.setflags(write=False)
    return out


def load_mnist1d_arrays(*, num_samples: int = 5000, seed: int = 42) -> tuple[np.ndarray, ...]:
    """MNIST-1D generated offline: ``(x_train, y_train, x_test, y_test)``, x float32 (n, 40),
    80/20 train/test as the package splits it. ``seed`` drives the generator (42 is the package's
    default, i.e. the published dataset's recipe). Results are cached per (num_samples, seed).
    """
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 50:
        raise bad_field("num_samples", num_samples, "must be an int >= 50 (5 per class and split)")
    return tuple(a.copy() for a in _mnist1d(num_samples, int(seed)))


def make_synthetic(alpha: float, beta: float, *, num_clients: int, rng: np.random.Generator,
                   dim: int = 60, num_classes: int = 10, max_samples: int = 500,
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """LEAF Synthetic(alpha, beta), one ``(x, y)`` per client (Li et al., MLSys 2020, Sec. 5.1):

    for client k: u_k ~ N(0, alpha), B_k ~ N(0, beta); W_k (classes x dim) and b_k entries ~ N(u_k, 1);
    v_k entries ~ N(B_k, 1); x ~ N(v_k, diag(j^-1.2)); y = argmax(W_k x + b_k). alpha controls how
    much the clients' models differ, beta how much their inputs differ. Like the authors' generator,
    alpha and beta are used as standard deviations. Sizes follow their power law, 50 + floor of a
    lognormal(4, 2) draw, capped here at ``max_samples`` to keep runs small.
    """
    problems = []
    for name, v in (("alpha", alpha), ("beta", beta)):
        if not np.isfinite(v) or v < 0:
            problems.append((name, f"got {v!r}; must be a finite number >= 0"))
    for name, v, lo in (("num_clients", num_clients, 1), ("dim", dim, 1), ("num_classes", num_classes, 2),
                        ("max_samples", max_samples, 50)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            problems.append((name, f"got {v!r}; must be an int >= {lo}"))
    if problems:
        raise ConfigFieldError(problems)
    u = rng.normal(0.0, alpha, num_clients)
    b_mean = rng.normal(0.0, beta, num_clients)
    sizes = np.minimum(50 + rng.lognormal(4.0, 2.0, num_clients).astype(np.int64), max_samples)
    std = np.arange(1, dim + 1, dtype=np.float64) ** -0.6  # sqrt of j^-1.2
    out = []
    for k in range(num_clients):
        w = rng.normal(u[k], 1.0, (num_classes, dim))
        b = rng.normal(u[k], 1.0, num_classes)
        v = rng.normal(b_mean[k], 1.0, dim)
        x = v + rng.standard_normal((sizes[k], dim)) * std
        y = np.argmax(x @ w.T + b, axis=1)
        out.append((x.astype(np.float32), y.astype(np.int64)))
    return out


def load_federated(name: DatasetName | str, *, num_clients: int, rng: np.random.Generator,
                   partition: Partition | str | None = None, alpha: float = 0.5, shards_per_client: int = 2,
                   test_fraction: float = 0.2, client_test_fraction: float = 0.2,
                   public_fraction: float = 0.0, min_size: int = 2, num_samples: int = 5000,
                   synthetic_alpha: float = 1.0, synthetic_beta: float = 1.0) -> FederatedDataset:
    """A built-in dataset, partitioned over ``num_clients`` clients.

    digits: ``test_fraction`` of the examples are the central test set and ``public_fraction`` the
    public set; the rest are partitioned (default IID). mnist1d: the package's own test split is
    the central test set; ``public_fraction`` of its training part is public. synthetic: natural
    partition only; the central test set is the union of the clients' test parts. Each client's
    part is then split into train and test with ``client_test_fraction``.
    """
    try:
        name = DatasetName(name)
    except ValueError:
        raise bad_field("name", name, f"must be one of {[d.value for d in DatasetName]}") from None
    default = Partition.NATURAL if name is DatasetName.SYNTHETIC else Partition.IID
    try:
        partition = default if partition is None else Partition(partition)
    except ValueError:
        raise bad_field("partition", partition, f"must be one of {[p.value for p in Partition]}") from None

    if name is DatasetName.SYNTHETIC:
        if partition is not Partition.NATURAL:
            raise bad_field("partition", partition.value, "synthetic data is federated by construction: use 'natural'")
        if public_fraction:
            raise bad_field("public_fraction", public_fraction, "synthetic data has no public part; use 0")
        clients = []
        for x, y in make_synthetic(synthetic_alpha, synthetic_beta, num_clients=num_clients, rng=rng):
            tr, te = split_train_test(len(y), client_test_fraction, rng=rng)
            clients.append(ClientData(_tensor_dataset(x[tr], y[tr]), _tensor_dataset(x[te], y[te])))
        xs = torch.cat([c.test.tensors[0] for c in clients])
        ys = torch.cat([c.test.tensors[1] for c in clients])
        return FederatedDataset(clients=tuple(clients), test=TensorDataset(xs, ys), num_classes=10,
                                input_shape=(xs.shape[1],), name=name.value)

    if partition is Partition.NATURAL:
        raise bad_field("partition", partition.value, f"{name.value} is pooled data: use iid, dirichlet or shards")
    if name is DatasetName.DIGITS:
        x, y = _digits()
        priv, pub, test = _three_way(len(y), public_fraction, test_fraction, rng)
        x_te, y_te = x[test], y[test]
    else:
        if not 0.0 <= public_fraction < 1.0:
            raise bad_field("public_fraction", public_fraction, "must be in [0, 1)")
        x, y, x_te, y_te = load_mnist1d_arrays(num_samples=num_samples)
        perm = rng.permutation(len(y))
        n_pub = int(round(public_fraction * len(y)))
        pub, priv = perm[:n_pub], perm[n_pub:]
    parts = partition_indices(y[priv], num_clients, partition, rng=rng, alpha=alpha,
                              shards_per_client=shards_per_client, min_size=min_size)
    clients = _clients_from_parts(x[priv], y[priv], parts, test_fraction=client_test_fraction, rng=rng)
    public = _tensor_dataset(x[pub], y[pub]) if len(pub) else None
    return FederatedDataset(clients=clients, test=_tensor_dataset(x_te, y_te), num_classes=10,
                            input_shape=(x.shape[1],), public=public, name=name.value)
