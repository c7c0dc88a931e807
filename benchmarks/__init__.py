"""Performance benchmarks of ekd (``make bench`` → docs/benchmarks.md). Run: ``python -m benchmarks.run``."""
