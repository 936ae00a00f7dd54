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


# A run's plots.png is 0.2 s of matplotlib (69 runs: 13 s of the suite). The modules and tests
# marked `plots` draw it (tests/fl_core/run/test_runreport.py checks the figure, its panels and the
# report that lists it; test_run.py the files of a run); everywhere else a run writes report.md
# without the figure.
_DRAW_PLOTS = [False]


def pytest_configure(config):
    config.addinivalue_line("markers", "plots: draws a run's plots.png (other tests' runs skip the figure)")


@pytest.fixture(scope="session", autouse=True)
def _plots_only_where_checked():
    from fl_core.run import runreport

    real = runreport.write_report

    def write_report(run_dir, *, plots=True):
        return real(run_dir, plots=plots and _DRAW_PLOTS[0])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runreport, "write_report", write_report)
        yield


def _draw_plots_while(request):
    before = _DRAW_PLOTS[0]
    _DRAW_PLOTS[0] = request.node.get_closest_marker("plots") is not None
    yield
    _DRAW_PLOTS[0] = before


# module scope too: a marked module's shared runs (module fixtures, set up before a test's own) draw
_draw_plots_in_marked_modules = pytest.fixture(scope="module", autouse=True)(_draw_plots_while)
_draw_plots_in_marked_tests = pytest.fixture(autouse=True)(_draw_plots_while)
