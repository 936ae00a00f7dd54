"""Hooks into a run for tools and tests, so that the run loop's signature carries none.

The audit's witness re-derivation watches each round's encoded inputs and stops the re-run after
the last round it needs; the crash tests stop a run right after a release, before its checkpoint,
to exercise the privacy ledger. Subclass ``RunObserver`` and override what you need.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["RunObserver", "StopRun", "StopAfterRelease", "Witness"]


class RunObserver:
    """Does nothing; each method is called at one point of every round (``r`` is 0-based)."""

    def on_inputs(self, r: int, words: Mapping[int, np.ndarray]) -> None:
        """Round r's encoded, not yet masked client inputs, before the secure round runs."""

    def after_release(self, r: int) -> None:
        """Round r's aggregate was released and charged; its checkpoint is not yet written.
        Raising here stops the run at that point (as a crash would)."""


class StopRun(Exception):
    """Raised by an observer to stop a run where it stands (nothing after that point is written)."""


class StopAfterRelease(RunObserver):
    """Stops the run right after round ``last``'s release, before its checkpoint: what a crash
    there leaves behind (the ledger records the release; the checkpoint does not)."""

    def __init__(self, last: int):
        self.last = last

    def after_release(self, r: int) -> None:
        if r == self.last:
            raise StopRun(f"stopped after the release of round {r + 1}")


class Witness(StopAfterRelease):
    """Keeps ``inputs[r]``: each client's encoded input of rounds 0..last, then stops the run."""

    def __init__(self, last: int):
        super().__init__(last)
        self.inputs: dict[int, dict[int, np.ndarray]] = {}

    def on_inputs(self, r: int, words: Mapping[int, np.ndarray]) -> None:
        if r <= self.last:
            self.inputs[r] = dict(words)
