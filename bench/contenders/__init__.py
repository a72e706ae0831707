"""The processes the benchmark measures; each writes one result JSON (see :mod:`bench.results`)."""
