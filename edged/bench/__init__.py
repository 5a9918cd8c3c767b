"""Benchmarks: reference measurements (`reference`) that `edged bench` reports beside its own."""

# The end-to-end runs of `edged bench`, in the order they run (see edged.bench.suite).
SCENARIOS = ("max", "memory", "live", "overload", "idle")
