"""Masks on every core: keystream expansion and client work on one shared thread pool.

``cryptography``'s AES-CTR ``update_into`` and numpy's add release the GIL, so threads expand
keystream in parallel. ``add_masks`` shares the accumulator's chunks (``prg.CHUNK_WORDS`` words)
among the calling thread and up to ``workers - 1`` helper tasks on the pool: each walks a run of
consecutive chunks front to back with one set of AES-CTR streams started at the run's counter
block (``prg.MaskStreams``), and a helper that starts, or a thread whose run is done, takes the
back half of the longest run left. So the words are exactly those of ``prg.add_masks`` on the
whole array, every chunk is masked once by one thread (no locks on the data), the work stays
balanced to within a chunk even when a thread is slowed, and streams are only set up again where
a run is split. No d-word buffer is made: the extra memory is one chunk buffer (256 KiB) per
thread masking, so at most ``workers`` of them.

The caller masks too and waits only for helpers that have started; helpers still queued are
cancelled. So masking inside a pool task (the simulator runs clients concurrently) never waits on
the pool: when the other workers are busy with other clients the task masks alone, and when one
falls idle (the last clients of a batch) it picks up the helper and takes half the rest.

Workers default to the cores this process may run on (``os.sched_getaffinity``), overridden by
the ``SECAGG_WORKERS`` environment variable or, for a block of code, ``with masking.workers(n)``.
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
    if getattr(_in_pool, "size", None) is not None:
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


def _mark(size: int) -> None:
    _in_pool.size = size  # this thread is a worker of the pool of ``size``


def _pool(n: int) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get(n)
        if pool is None:
            pool = _pools[n] = ThreadPoolExecutor(n, thread_name_prefix="secagg-mask", initializer=_mark,
                                                  initargs=(n,))
        return pool


def imap(fn: Callable[[T], R], items: Sequence[T], *, workers: int | None = None) -> Iterator[R]:
    """fn(x) for each x, all submitted to the pool at once, yielded in order as each is ready (the
    caller can use the first while the rest run). An error is re-raised when its result is reached.
    Inside a pool task it runs inline (a task never waits on the pool)."""
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


class ChunkRuns:
    """The chunks [0, count) of one accumulator, handed out as runs of consecutive chunks.

    ``take(run)`` gives the run's next chunk (None when it is done); ``split()`` cuts the back half
    off the longest run left and returns it as a new run (None when no run has two chunks left).
    Every chunk is given out exactly once."""

    def __init__(self, count: int):
        self._lock = threading.Lock()
        self._first = [0, count]
        self._runs = [self._first]  # [next, stop) of each run not yet done

    def first(self) -> list[int]:
        """The run the caller starts with: all the chunks, less what helpers split off."""
        return self._first

    def take(self, run: list[int]) -> int | None:
        with self._lock:
            if run[0] >= run[1]:
                return None
            run[0] += 1
            return run[0] - 1

    def split(self) -> list[int] | None:
        with self._lock:
            longest = max(self._runs, key=lambda r: r[1] - r[0])
            left = longest[1] - longest[0]
            if left < 2:
                return None
            new = [longest[1] - left // 2, longest[1]]
            longest[1] = new[0]
            self._runs = [r for r in self._runs if r[0] < r[1]] + [new]
            return new


def _mask_runs(acc: np.ndarray, runs: ChunkRuns, run: list[int] | None, plus, minus, bits: int) -> None:
    """Mask the chunks of ``run``, then of runs split off others, until none is left."""
    chunk = prg.CHUNK_WORDS
    while run is not None:
        streams = None
        while (c := runs.take(run)) is not None:
            if streams is None:  # the run's chunks are consecutive: one set of streams for them all
                streams = prg.MaskStreams(plus, minus, bits=bits, offset=c * chunk)
            streams.add_next(acc[c * chunk:(c + 1) * chunk])
        run = runs.split()


def add_masks(acc: np.ndarray, *, plus: Sequence[bytes] = (), minus: Sequence[bytes] = (), bits: int,
              workers: int | None = None) -> None:
    """``prg.add_masks`` (same words, same errors) with the chunks of ``acc`` shared among the caller
    and up to ``workers - 1`` pool threads. Inside a pool task the helpers are that pool's."""
    n = current_workers(workers)
    size = getattr(_in_pool, "size", None)
    if size is not None:  # a pool task: idle workers of its own pool may help
        n = size if workers is None else min(workers, size)
    prg.check_accumulator(acc, bits)
    count = -(-acc.shape[0] // prg.CHUNK_WORDS)
    if n == 1 or count < 2 or not (plus or minus):
        prg.add_masks(acc, plus=plus, minus=minus, bits=bits)
        return
    prg.MaskStreams(plus, minus, bits=bits, chunk_words=1)  # checks the seeds before any chunk is touched
    runs = ChunkRuns(count)
    helpers = [_pool(size or n).submit(lambda: _mask_runs(acc, runs, runs.split(), plus, minus, bits))
               for _ in range(min(n, count) - 1)]
    try:
        _mask_runs(acc, runs, runs.first(), plus, minus, bits)
    finally:
        started = [f for f in helpers if not f.cancel()]
        for f in started:
            f.exception()  # wait: a started helper is writing into acc
    for f in started:
        if f.exception() is not None:
            raise f.exception()
