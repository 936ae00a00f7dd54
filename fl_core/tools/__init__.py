"""Tools, not the library: benchmarks, campaigns, demos and harnesses. Nothing in `fl_core` imports
them; each keeps its `python -m` command through a shim of the old module name."""
