"""The learn layer's named choices, kept free of torch so that the config and the CLI can read them
without importing it (``import fl_core`` must stay light); the training modules re-export them."""

from __future__ import annotations

import enum

__all__ = ["Backend"]


class Backend(enum.Enum):
    """Which code trains the sampled clients of a round (``local.backend`` in a run config)."""

    OPACUS = "opacus"  # the reference: fl_core.learn.client.local_train client after client (Opacus for DP-SGD)
    COHORT = "cohort"  # fl_core.learn.cohort: the whole cohort at once with torch.func
