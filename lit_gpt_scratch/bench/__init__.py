"""Benchmarks: scripts that print figures; results go to the README / BENCHMARKS.md."""
