"""Settings: modelled once, validated at load, frozen.

Precedence, lowest first: built-in defaults < ``config.yaml`` < environment ``INGESTD_*`` < CLI
flags. Environment keys use ``__`` for nesting: ``INGESTD_STORAGE__DATA_DIR=/srv/data``,
``INGESTD_SYMBOLS=BTCUSDT,ETHUSDT``. Two ``INGESTD_*`` variables are not settings:
``INGESTD_CONFIG`` names the config file (when ``--config`` is not given) and ``INGESTD_API_KEY``
is ``ingestd collect``'s key. Any mistake is a :class:`ConfigError` whose message is one
line naming the key, what was given and what is allowed; the CLI turns it into exit code 2
before anything connects.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ingestd.channels import Source
from ingestd.consumers.nats import NatsSettings
from ingestd.errors import ConfigError
from ingestd.producers.backfill import BackfillSettings
from ingestd.producers.discovery import DiscoverySettings
from ingestd.producers.pollers import PollerSettings
from ingestd.shard import ShardSpec
from ingestd.venues.binance.channels import SELECTABLE, TABLES

ENV_PREFIX = "INGESTD_"
CONFIG_ENV = "INGESTD_CONFIG"
"""The config file's path when ``--config`` is not given (read by the CLI, not a setting)."""
ENV_NOT_SETTINGS = frozenset({CONFIG_ENV, "INGESTD_API_KEY", "INGESTD_NO_EXTENSIONS"})
"""``INGESTD_*`` variables the settings layer skips: the config file's path, the API key (a secret:
it never enters the settings, their errors or ``/status``) and the switch that forces the
pure-Python implementations (:mod:`ingestd.speedups`, read at import)."""
DEFAULT_CHANNELS: Final[Mapping[str, tuple[str, ...]]] = {
    "binance-usdm": ("agg_trade", "book_ticker", "depth_diff", "depth_snapshot"),
    "binance-spot": ("trade", "agg_trade", "book_ticker", "depth_diff", "depth_snapshot"),
}
"""The channels of a run that names none (``channels`` null), per venue. No ``trade`` on USDⓈ-M:
Binance documents only aggregated trades on that websocket (docs/binance.md §2.3)."""
NATIVE_RE = re.compile(r"^[A-Z0-9_]{2,40}$")

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class StreamSettings(_Model):
    """Websocket producer behaviour."""

    max_streams_per_connection: Annotated[int, Field(ge=1, le=1024)] = 200
    first_frame_deadline_s: PositiveFloat = 30.0
    """A subscribed stream that sends nothing for this long after connecting is reported."""
    stale_after_s: PositiveFloat = 60.0
    """A connection with no frame at all for this long is reconnected (TCP stall watchdog); one
    carrying only event-driven streams (trades, liquidations, klines, tickers) waits 10x as long."""
    rotate_after_s: PositiveFloat = 23 * 3600.0
    """Proactive make-before-break reconnect, before Binance's 24 h cut."""
    backoff_initial_s: PositiveFloat = 0.5
    backoff_max_s: PositiveFloat = 30.0
    backoff_factor: Annotated[float, Field(ge=1.0)] = 2.0
    connect_timeout_s: PositiveFloat = 10.0
    ping_interval_s: PositiveFloat | None = None
    """Client keepalive; ``None`` picks the venue's (spot 20 s, USDⓈ-M 180 s)."""
    kline_interval: Literal[
        "1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M"
    ] = "1m"
    partial_depth_levels: Literal[5, 10, 20] = 20
    max_frame_bytes: PositiveInt = 4 * 1024 * 1024


class SnapshotSettings(_Model):
    """REST depth snapshots."""

    limit: PositiveInt | None = None
    """Levels per snapshot; ``None`` = the venue maximum (USDⓈ-M 1000, spot 5000)."""
    poll_interval_s: Annotated[float, Field(ge=0)] = 0.0
    """Also snapshot every symbol at this interval (0 = only when a book needs one)."""
    weight_headroom: Annotated[float, Field(gt=0, le=1)] = 0.5
    """Use at most this share of the host's per-minute request weight."""
    request_timeout_s: PositiveFloat = 10.0
    max_buffered_diffs: PositiveInt = 10_000
    state_file: Path | None = None
    """Where a 418 ban is remembered across restarts; ``None`` = ``<data_dir>/.ingestd-state.json``."""


class StorageSettings(_Model):
    """Parquet writer (the embedded default storage)."""

    enabled: bool = True
    data_dir: Path = Path("data")
    rotate_rows: PositiveInt = 200_000
    rotate_seconds: PositiveFloat = 300.0
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    queue_size: PositiveInt = 200_000
    max_pending_rows: PositiveInt = 2_000_000
    """Rows held in memory while the disk fails; past this, records are dropped and counted."""
    writer: Literal["thread", "process"] = "thread"
    """Who encodes and writes the files: a worker thread of the daemon, or a child process
    (:mod:`ingestd.consumers.writerproc`: off the event loop's core)."""


