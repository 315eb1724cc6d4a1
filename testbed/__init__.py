"""Real services and helpers shared by the tests and the benchmark harness.

Both `tests` and `bench` import this package; it imports neither of them.
"""
