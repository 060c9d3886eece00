"""Benchmarks: run, not asserted (`make bench`)."""
