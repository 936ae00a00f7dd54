"""The ordinary federated-learning part: model, data partition, local training, evaluation.

Nothing here knows about secure aggregation: it is what a Flower app already has.
"""

from __future__ import annotations

import numpy as np


def build_model(run_config):
    from fl_core.learn.models import build_model as build

    return build("mlp", in_features=64, num_classes=10, hidden=int(run_config["hidden"]),
                 seed=int(run_config["seed"]))


def load_data(run_config, num_partitions: int):
    """The digits split every node computes alike from the run's seed (no download)."""
    from fl_core.learn.data import load_federated

    return load_federated("digits", num_clients=num_partitions, rng=np.random.default_rng(int(run_config["seed"])))


def train(model, train_data, run_config) -> tuple[int, float]:
    """Local SGD in place; (number of examples, mean loss)."""
    from fl_core.learn.client import local_train

    res = local_train(model, train_data, epochs=int(run_config["local-epochs"]), lr=float(run_config["lr"]),
                      batch_size=int(run_config["batch-size"]))
    return res.num_examples, res.loss


def evaluate(model, test_data) -> tuple[float, float]:
    from fl_core.learn.client import evaluate as ev

    return ev(model, test_data)
