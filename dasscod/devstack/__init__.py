"""Embedded defaults for the demo, the benchmark and the tests: local test services.

Nothing here is imported by the daemon's runtime code.
"""
