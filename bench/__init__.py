"""Benchmarks of dat-lightning's stage-two step (``make bench`` = ``python -m bench.run``); not tests."""
