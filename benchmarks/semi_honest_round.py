"""One semi-honest round as `python -m secagg.bench` runs it at n=100, d=10^6 ((k, t) = (16, 6), 10 %
dropout over stages 1-4, 2 workers), printing wall and CPU seconds as one JSON line. For an A/B of
two versions, run it alternately with PYTHONPATH at each checkout (under the bench lock):

    for i in 1 2 3 4; do for tree in /path/to/old /path/to/new; do
        (cd $tree && PYTHONPATH=$tree python /path/to/benchmarks/semi_honest_round.py); done; done

CPU seconds (``time.process_time`` of the whole ``simulate`` call, input generation included on both
sides) move much less with other jobs on the machine than wall-clock seconds do.
"""

import json
import time

import numpy as np

from secagg import wire
from secagg.config import GraphKind, RoundConfig
from secagg.simulate import DropoutSchedule, ProtocolStage, Transcript, simulate

N, DIM, BITS = 100, 1_000_000, 32


def main() -> None:
    cfg = RoundConfig.new(client_ids=range(N), dim=DIM, bits=BITS, threshold=6, min_survivors=89,
                          graph=GraphKind.SPARSE, k=16)
    dtype = wire.word_dtype(BITS)

    def make_input(u):
        return np.random.default_rng([0, u]).integers(0, 2**BITS, size=DIM, dtype=np.uint64).astype(dtype)
    schedule = DropoutSchedule.random(cfg.client_ids, fraction=0.1, rng=np.random.default_rng(0),
                                      stages=(ProtocolStage.SHARES, ProtocolStage.MASKED_INPUT, ProtocolStage.UNMASK))
    w0, c0 = time.perf_counter(), time.process_time()
    res = simulate(cfg, make_input, dropouts=schedule, transcript=Transcript.NONE, workers=2)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    print(json.dumps({"round_seconds": res.round_seconds, "wall": wall, "cpu": cpu, "survivors": len(res.survivors)}))


if __name__ == "__main__":
    main()
