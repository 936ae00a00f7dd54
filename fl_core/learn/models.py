"""The small models the examples and benchmarks train.

Every model is a ``body`` (shared representation) followed by a ``head`` (the classifier), so
FedPer personalization keeps ``PERSONAL_HEAD = ("head",)`` on the clients. No model has buffers or
BatchNorm: Opacus cannot train BatchNorm, and buffers are never aggregated (see ``fl_core.learn.params``).
"""

from __future__ import annotations


import torch
from torch import nn

from fl_core.errors import bad_field
from fl_core.learn.names import ModelName

__all__ = ["ModelName", "MLP", "CNN28", "Conv1D", "build_model", "PERSONAL_HEAD"]

PERSONAL_HEAD: tuple[str, ...] = ("head",)


class MLP(nn.Module):
    """``in_features -> hidden -> ReLU -> num_classes``; for digits 64 -> 64 -> 10 (4810 parameters)."""

    def __init__(self, in_features: int = 64, num_classes: int = 10, *, hidden: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class CNN28(nn.Module):
    """Two 5x5 conv + max-pool blocks on 1x28x28 input, then a linear layer (LeNet-like, no BatchNorm)."""

    def __init__(self, num_classes: int = 10, *, channels: int = 16, hidden: int = 64):
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),          # 28 -> 14
            nn.Conv2d(c, 2 * c, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),      # 14 -> 7
            nn.Flatten(), nn.Linear(2 * c * 7 * 7, hidden), nn.ReLU(),
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # (N, 28, 28) -> (N, 1, 28, 28)
            x = x.unsqueeze(1)
        return self.head(self.body(x))


class Conv1D(nn.Module):
    """A small 1-D conv net for signals of ``length`` samples (mnist1d: 40)."""

    def __init__(self, length: int = 40, num_classes: int = 10, *, channels: int = 16, hidden: int = 64):
        super().__init__()
        c = channels
        out_len = (length + 1) // 2      # stride-2 conv with padding 1, kernel 3
        out_len = (out_len + 1) // 2
        self.body = nn.Sequential(
            nn.Unflatten(1, (1, length)),
            nn.Conv1d(1, c, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(c, c, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(c * out_len, hidden), nn.ReLU(),
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.reshape(x.shape[0], -1)))


def build_model(name: ModelName | str, *, in_features: int = 64, num_classes: int = 10, hidden: int = 64,
                seed: int | None = None) -> nn.Module:
    """Build a model by name. With ``seed`` the initial weights are a function of the seed alone
    (torch's global RNG is forked, not disturbed); without it they come from torch's global RNG.

    ``in_features`` is the flat input size (MLP) or signal length (Conv1D); CNN28 ignores it.
    """
    try:
        name = ModelName(name)
    except ValueError:
        raise bad_field("name", name, f"must be one of {[m.value for m in ModelName]}") from None
    for field, v in (("in_features", in_features), ("num_classes", num_classes), ("hidden", hidden)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise bad_field(field, v, "must be a positive int")
    if num_classes < 2:
        raise bad_field("num_classes", num_classes, "must be >= 2")

    def make() -> nn.Module:
        if name is ModelName.MLP:
            return MLP(in_features, num_classes, hidden=hidden)
        if name is ModelName.CNN28:
            return CNN28(num_classes, hidden=hidden)
        if in_features < 4:
            raise bad_field("in_features", in_features, "conv1d needs a signal length >= 4")
        return Conv1D(in_features, num_classes, hidden=hidden)

    if seed is None:
        return make()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()
