"""Benchmarks: each prints a table; `make bench` (python -m bench) runs them all. Loopback only."""
