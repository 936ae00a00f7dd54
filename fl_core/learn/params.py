"""A model's trainable parameters as one flat float32 vector, and back.

This is the one place where a torch model meets the vector world of ``secagg`` and the server
optimizers: a client's update is ``model_to_vector(trained) - model_to_vector(start)``.

Buffer policy: only *trainable parameters* (``requires_grad``) are in the vector. Buffers, such as
BatchNorm running statistics, are never aggregated: a client's buffers stay on the client and are
thrown away with its working copy, and the server's global model keeps its own buffers (as
initialized or pretrained). The models in ``fl_core.learn.models`` have no buffers at all; a model with
BatchNorm should use GroupNorm instead (Opacus cannot use BatchNorm either).

Personal layers (FedPer, Arivazhagan et al. 2019: shared body, personal head) are left out with
``exclude``: a tuple of name prefixes such as ``("head",)``; a prefix matches on module boundaries,
so ``"head"`` matches ``head.weight`` but not ``header.weight``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fl_core.errors import CheckpointError, ShapeMismatchError, bad_field

__all__ = [
    "ParamSpec",
    "model_to_vector",
    "vector_to_model",
    "load_pretrained",
    "matches_prefix",
    "named_trainable",
]


def matches_prefix(name: str, prefixes: Sequence[str]) -> bool:
    """True when ``name`` is one of ``prefixes`` or lies under one of them (``head`` -> ``head.w``)."""
    return any(name == p or name.startswith(p if p.endswith(".") else p + ".") for p in prefixes)


def _check_prefixes(exclude: Sequence[str]) -> tuple[str, ...]:
    if isinstance(exclude, str):  # a bare string would be read as its characters
        raise bad_field("exclude", exclude, "must be a tuple of name prefixes, not a string")
    out = tuple(exclude)
    for p in out:
        if not isinstance(p, str) or not p.strip("."):
            raise bad_field("exclude", exclude, "each prefix must be a non-empty string")
    return out


def named_trainable(model: nn.Module, *, exclude: Sequence[str] = ()) -> list[tuple[str, nn.Parameter]]:
    """The trainable parameters in ``named_parameters`` order, less the excluded prefixes.

    A prefix that matches no trainable parameter is an error: it is almost always a typo, and a
    silently ignored personal layer would leak to the server.
    """
    exclude = _check_prefixes(exclude)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    unused = [x for x in exclude if not any(matches_prefix(n, (x,)) for n, _ in params)]
    if unused:
        raise bad_field("exclude", exclude,
                        f"prefixes {unused} match no trainable parameter of {type(model).__name__}")
    return [(n, p) for n, p in params if not matches_prefix(n, exclude)]


@dataclass(frozen=True)
class ParamSpec:
    """Names, shapes and dtypes of the parameters in a vector, in vector order.

    Two parties agree on a vector layout exactly when their specs are equal; ``check`` says which
    layer differs.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def from_model(cls, model: nn.Module, *, exclude: Sequence[str] = ()) -> ParamSpec:
        named = named_trainable(model, exclude=exclude)
        return cls(names=tuple(n for n, _ in named),
                   shapes=tuple(tuple(p.shape) for _, p in named),
                   dtypes=tuple(str(p.dtype).removeprefix("torch.") for _, p in named))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    @property
    def numel(self) -> int:
        """Length of the flat vector."""
        return sum(self.sizes)

    def check(self, other: ParamSpec) -> None:
        """Raise ``ShapeMismatchError`` naming the first layer where ``other`` differs."""
        for i, name in enumerate(self.names):
            if i >= len(other.names):
                raise ShapeMismatchError(f"layer {name!r} is missing from the other model", layer=name)
            if other.names[i] != name:
                raise ShapeMismatchError(
                    f"layer {i} is {name!r} here but {other.names[i]!r} in the other model", layer=name)
            if other.shapes[i] != self.shapes[i]:
                raise ShapeMismatchError(
                    f"layer {name!r}: shape {self.shapes[i]} here but {other.shapes[i]} in the other model",
                    layer=name)
            if other.dtypes[i] != self.dtypes[i]:
                raise ShapeMismatchError(
                    f"layer {name!r}: dtype {self.dtypes[i]} here but {other.dtypes[i]} in the other model",
                    layer=name)
        if len(other.names) > len(self.names):
            extra = other.names[len(self.names)]
            raise ShapeMismatchError(f"the other model has an extra layer {extra!r}", layer=extra)

    def check_vector(self, vec: np.ndarray | torch.Tensor) -> None:
        """A vector for this spec is 1-D float32 of length ``numel``; anything else is refused."""
        shape = tuple(vec.shape)
        dtype = vec.dtype
        ok_dtype = dtype == np.float32 if isinstance(vec, np.ndarray) else dtype == torch.float32
        if not ok_dtype:
            raise ShapeMismatchError(f"parameter vector must be float32, got dtype {dtype}")
        if shape != (self.numel,):
            first = self.names[0] if self.names else None
            raise ShapeMismatchError(
                f"parameter vector must have shape ({self.numel},) for {len(self.names)} layers, "
                f"got shape {shape}", layer=first)


