"""A user's own model and data, importable as ``"tests.fl_core.run.custom_parts:..."`` config entries."""

import numpy as np
from torch import nn

from fl_core.learn.data import FederatedDataset


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.body(x))


def make_model():
    return TwoLayer()


def not_a_model():
    return 3


def blobs(num_clients: int = 6, per_client: int = 40, seed: int = 0) -> FederatedDataset:
    """Three Gaussian blobs in 5 dimensions, spread over clients."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 5)) * 3

    def draw(n):
        y = rng.integers(0, 3, size=n)
        return (centers[y] + rng.normal(size=(n, 5))).astype(np.float32), y

    return FederatedDataset.from_tensors([(draw(per_client), draw(10)) for _ in range(num_clients)], draw(200),
                                         num_classes=3)
