"""Benchmark scripts: run them as `python -m benchmarks.<name> --help` from the repository root."""
