"""Our secure aggregation on a fixed update: the twin of ../baseline for benchmarks/flower_compare.py."""
