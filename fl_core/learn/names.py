"""The learn layer's named choices, kept free of torch so that the config and the CLI can read them
without importing it (``import fl_core`` must stay light); the training modules re-export them."""

from __future__ import annotations

import enum

__all__ = ["Backend", "OptimizerName", "DatasetName", "Partition", "DATASET_FEATURES", "ModelName",
           "MODEL_PARAMETERS"]


class Backend(enum.Enum):
    """Which code trains the sampled clients of a round (``local.backend`` in a run config)."""

    OPACUS = "opacus"  # the reference: fl_core.learn.client.local_train client after client (Opacus for DP-SGD)
    COHORT = "cohort"  # fl_core.learn.cohort: the whole cohort at once with torch.func


class OptimizerName(enum.Enum):
    """The local optimizer (``local.optimizer``)."""

    SGD = "sgd"
    ADAM = "adam"


class DatasetName(enum.Enum):
    """The built-in datasets (``fl_core.learn.data``)."""

    DIGITS = "digits"
    MNIST1D = "mnist1d"
    SYNTHETIC = "synthetic"


#: Flat input size of each built-in dataset (what ``build_model(in_features=...)`` needs).
DATASET_FEATURES: dict[DatasetName, int] = {DatasetName.DIGITS: 64, DatasetName.MNIST1D: 40,
                                            DatasetName.SYNTHETIC: 60}


class Partition(enum.Enum):
    """How a pooled dataset is spread over clients."""

    IID = "iid"
    DIRICHLET = "dirichlet"
    SHARDS = "shards"
    NATURAL = "natural"  # the data come per client already (synthetic, user data)


class ModelName(enum.Enum):
    """The built-in models (``fl_core.learn.models``)."""

    MLP = "mlp"          # digits (64 features), synthetic (60), mnist1d (40)
    CNN28 = "cnn28"      # 1x28x28 images (benchmarks)
    CONV1D = "conv1d"    # mnist1d signals of length 40


#: The trainable parameter names of each built-in model, so that the config can check
#: ``personalize.personal_layers`` without building one (tests/fl_core/learn/test_models.py
#: checks this table against the models).
MODEL_PARAMETERS: dict[ModelName, tuple[str, ...]] = {
    ModelName.MLP: ("body.1.weight", "body.1.bias", "head.weight", "head.bias"),
    ModelName.CNN28: ("body.0.weight", "body.0.bias", "body.3.weight", "body.3.bias", "body.7.weight",
                      "body.7.bias", "head.weight", "head.bias"),
    ModelName.CONV1D: ("body.1.weight", "body.1.bias", "body.3.weight", "body.3.bias", "body.6.weight",
                       "body.6.bias", "head.weight", "head.bias"),
}
