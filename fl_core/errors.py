"""Errors raised by ``fl_core``; all of them are ``secagg.errors.SecAggError`` so one ``except`` catches
every error the library raises on purpose.
"""

from __future__ import annotations

from collections.abc import Iterable

from secagg.errors import SecAggError


class FLError(SecAggError):
    """Base class of the errors raised by ``fl_core``."""


class ConfigFieldError(FLError, ValueError):
    """One or more fields (of a run config, or arguments of a call) are invalid.

    ``problems`` is a list of ``(field path, problem)`` pairs, e.g. ``("data.alpha", "got -1.0; must
    be > 0")``; the message names every one, so a user fixes all of them in one go.
    """

    def __init__(self, problems: Iterable[tuple[str, str]]):
        self.problems: list[tuple[str, str]] = [(str(p), str(why)) for p, why in problems]
        if not self.problems:
            self.problems = [("?", "invalid value")]
        if len(self.problems) == 1:
            message = "invalid field {}: {}".format(*self.problems[0])
        else:
            message = f"{len(self.problems)} invalid fields:" + "".join(f"\n  {p}: {why}" for p, why in self.problems)
        super().__init__(message)

    @property
    def fields(self) -> list[str]:
        """The dotted paths of the bad fields, in the order found."""
        return [p for p, _ in self.problems]


class ConfigFileError(ConfigFieldError):
    """The config file cannot be read or parsed; the message names the file first ("cannot read
    FILE: why"), not a field. A ``ConfigFieldError`` so that one ``except`` still catches config errors."""

    def __init__(self, path: object, why: str):
        super().__init__([(str(path), why)])
        self.path = str(path)
        self.args = (f"cannot read {path}: {why}",)


class ShapeMismatchError(FLError, ValueError):
    """A vector or a state_dict does not match a model; ``layer`` names the first layer concerned."""

    def __init__(self, message: str, *, layer: str | None = None):
        self.layer = layer
        super().__init__(message)


class CheckpointError(FLError):
    """A checkpoint is missing, cut short, altered, or holds content we refuse to load."""


def bad_field(path: str, value: object, reason: str) -> ConfigFieldError:
    """The error for one bad argument: quotes the value and names the parameter."""
    return ConfigFieldError([(path, f"got {value!r:.200}; {reason}")])
