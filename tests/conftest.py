import json
import os
from pathlib import Path

import pytest

# One torch thread for the whole suite, set before any test module imports torch (fl_core.run sets
# the same on its first call, so most tests already ran so): the suite's models are tiny, and on a
# busy 2-core machine two threads made a DP-SGD step several times slower (tests/dp/test_opacus_adapter.py
# 11 s -> 2 s). Subprocesses the tests start inherit it. An OMP_NUM_THREADS already set is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

VECTORS = Path(__file__).parent / "vectors"


def load_vectors(name: str):
    return json.loads((VECTORS / name).read_text())


@pytest.fixture
def vectors():
    return load_vectors
