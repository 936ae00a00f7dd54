"""What our Flower messages carry: the names of our records, and a model's arrays as one vector."""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from secagg.errors import InputError

RECORD = "secagg"              # ConfigRecord with our bytes, in every message of ours
STATE_RECORD = "secagg-state"  # ConfigRecord in Context.state: {"state": bytes}

Layout = tuple[tuple[str, tuple[int, ...], str], ...]


def arrays_to_vector(record: ArrayRecord) -> tuple[np.ndarray, Layout]:
    """All arrays of ``record`` flattened into one float64 vector, and the layout to undo it."""
    parts, layout = [], []
    for key, arr in record.items():
        a = arr.numpy()
        if a.dtype.kind != "f":
            raise InputError(f"array {key!r} has dtype {a.dtype}: only floating arrays can be aggregated")
        parts.append(a.astype(np.float64).ravel())
        layout.append((key, tuple(a.shape), a.dtype.str))
    return (np.concatenate(parts) if parts else np.zeros(0)), tuple(layout)


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
    records = content.array_records
    if key is not None and key in records:
        return key, records[key]
    if len(records) != 1:
        raise InputError(f"expected one ArrayRecord (the model), found {sorted(records)}")
    return next(iter(records.items()))

