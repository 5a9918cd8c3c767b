"""Benchmarks: reference measurements (`reference`) that `edged bench` reports beside its own."""
