"""Masks on a thread pool (secagg.masking): the same words as one thread, bounded memory, configurable."""

import threading
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from secagg import masking, wire
from secagg.config import RoundConfig
from secagg.errors import ConfigError, InputError
from secagg.hazmat import prg
from secagg.messages import MaskedInput
from secagg.simulate import DropoutSchedule, Transcript, plain_sum, simulate

C = prg.CHUNK_WORDS
SEEDS = [bytes([i + 1]) * 32 for i in range(5)]


def serial(dim, bits, plus, minus):
    acc = np.arange(dim, dtype=wire.word_dtype(bits)) % (1 << min(bits, 31))
    prg.add_masks(acc, plus=plus, minus=minus, bits=bits)
    return acc


@pytest.mark.parametrize("bits", [32, 20, 62])
@pytest.mark.parametrize("dim", [2 * C, 2 * C + 1, 5 * C + 7])
@pytest.mark.parametrize("workers", [2, 3, 8])
def test_pool_masks_equal_one_thread(bits, dim, workers):
    want = serial(dim, bits, SEEDS[:3], SEEDS[3:])
    acc = np.arange(dim, dtype=wire.word_dtype(bits)) % (1 << min(bits, 31))
    masking.add_masks(acc, plus=SEEDS[:3], minus=SEEDS[3:], bits=bits, workers=workers)
    assert np.array_equal(acc, want)


@pytest.mark.parametrize("bits", [32, 62])
def test_offset_slice_is_that_slice_of_the_whole_keystream(bits):
    whole = prg.expand(SEEDS[0], 3 * C, bits)
    per_block = 16 // wire.word_dtype(bits).itemsize
    for a, b in [(C, 2 * C + 5), (per_block, 7), (2 * C, 3 * C)]:
        part = np.zeros(b - a, dtype=wire.word_dtype(bits))
        prg.add_masks(part, plus=[SEEDS[0]], bits=bits, offset=a)
        assert np.array_equal(part, whole[a:b])


@pytest.mark.parametrize("offset", [-4, 3, 1.0])
def test_offset_not_on_a_block_is_refused(offset):
    with pytest.raises(InputError, match="offset"):
        prg.add_masks(np.zeros(8, dtype="<u4"), plus=[SEEDS[0]], bits=32, offset=offset)


@settings(max_examples=100, deadline=None)
@given(count=st.integers(1, 60), ops=st.lists(st.integers(0, 5), max_size=200))
def test_chunk_runs_give_out_every_chunk_once_in_consecutive_runs(count, ops):
    # op 0: a new helper splits a run off; else the op-th open run (mod how many) takes its next chunk
    runs = masking.ChunkRuns(count)
    open_runs, got = [runs.first()], {}
    for op in ops:
        if op == 0:
            before = [r[:] for r in open_runs]
            new = runs.split()
            if new is None:
                assert all(r[1] - r[0] < 2 for r in before)
            else:
                open_runs.append(new)
        elif open_runs:
            run = open_runs[op % len(open_runs)]
            c = runs.take(run)
            if c is None:
                open_runs.remove(run)
            else:
                assert c not in got
                got[c] = id(run)
    for run in open_runs:  # drain what is left
        while (c := runs.take(run)) is not None:
            assert c not in got
            got[c] = id(run)
    while (run := runs.split()) is not None:
        while (c := runs.take(run)) is not None:
            got[c] = id(run)
    assert sorted(got) == list(range(count))


def test_an_idle_worker_helps_a_pool_task_mask():
    """A client masking in a pool task while the other worker is idle gets help (the tail of a
    batch of clients): the task's first chunk waits until a second thread has masked a chunk."""
    helped, threads, calls = threading.Event(), set(), []
    real = prg.MaskStreams.add_next

    def add_next(self, part):
        threads.add(threading.get_ident())
        calls.append(1)
        if len(threads) > 1:
            helped.set()
        real(self, part)
        if len(calls) == 1:
            helped.wait(timeout=20)

    acc = np.arange(8 * C, dtype="<u4")
    want = serial(8 * C, 32, SEEDS[:2], SEEDS[2:3])

    def task(i):
        if i == 0:
            masking.add_masks(acc, plus=SEEDS[:2], minus=SEEDS[2:3], bits=32)
        return masking.current_workers()

    prg.MaskStreams.add_next = add_next
    try:
        inner = list(masking.imap(task, [0, 1], workers=2))
    finally:
        prg.MaskStreams.add_next = real
    assert helped.is_set() and len(threads) == 2
    assert inner == [1, 1]  # the task itself still sees one worker (it never waits on the pool)
    assert np.array_equal(acc, want)


