"""Dockyard's benchmarks: `scripts/bench` (or `python -m bench`) runs them and rewrites bench/RESULTS.md.

Benchmarks are not tests: a missed target is reported, never a failure."""
