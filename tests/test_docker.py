"""The Docker image, built and run (``make docker-check``), wherever a docker engine answers.

Builds the repository's Dockerfile, runs ``ingestd sim`` and ingestd in two containers, stops the
daemon with ``docker stop`` and checks its exit code, the HEALTHCHECK, the files' owner and that
the Parquet holds every trade of the bundled capture (see ``tests/docker_check.py``). Without an
engine (``docker info`` fails) it is skipped with the reason; without a registry, run
``bash deploy/docker-python-base.sh`` once for the ``python:3.11-slim`` base.
"""

from __future__ import annotations

import pytest

from tests import docker_check


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a first build downloads the dependencies and a compiler
def test_image_builds_runs_stops_cleanly_and_stores_every_trade() -> None:
    reason = docker_check.engine_unavailable()
    if reason is not None:
        pytest.skip(reason)
    lines: list[str] = []
    docker_check.run_check("ingestd:check", lines.append)
    assert lines[-1].endswith("] passed"), lines
    assert any("Parquet holds every trade" in line for line in lines), lines
