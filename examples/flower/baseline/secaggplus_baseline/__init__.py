"""Flower's SecAgg+ on a fixed update: the baseline of benchmarks/flower_compare.py --engine."""
