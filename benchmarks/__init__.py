"""Benchmarks of diffcli (not part of the package): ``python -m benchmarks run NAME|all``."""
