"""Which survivors' noise shares are excess: the rule client and server both apply.

Excess-noise removal (Jiang et al., "Dordis: Efficient Federated Learning with Dropout-Resilient
Differential Privacy", EuroSys 2024) lets each client secret-share the seed of its noise share
with the same neighbours and threshold as its self-mask seed. Once the survivor list is final,
``len(survivors) - min_survivors`` of the survivors' noise shares are more than the round needs;
their seeds may be revealed so the server can subtract them. The rule is a pure function of the
survivor list and the client's OWN ``min_survivors`` (never a number the server sends), so in
active mode a client that checked the signed list reveals shares for exactly these owners and no
others, whatever the server asks.

The rule keeps the ``min_survivors`` smallest ids and marks the rest excess. Which ones are kept
does not matter for privacy (the kept shares are identically distributed); that it is fixed
before anybody sees a noise value does.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import ConfigError

__all__ = ["excess_owners"]


def excess_owners(survivors: Sequence[int], *, min_survivors: int) -> tuple[int, ...]:
    """The survivors whose noise seeds may be revealed: all but the ``min_survivors`` smallest ids.

    Empty when ``len(survivors) == min_survivors``; ConfigError when the list is shorter (the
    round must abort, not reveal) or not strictly increasing.
    """
    ids = tuple(survivors)
    if any(b <= a for a, b in zip(ids, ids[1:])):
        raise ConfigError(f"survivors must be strictly increasing, got {ids[:10]}")
    if isinstance(min_survivors, bool) or not isinstance(min_survivors, int) or min_survivors < 1:
        raise ConfigError(f"min_survivors must be a positive int, got {min_survivors!r}")
    if len(ids) < min_survivors:
        raise ConfigError(f"{len(ids)} survivors, fewer than min_survivors={min_survivors}: "
                          "no noise is excess and the round must abort")
    return ids[min_survivors:]
