"""Benchmarks: scripts that print figures; the figures, with their devices, are in BENCHMARKS.md."""
