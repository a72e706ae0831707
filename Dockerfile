# ingestd: two stages on python:3.11-slim. The build stage has a C compiler and the Python
# headers (a C extension compiles there); the final stage gets only the installed result: no
# compiler, no pip cache, no test dependencies. Runs as the non-root user `ingestd` (uid 10001).
# Liveness HEALTHCHECK on /healthz (docs/operations.md, "Docker"). `make docker-check` builds
# this image and runs it against `ingestd sim`.
FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python -c "import pathlib, sysconfig; h = pathlib.Path(sysconfig.get_paths()['include'], 'Python.h'); assert h.is_file(), f'no {h}'"
WORKDIR /src
# Dependencies first, read from pyproject.toml, in their own layer: a change to the source then
# reinstalls only ingestd itself, not pyarrow & co.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['nats']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir --root-user-action=ignore --prefix=/install -r /tmp/requirements.txt
COPY README.md ./
COPY ingestd ./ingestd
# The compiled speed-ups are optional for pip (a machine without gcc still installs); the image
# must have them, so a build that fell back to pure Python fails here. The check runs outside
# /src, so that it imports the installed package, not the source tree (which has no .so).
RUN pip install --no-cache-dir --root-user-action=ignore --no-deps --prefix=/install . \
    && cd / && PYTHONPATH=/install/lib/python3.11/site-packages python -c "import ingestd.book._cbook, ingestd.consumers._ccolumns"

FROM python:3.11-slim
RUN useradd --system --create-home --uid 10001 ingestd \
    && mkdir -p /data && chown ingestd /data
COPY --from=build /install /usr/local
COPY config.yaml /etc/ingestd/config.yaml
USER ingestd
WORKDIR /data
ENV INGESTD_CONFIG=/etc/ingestd/config.yaml \
    INGESTD_STORAGE__DATA_DIR=/data \
    INGESTD_LOG__FORMAT=json
# A named volume starts as a copy of this directory, owned by `ingestd`; a bind-mounted host
# directory must be writable by uid 10001.
VOLUME ["/data"]
# Liveness, not readiness: healthy while /healthz answers 200 (the event loop answers and the
# intake makes progress, or backs off correctly from an unreachable venue). A quiet or silent
# stream makes /readyz 503 and is reported there and in the metrics, but never marks the
# container unhealthy: an orchestrator restarting on it would re-snapshot every book for nothing.
# Asked inside the container, so the endpoint stays on 127.0.0.1; urllib instead of curl (not in
# the slim image). A 503 or no answer raises, and a non-zero exit counts as a failure. With
# health.port 0 (off) there is nothing to ask: disable the check (`--no-healthcheck`, or
# `healthcheck: {disable: true}` in compose, as for `ingestd tail`, which serves no endpoint).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('INGESTD_HEALTH__PORT', '9108'), timeout=4)"]
ENTRYPOINT ["ingestd"]
CMD ["--symbols", "BTCUSDT"]