def test_bad_inputs_raise_before_any_slice_is_touched():
    acc = np.zeros(3 * C, dtype="<u4")
    with pytest.raises(InputError, match="seed"):
        masking.add_masks(acc, plus=[SEEDS[0], b"short"], bits=32, workers=4)
    assert not acc.any()
    with pytest.raises(InputError, match="accumulator"):
        masking.add_masks(np.zeros(3 * C, dtype="<u8"), plus=SEEDS, bits=32, workers=4)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_workers_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError, match="workers"):
        with masking.workers(bad):
            pass
    with pytest.raises(ConfigError, match="workers"):
        masking.add_masks(np.zeros(4, dtype="<u4"), plus=SEEDS, bits=32, workers=bad)


def test_default_workers_are_this_process_cores_or_the_environment(monkeypatch):
    monkeypatch.delenv("SECAGG_WORKERS", raising=False)
    assert masking.default_workers() == len(__import__("os").sched_getaffinity(0))
    monkeypatch.setenv("SECAGG_WORKERS", "3")
    assert masking.current_workers() == 3
    with masking.workers(5):
        assert masking.current_workers() == 5
    assert masking.current_workers() == 3
    monkeypatch.setenv("SECAGG_WORKERS", "many")
    with pytest.raises(ConfigError, match="SECAGG_WORKERS.*many"):
        masking.default_workers()


def test_masking_inside_pool_tasks_runs_inline_and_does_not_deadlock():
    # more tasks than workers, each masking with "all" workers: would deadlock if tasks waited on the pool
    def task(i):
        acc = np.zeros(3 * C, dtype="<u4")
        masking.add_masks(acc, plus=SEEDS[:i + 1], bits=32, workers=2)
        return masking.current_workers(), acc

    got = []
    t = threading.Thread(target=lambda: got.extend(masking.imap(task, list(range(5)), workers=2)))
    t.start()
    t.join(timeout=60)
    assert not t.is_alive()
    for i, (inner, acc) in enumerate(got):
        assert inner == 1
        assert np.array_equal(acc, serial(3 * C, 32, SEEDS[:i + 1], []) - np.arange(3 * C, dtype="<u4"))


def test_pool_masking_memory_is_a_chunk_per_worker_not_a_vector():
    d, workers = 4_000_000, 4
    acc = np.zeros(d, dtype="<u4")
    masking.add_masks(acc, plus=SEEDS, bits=32, workers=workers)  # warm the pool outside the trace
    tracemalloc.start()
    try:
        masking.add_masks(acc, plus=SEEDS, minus=SEEDS[:2], bits=32, workers=workers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_thread = C * 4 + 16 * 1024     # one keystream buffer per thread masking, plus slack
    assert peak < workers * per_thread + (64 << 10)
    assert peak < d * 4 / 4            # far below one d-word vector


def test_masked_input_encodes_to_the_same_bytes_without_extra_copies():
    words = np.random.default_rng(0).integers(0, 2**32, size=1000, dtype=np.uint64).astype("<u4")
    msg = MaskedInput(bytes(32), 3, 32, words)
    data = wire.encode(msg)
    assert data.endswith(wire.pack_words(words, 32))
    assert np.array_equal(wire.decode(data).words, words)


@pytest.mark.parametrize("bits", [32, 20])
def test_round_sums_identical_with_one_and_many_workers_and_equal_the_plain_sum(bits):
    n, d = 8, 2 * C + 11  # long enough that masks are expanded in slices
    cfg = RoundConfig.new(client_ids=range(n), dim=d, bits=bits, threshold=3, min_survivors=4)
    rng = np.random.default_rng(7)
    inputs = {u: rng.integers(0, 2**bits, size=d, dtype=np.uint64).astype(wire.word_dtype(bits)) for u in range(n)}
    drops = DropoutSchedule.at(MASKED_INPUT={2}, UNMASK={5})
    sums = {}
    for w in (1, 4):
        res = simulate(cfg, inputs, dropouts=drops, transcript=Transcript.NONE, workers=w)
        assert res.aborted is None and res.survivors == (0, 1, 3, 4, 5, 6, 7)
        sums[w] = res.aggregate
    assert np.array_equal(sums[1], sums[4])
    assert np.array_equal(sums[4], plain_sum(inputs, (0, 1, 3, 4, 5, 6, 7), bits))
