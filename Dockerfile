# ingestd: slim Python, non-root, health from /readyz when the health port is enabled.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ingestd ./ingestd
RUN pip install --no-cache-dir --prefix=/install '.[nats]'

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
VOLUME ["/data"]
ENTRYPOINT ["ingestd"]
CMD ["--symbols", "BTCUSDT"]
