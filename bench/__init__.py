"""Benchmarks: ingestd against the receive ceiling and against cryptofeed (``python -m bench.run``)."""