class JsonDumpSettings(_Model):
    """NDJSON dump of records (or of raw frames with ``raw``)."""

    dir: Path | None = None
    raw: bool = False
    queue_size: PositiveInt = 100_000


class HookSettings(_Model):
    """User strategy hooks."""

    specs: tuple[str, ...] = ()
    """``module:function`` references, loaded at start."""
    timeout_s: PositiveFloat = 1.0
    queue_size: PositiveInt = 10_000
    policy: Literal["block", "drop_oldest"] = "drop_oldest"

    @field_validator("specs", mode="before")
    @classmethod
    def _split_specs(cls, v: Any) -> Any:
        return [s for s in v.split(",") if s.strip()] if isinstance(v, str) else v

    @field_validator("specs")
    @classmethod
    def _spec_shape(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for s in v:
            mod, sep, func = s.partition(":")
            if not sep or not mod or not func.isidentifier():
                raise ValueError(f"hook {s!r} is not MODULE:FUNC")
        return v


class LogSettings(_Model):
    format: Literal["text", "json", "auto"] = "auto"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    file: Path | None = None


class ConsoleSettings(_Model):
    enabled: bool = True
    interval_s: PositiveFloat = 5.0


class BookSettings(_Model):
    """Local order books (kept whenever depth_diff is ingested)."""

    depth: Annotated[int, Field(ge=0, le=1000)] = 0
    """Publish ``book`` records (top-N levels) with this many levels per side; 0 = none."""
    every: Annotated[int, Field(ge=0)] = 0
    """A ``book`` record every N applied diffs (0 or 1 = on every change)."""
    max_buffered_mb: PositiveFloat = 128.0
    """Bound on the diffs and bookTickers held across all symbols while their books wait for a
    snapshot (estimated bytes of the Python objects). Past it the book that waited longest drops
    its buffer, writes a ``memory_bound`` gap and starts its sync again."""


class HealthSettings(_Model):
    """The HTTP endpoint: /healthz /readyz /metrics /status."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9108
    """0 turns the endpoint off."""
    freshness_s: PositiveFloat = 30.0
    """/readyz wants a frame from every stream within this many seconds (liquidations exempt:
    Binance sends them only when they happen)."""
    quiet_freshness_s: PositiveFloat = 600.0
    """The same for trade-driven streams (trades, klines, tickers), quiet on thin contracts."""
    loop_deadline_s: PositiveFloat = 10.0
    """Liveness (/healthz, WATCHDOG=1): the event loop must run its heartbeat within this."""
    liveness_s: PositiveFloat = 120.0
    """Liveness: a websocket connection must read a frame, connect or retry within its own
    longest legitimate pause plus this (see :mod:`ingestd.observe.liveness`)."""


class ClockSettings(_Model):
    """Server-time offset estimation (round-trip midpoint)."""

    enabled: bool = True
    interval_s: PositiveFloat = 300.0
    samples: Annotated[int, Field(ge=1, le=50)] = 5
    warn_offset_ms: PositiveFloat = 500.0


class TlsSettings(_Model):
    """Certificate verification of ``https://`` and ``wss://`` peers (always on)."""

    ca_file: Path | None = None
    """PEM bundle of the CAs to trust instead of the system store (``SSL_CERT_FILE`` / ``SSL_CERT_DIR``
    when set, else the OS bundle). Checked at start: missing or not PEM is a config error."""


class Settings(_Model):
    """Everything a run needs. Built by :func:`load_settings`."""

    venue: Literal["binance-usdm", "binance-spot"] = "binance-usdm"
    symbols: tuple[str, ...] = ()
    """Native symbols (``BTCUSDT``); empty = every trading contract discovered."""
    channels: tuple[str, ...] = DEFAULT_CHANNELS["binance-usdm"]
    """Given as null (or not at all): the venue's :data:`DEFAULT_CHANNELS`."""
    rest_url: str | None = None
    ws_url: str | None = None
    duration_s: Annotated[float, Field(ge=0)] = 0.0
    shutdown_timeout_s: PositiveFloat = 20.0
    use_uvloop: bool = True
    streams: StreamSettings = StreamSettings()
    snapshots: SnapshotSettings = SnapshotSettings()
    storage: StorageSettings = StorageSettings()
    json_dump: JsonDumpSettings = JsonDumpSettings()
    hooks: HookSettings = HookSettings()
    log: LogSettings = LogSettings()
    console: ConsoleSettings = ConsoleSettings()
    books: BookSettings = BookSettings()
    pollers: PollerSettings = PollerSettings()
    backfill: BackfillSettings = BackfillSettings()
    discovery: DiscoverySettings = DiscoverySettings()
    health: HealthSettings = HealthSettings()
    clock: ClockSettings = ClockSettings()
    nats: NatsSettings = NatsSettings()
    tls: TlsSettings = TlsSettings()
    shard: ShardSpec | None = None
    """``K/N``: this instance ingests shard K of N of the contract set (1-based)."""

    @model_validator(mode="before")
    @classmethod
    def _venue_default_channels(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("channels") is None:
            venue = data.get("venue")
            # A bad venue is reported by its own field; any default keeps the error to that one.
            default = DEFAULT_CHANNELS.get(venue) if isinstance(venue, str) else None
            data = {**data, "channels": default or DEFAULT_CHANNELS["binance-usdm"]}
        return data

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [s for s in v.split(",") if s.strip()]
        if isinstance(v, (list, tuple)):
            out = []
            for s in v:
                if not isinstance(s, str):
                    raise ValueError(f"symbol {s!r} is not a string")  # noqa: TRY004 - pydantic reports ValueError as a validation error
                n = s.strip().upper()
                if not NATIVE_RE.match(n):
                    raise ValueError(f"symbol {s!r} is malformed (want letters/digits like BTCUSDT)")
                out.append(n)
            return tuple(dict.fromkeys(out))
        return v

    @field_validator("channels", mode="before")
    @classmethod
    def _split_channels(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [s.strip() for s in v.split(",") if s.strip()]
        if isinstance(v, (list, tuple)):
            bad = [c for c in v if c not in SELECTABLE]
            if bad:
                raise ValueError(
                    f"unknown channel {', '.join(map(repr, bad))}; allowed: {', '.join(SELECTABLE)}"
                )
            if not v:
                raise ValueError("at least one channel is needed")
            return tuple(dict.fromkeys(v))
        return v

    @field_validator("rest_url", "ws_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.match(r"^(https?|wss?)://[^\s/]+", v):
            raise ValueError(f"{v!r} is not an http(s):// or ws(s):// URL")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _venue_channels(self) -> Settings:
        table = TABLES[self.venue]
        bad = [c for c in self.channels if c not in table.selectable]
        if bad:
            raise ValueError(f"channel {', '.join(bad)} does not exist on {self.venue}")
        if self.pollers.enabled and not any(spec.source is Source.POLL for spec in table.values()):
            raise ValueError("pollers are USDⓈ-M only (venue binance-usdm)")
        return self


def _set_path(tree: dict[str, Any], dotted: list[str], value: Any) -> None:
    node = tree
    for part in dotted[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{'.'.join(dotted)}: cannot nest under a scalar", key=".".join(dotted))
        node = nxt
    node[dotted[-1]] = value


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``INGESTD_A__B=v`` → ``{"a": {"b": "v"}}``. Values stay strings; pydantic coerces them."""
    tree: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key in ENV_NOT_SETTINGS:
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        _set_path(tree, path, value)
    return tree


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a YAML config file into a mapping, or raise :class:`ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}".splitlines()[0]) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of keys")
    return data


def _format_error(exc: ValidationError, layers: list[tuple[str, Mapping[str, Any]]]) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "settings"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        parent = ".".join(str(p) for p in err["loc"][:-1])
        allowed = _allowed_keys(parent)
        msg = f"unknown key; allowed here: {', '.join(allowed)}"
    source = next((name for name, tree in reversed(layers) if _has(tree, err["loc"])), "settings")
    given = err.get("input")
    shown = "" if err["type"] == "extra_forbidden" or isinstance(given, dict) else f" (got {given!r})"
    more = f" [+{len(exc.errors()) - 1} more]" if len(exc.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{shown}{more}"


def _has(tree: Mapping[str, Any], loc: tuple[int | str, ...]) -> bool:
    node: Any = tree
    for p in loc:
        if not isinstance(node, Mapping) or p not in node:
            return False
        node = node[p]
    return True


def _allowed_keys(dotted_parent: str) -> list[str]:
    model: type[BaseModel] = Settings
    for part in filter(None, dotted_parent.split(".")):
        ann = model.model_fields[part].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
    return list(model.model_fields)


def load_settings(
    *,
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    cli: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge the layers and validate once. ``cli`` uses the same nested shape as the file."""
    env = os.environ if environ is None else environ
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if config_path is not None:
        layers.append((f"config file {config_path}", read_config_file(config_path)))
    layers.append(("environment", env_overrides(env)))
    layers.append(("command line", dict(cli or {})))
    merged: dict[str, Any] = {}
    for _, tree in layers:
        merged = _merge(merged, tree)
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, layers)) from None
