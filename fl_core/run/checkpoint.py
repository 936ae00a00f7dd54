"""Checkpoints written atomically and verified before anything in them is parsed.

File ``<dir>/checkpoint.flck``::

    magic  b"FLCKPT01"          8 bytes
    length of payload           8 bytes, big-endian
    SHA-256 of payload          32 bytes
    payload = u64 json length | json | npz

The JSON is the state tree with every array replaced by ``{"__array__": i, "kind": ...}``; the
arrays are in the npz (read with ``allow_pickle=False``). Nothing is unpickled, so a checkpoint
cannot run code. A file cut short, padded or altered fails the length or digest check and raises
``CheckpointError`` before any of it is decoded. (The digest detects corruption, not a forger: it
has no key. Keep checkpoints where only the run can write.)

State may hold: dict (str keys), list, tuple, str, int (any size), float, bool, None, numpy
arrays and scalars, torch tensors (CPU copies; loaded back as tensors). Tuples and the types of
arrays survive the round trip exactly.

Writing: temp file in the same directory, write, fsync, ``os.replace`` over the old checkpoint,
fsync the directory. A crash at any point leaves either the old checkpoint or the new one, whole.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fl_core.errors import CheckpointError
from fl_core.run import rundir

__all__ = [
    "CHECKPOINT_NAME",
    "save_checkpoint",
    "load_checkpoint",
    "has_checkpoint",
    "encode_state",
    "decode_state",
    "get_rng_states",
    "set_rng_states",
]

CHECKPOINT_NAME = rundir.CHECKPOINT_FILE  # "checkpoint.flck"
MAGIC = b"FLCKPT01"
_HEADER = struct.Struct(">8sQ32s")
_RESERVED = ("__array__", "__tuple__")


def _encode_tree(obj: Any, arrays: list[np.ndarray], path: str) -> Any:
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        try:
            a = t.numpy()
        except TypeError as e:  # e.g. bfloat16 has no numpy dtype
            raise CheckpointError(f"{path}: tensor dtype {t.dtype} cannot be stored ({e})") from None
        arrays.append(np.array(a, copy=True))
        return {"__array__": len(arrays) - 1, "kind": "torch"}
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise CheckpointError(f"{path}: object arrays cannot be stored")
        arrays.append(np.array(obj, copy=True))
        return {"__array__": len(arrays) - 1, "kind": "numpy"}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode_tree(v, arrays, f"{path}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode_tree(v, arrays, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{path}: dict keys must be str, got {k!r}")
            if k in _RESERVED:
                raise CheckpointError(f"{path}: key {k!r} is reserved by the checkpoint format")
            out[k] = _encode_tree(v, arrays, f"{path}.{k}")
        return out
    raise CheckpointError(f"{path}: cannot store a {type(obj).__name__}")


def _decode_tree(obj: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(obj, list):
        return [_decode_tree(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if "__array__" in obj:
            a = arrays[f"a{obj['__array__']}"]
            return torch.from_numpy(a) if obj.get("kind") == "torch" else a
        if "__tuple__" in obj:
            return tuple(_decode_tree(v, arrays) for v in obj["__tuple__"])
        return {k: _decode_tree(v, arrays) for k, v in obj.items()}
    return obj


def encode_state(state: Mapping[str, Any]) -> bytes:
    """The whole file's bytes for ``state`` (header, digest, payload)."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"state must be a dict, got {type(state).__name__}")
    arrays: list[np.ndarray] = []
    tree = _encode_tree(state, arrays, "state")
    meta = json.dumps(tree, separators=(",", ":"), allow_nan=True).encode()
    buf = io.BytesIO()
    np.savez(buf, **{f"a{i}": a for i, a in enumerate(arrays)})
    payload = struct.pack(">Q", len(meta)) + meta + buf.getvalue()
    return _HEADER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest()) + payload


