"""How Opacus gets per-example gradients, as a name: kept apart from ``dp.opacus_adapter`` (which
imports Opacus and torch at load time) so that configs can name and check it without them."""

from __future__ import annotations

import enum

__all__ = ["GradSampleMode"]


class GradSampleMode(enum.Enum):
    """How Opacus gets per-example gradient norms (same privacy, different speed and memory)."""

    HOOKS = "hooks"  # module hooks, per-layer grad samplers (the default)
    GHOST = "ghost"  # ghost clipping: norms without materializing per-example gradients
    FUNCTORCH = "functorch"  # torch.func vmap over the per-example loss
    EW = "ew"  # torch's ExpandedWeights
