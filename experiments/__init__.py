"""Experiments: the demo, configs and benchmarks."""