def decode_state(blob: bytes) -> dict[str, Any]:
    """Verify length and digest first, then decode; any failure is ``CheckpointError``."""
    if len(blob) < _HEADER.size:
        raise CheckpointError(f"checkpoint is {len(blob)} bytes, shorter than its {_HEADER.size}-byte header")
    magic, length, digest = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise CheckpointError(f"not a checkpoint of this format (magic {magic!r}, expected {MAGIC!r})")
    payload = blob[_HEADER.size:]
    if len(payload) != length:
        raise CheckpointError(f"checkpoint payload is {len(payload)} bytes, header says {length}: "
                              "the file was cut short or extended")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError("checkpoint SHA-256 digest does not match: the file was altered or corrupted")
    try:
        (n_meta,) = struct.unpack_from(">Q", payload)
        tree = json.loads(payload[8:8 + n_meta])
        with np.load(io.BytesIO(payload[8 + n_meta:]), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        return _decode_tree(tree, arrays)
    except Exception as e:  # noqa: BLE001 - a verified file that still fails to decode is a bug or a forgery
        raise CheckpointError(f"checkpoint passed its digest but cannot be decoded: {e}") from e


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the replace is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(directory: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``state`` atomically to ``<directory>/checkpoint.flck`` (created if missing); return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    blob = encode_state(state)
    final = directory / CHECKPOINT_NAME
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".checkpoint-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)
    return final


def has_checkpoint(directory: str | os.PathLike) -> bool:
    return (Path(directory) / CHECKPOINT_NAME).is_file()


def load_checkpoint(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and verify ``<directory>/checkpoint.flck``; ``CheckpointError`` if absent or damaged."""
    path = Path(directory) / CHECKPOINT_NAME
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {str(path)!r}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {e}") from e
    try:
        return decode_state(blob)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is damaged: {e}. {DAMAGED_ADVICE}") from e


#: What a user can do about a damaged checkpoint (the run directory's privacy ledger is kept either way).
DAMAGED_ADVICE = ("Restore the file from a backup and resume, or start a new run in another directory "
                  "(`fl-core run --config FILE --out NEW_DIR`); the privacy already spent stays recorded in "
                  "the run directory's privacy_ledger.jsonl.")


# --------------------------------------------------------------------------- RNG states


def get_rng_states(generators: Mapping[str, np.random.Generator | torch.Generator] | None = None) -> dict[str, Any]:
    """Capture python's ``random``, numpy's legacy global, torch's global CPU RNG, and each named
    generator, as checkpointable state (``set_rng_states`` restores them)."""
    version, internal, gauss = random.getstate()
    out: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss},
        "numpy_global": _np_legacy_state(),
        "torch_global": torch.get_rng_state(),
        "generators": {},
    }
    for name, g in (generators or {}).items():
        if isinstance(g, np.random.Generator):
            out["generators"][name] = {"kind": "numpy", "state": g.bit_generator.state}
        elif isinstance(g, torch.Generator):
            out["generators"][name] = {"kind": "torch", "state": g.get_state()}
        else:
            raise CheckpointError(f"generator {name!r} is a {type(g).__name__}, not a numpy or torch Generator")
    return out


def _np_legacy_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"kind": kind, "keys": keys.copy(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def set_rng_states(state: Mapping[str, Any],
                   generators: Mapping[str, np.random.Generator | torch.Generator] | None = None) -> None:
    """Restore what ``get_rng_states`` captured; each named generator must be in ``state`` and of
    the same kind (numpy generators also of the same bit generator)."""
    try:
        py = state["python"]
        random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
        g = state["numpy_global"]
        np.random.set_state((g["kind"], np.asarray(g["keys"], dtype=np.uint32), g["pos"], g["has_gauss"], g["cached"]))
        torch.set_rng_state(torch.as_tensor(state["torch_global"], dtype=torch.uint8))
        saved = state["generators"]
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"RNG state is malformed: {e!r}") from e
    for name, gen in (generators or {}).items():
        if name not in saved:
            raise CheckpointError(f"RNG state has no generator {name!r} (has {sorted(saved)})")
        entry = saved[name]
        try:
            if isinstance(gen, np.random.Generator) and entry["kind"] == "numpy":
                gen.bit_generator.state = entry["state"]
            elif isinstance(gen, torch.Generator) and entry["kind"] == "torch":
                gen.set_state(torch.as_tensor(entry["state"], dtype=torch.uint8))
            else:
                raise CheckpointError(f"generator {name!r} is a {type(gen).__name__} but the state is {entry['kind']!r}")
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"cannot restore generator {name!r}: {e!r}") from e
