"""Digits on Flower with our secure aggregation and distributed DP (see docs/flower.md)."""
