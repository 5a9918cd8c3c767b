"""Benchmarks: reference measurements (`reference`) that `edged bench` reports beside its own."""

# The end-to-end runs of `edged bench`, in the order they are reported (memory runs first, right after
# the inference ceiling it is judged by; see edged.bench.suite.run_suite).
SCENARIOS = ("max", "memory", "live", "overload", "idle")