def model_to_vector(model: nn.Module, *, exclude: Sequence[str] = ()) -> np.ndarray:
    """Copy the trainable parameters (less ``exclude``) into a new float32 numpy vector."""
    named = named_trainable(model, exclude=exclude)
    if not named:
        return np.zeros(0, dtype=np.float32)
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1).to(device="cpu", dtype=torch.float32) for _, p in named])
    return flat.numpy().copy()


def vector_to_model(vec: np.ndarray | torch.Tensor, model: nn.Module, *, exclude: Sequence[str] = (),
                    spec: ParamSpec | None = None) -> None:
    """Write ``vec`` into the model's trainable parameters, in place.

    ``vec`` must be 1-D float32 with exactly one entry per parameter (``ShapeMismatchError``
    otherwise). With ``spec``, the model must also have that layout (so a vector built from one
    architecture cannot land silently in another of the same size). Buffers are not touched.
    """
    own = ParamSpec.from_model(model, exclude=exclude)
    if spec is not None:
        spec.check(own)
    if not isinstance(vec, (np.ndarray, torch.Tensor)):
        raise ShapeMismatchError(f"parameter vector must be a numpy array or torch tensor, got {type(vec).__name__}")
    own.check_vector(vec)
    src = torch.from_numpy(np.ascontiguousarray(vec)) if isinstance(vec, np.ndarray) else vec.detach().cpu()
    named = named_trainable(model, exclude=exclude)
    with torch.no_grad():
        for (_, p), chunk in zip(named, torch.split(src, own.sizes)):
            p.copy_(chunk.view(p.shape).to(dtype=p.dtype, device=p.device))


def load_pretrained(model: nn.Module, path: str | os.PathLike, *, exclude: Sequence[str] = ()) -> None:
    """Load a ``state_dict`` file (``torch.save(model.state_dict(), path)``) into ``model``, in place.

    Loaded with ``weights_only=True``: a file holding anything but tensors is refused. Every key of
    the model (less the ``exclude`` prefixes, e.g. a new head for another task) must be in the file
    with the same shape; a mismatch raises ``ShapeMismatchError`` naming the layer. Keys in the file
    that the model lacks are an error too (usually the wrong checkpoint). Nothing is changed unless
    every layer fits.
    """
    exclude = _check_prefixes(exclude)
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"pretrained state_dict file {os.fspath(path)!r} does not exist") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise CheckpointError(f"cannot read pretrained state_dict {os.fspath(path)!r}: {e}") from e
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{os.fspath(path)!r} does not hold a state_dict (a mapping name -> tensor)")
    target = {k: v for k, v in model.state_dict().items() if not matches_prefix(k, exclude)}
    for name, ref in target.items():
        if name not in state:
            raise ShapeMismatchError(f"layer {name!r} is missing from {os.fspath(path)!r}", layer=name)
        if tuple(state[name].shape) != tuple(ref.shape):
            raise ShapeMismatchError(
                f"layer {name!r}: checkpoint shape {tuple(state[name].shape)} != model shape {tuple(ref.shape)}",
                layer=name)
    extra = [k for k in state if k not in target and not matches_prefix(k, exclude)]
    if extra:
        raise ShapeMismatchError(f"layer {extra[0]!r} in {os.fspath(path)!r} is not in the model "
                                 f"({len(extra)} unexpected keys)", layer=extra[0])
    model.load_state_dict({k: state[k] for k in target}, strict=not exclude)
