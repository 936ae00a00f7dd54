"""What our Flower messages carry: the names of our records, and a model's arrays as one vector."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from secagg.errors import InputError

RECORD = "secagg"              # ConfigRecord with our bytes, in every message of ours
STATE_RECORD = "secagg-state"  # ConfigRecord in Context.state: {"state": bytes}

Layout = tuple[tuple[str, tuple[int, ...], str], ...]


def config_record(content: RecordDict, key: str = RECORD) -> ConfigRecord | None:
    """``content.config_records.get(key)`` without building that view of every record."""
    rec = content.get(key)
    return rec if isinstance(rec, ConfigRecord) else None


def float_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The arrays of ``record``, decoded; InputError if one is not floating (it cannot be aggregated)."""
    out = {}
    for key, arr in record.items():
        a = arr.numpy()
        if a.dtype.kind != "f":
            raise InputError(f"array {key!r} has dtype {a.dtype}: only floating arrays can be aggregated")
        out[key] = a
    return out


def _layout(arrays: Mapping[str, np.ndarray]) -> Layout:
    return tuple((key, tuple(a.shape), a.dtype.str) for key, a in arrays.items())


def arrays_to_vector(record: ArrayRecord) -> tuple[np.ndarray, Layout]:
    """All arrays of ``record`` flattened into one float64 vector, and the layout to undo it."""
    arrays = float_arrays(record)
    parts = [a.astype(np.float64).ravel() for a in arrays.values()]
    return (np.concatenate(parts) if parts else np.zeros(0)), _layout(arrays)


def update_vector(sent: Mapping[str, np.ndarray], trained: ArrayRecord) -> np.ndarray:
    """``trained - sent`` as one float64 vector (``arrays_to_vector`` of each, subtracted), made
    in one d-sized array; InputError if ``trained`` has another layout than ``sent``."""
    got = float_arrays(trained)
    if _layout(got) != _layout(sent):
        raise InputError("the train handler returned arrays of another layout than it was sent")
    out, pos = np.empty(sum(a.size for a in got.values())), 0
    for key, a in got.items():
        np.subtract(a.ravel(), sent[key].ravel(), out=out[pos:pos + a.size], dtype=np.float64)
        pos += a.size
    return out


def vector_to_arrays(vec: np.ndarray, layout: Layout) -> ArrayRecord:
    size = sum(math.prod(shape) for _, shape, _ in layout)
    if vec.shape != (size,):
        raise InputError(f"vector has shape {vec.shape}, the layout holds {size} values")
    out, pos = ArrayRecord(), 0
    for key, shape, dtype in layout:
        n = math.prod(shape)
        out[key] = Array(np.ascontiguousarray(vec[pos:pos + n].reshape(shape).astype(dtype)))
        pos += n
    return out


def model_record(content: RecordDict, key: str | None = None) -> tuple[str, ArrayRecord]:
    """The model in ``content``: the ArrayRecord named ``key``, else its only one."""
    records = {k: r for k, r in content.items() if isinstance(r, ArrayRecord)}
    if key is not None and key in records:
        return key, records[key]
    if len(records) != 1:
        raise InputError(f"expected one ArrayRecord (the model), found {sorted(records)}")
    return next(iter(records.items()))

