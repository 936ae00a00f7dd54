"""Masks on every core: keystream expansion and client work on one shared thread pool.

``cryptography``'s AES-CTR ``update_into`` and numpy's add release the GIL, so threads expand
keystream in parallel. ``add_masks`` splits the accumulator into contiguous, chunk-aligned slices
and masks each slice in a task, every seed's keystream started at the slice's counter block: the
words are exactly those of ``prg.add_masks`` on the whole array, the slices are disjoint (no locks),
and no d-word buffer is made: the extra memory is one chunk buffer (``prg.CHUNK_WORDS`` words,
256 KiB) per running task, so at most ``workers`` of them.

Workers default to the cores this process may run on (``os.sched_getaffinity``), overridden by
the ``SECAGG_WORKERS`` environment variable or, for a block of code, ``with masking.workers(n)``.
Work handed to the pool that itself masks (the simulator runs clients concurrently) runs its masks
inline, so the pool never waits on itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from .errors import ConfigError
from .hazmat import prg

T = TypeVar("T")
R = TypeVar("R")

_override: contextvars.ContextVar[int | None] = contextvars.ContextVar("secagg_workers", default=None)
_in_pool = threading.local()
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
#: Slices per worker: a few, so a worker delayed by another process does not hold up the rest.
SLICES_PER_WORKER = 2


def _check(n, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"{what} must be a positive integer, got {n!r}")
    return n


def default_workers() -> int:
    """SECAGG_WORKERS if set, else the number of cores this process may use."""
    env = os.environ.get("SECAGG_WORKERS")
    if env:
        try:
            return _check(int(env), "SECAGG_WORKERS")
        except ValueError:
            raise ConfigError(f"SECAGG_WORKERS must be a positive integer, got {env!r}") from None
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def current_workers(requested: int | None = None) -> int:
    """Workers masking may use here: 1 inside a pool task (the pool never waits on itself), else
    ``requested``, the ``workers(n)`` block's n, or the default."""
    if requested is not None:
        _check(requested, "workers")
    if getattr(_in_pool, "yes", False):
        return 1
    n = requested if requested is not None else _override.get()
    return default_workers() if n is None else n


@contextlib.contextmanager
def workers(n: int) -> Iterator[None]:
    """Use ``n`` workers for masking and concurrent clients inside the block (1: single-threaded)."""
    token = _override.set(_check(n, "workers"))
    try:
        yield
    finally:
        _override.reset(token)


def _mark() -> None:
    _in_pool.yes = True


def _pool(n: int) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get(n)
        if pool is None:
            pool = _pools[n] = ThreadPoolExecutor(n, thread_name_prefix="secagg-mask", initializer=_mark)
        return pool


def imap(fn: Callable[[T], R], items: Sequence[T], *, workers: int | None = None) -> Iterator[R]:
    """fn(x) for each x, all submitted to the pool at once, yielded in order as each is ready (the
    caller can use the first while the rest run). An error is re-raised when its result is reached."""
    n = current_workers(workers)
    if n == 1 or len(items) < 2:
        for x in items:
            yield fn(x)
        return
    futures = [_pool(n).submit(fn, x) for x in items]
    try:
        for f in futures:
            yield f.result()
    finally:
        for f in futures:
            f.cancel()


def slices(dim: int, n: int, *, chunk: int = prg.CHUNK_WORDS) -> list[tuple[int, int]]:
    """[start, stop) ranges covering [0, dim): at most n, each but the last a multiple of ``chunk``."""
    if dim <= 0:
        return [(0, 0)]
    chunks = -(-dim // chunk)
    per = -(-chunks // max(1, min(n, chunks)))
    return [(a * chunk, min(dim, (a + per) * chunk)) for a in range(0, chunks, per)]


def add_masks(acc: np.ndarray, *, plus: Sequence[bytes] = (), minus: Sequence[bytes] = (), bits: int,
              workers: int | None = None) -> None:
    """``prg.add_masks`` (same words, same errors) with the slices of ``acc`` masked concurrently."""
    n = current_workers(workers)
    d = acc.shape[0] if acc.ndim == 1 else 0
    if n == 1 or d < 2 * prg.CHUNK_WORDS or not (plus or minus):
        prg.add_masks(acc, plus=plus, minus=minus, bits=bits)
        return
    prg.add_masks(acc[:0], plus=plus, minus=minus, bits=bits)  # checks dtype, layout, seeds up front
    parts = slices(d, n * SLICES_PER_WORKER)

    def one(part: tuple[int, int]) -> None:
        a, b = part
        prg.add_masks(acc[a:b], plus=plus, minus=minus, bits=bits, offset=a)

    for f in [_pool(n).submit(one, p) for p in parts]:
        f.result()
