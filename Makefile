# The README's commands. `make demo` and `make test` work on a fresh clone (Python >= 3.11).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo live test lint bench soak docker-check clean

# The compiled speed-ups are rebuilt (pip install -e) when their C sources change.
$(STAMP): pyproject.toml $(wildcard ingestd/*/*.c)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,nats,nautilus]'
	touch $(STAMP)

install: $(STAMP)

## Offline demo: `ingestd sim` replays a real capture, ingestd ingests it into ./demo-data.
demo: $(STAMP)
	bash deploy/demo.sh

## Live: USDⓈ-M BTCUSDT from Binance, summary line only (needs internet).
live: $(STAMP)
	$(BIN)/ingestd --symbols BTCUSDT --no-storage

lint: $(STAMP)
	$(BIN)/ruff check ingestd tests bench
	$(BIN)/ruff format --check ingestd tests bench
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.run

## Soak: the sim loops the bundled capture, ingestd stores it; memory, handles and counts checked.
soak: $(STAMP)
	$(BIN)/python -m bench.soak --minutes 10

## Docker: build the image, run it against `ingestd sim`, stop it, check its data and health.
## deploy/docker-python-base.sh starts dockerd and makes the python:3.11-slim base offline.
docker-check: $(STAMP)
	bash deploy/docker-python-base.sh
	$(BIN)/python -m tests.docker_check

clean:
	rm -rf $(VENV) demo-data .mypy_cache .ruff_cache .pytest_cache
