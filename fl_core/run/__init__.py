"""The run layer: the training loop (``loop``), the privacy plan per DP mode (``privacy``), the run
directory (``rundir``), setup, checkpoints, reports and the canaries recorder.

This package is also callable: ``fl_core.run(config, out_dir, *, model=None, data=None,
resume=False, ...)`` is ``fl_core.run.loop.run`` (see there). The package and the function share
the name ``fl_core.run``, so the package calls the function rather than one hiding the other
depending on which was imported first; the loop (and torch) load on the first call."""

import sys
import types


class _CallableRun(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from fl_core.run.loop import run

        return run(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableRun
