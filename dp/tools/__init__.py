"""Tools, not the library: benchmarks, campaigns, demos and harnesses. Nothing in `dp` imports
them; each keeps its `python -m` command through a shim of the old module name."""
