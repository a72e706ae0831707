"""Binance endpoint and stream tables (data, not code). Facts: docs/binance.md.

Hosts, paths, limits, weights and the stream-name grammar. Which stream carries a channel and on
which route is the channel table's (:mod:`ingestd.venues.binance.channels`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class VenueSpec:
    """Everything venue-specific that is data."""

    name: str
    rest_url: str
    ws_url: str
    exchange_info_path: str
    depth_path: str
    time_path: str
    depth_limits: tuple[int, ...]
    default_depth_limit: int
    weight_limit_per_minute: int
    routed: bool
    """USDⓈ-M: streams go to ``/public`` or ``/market``; spot: plain ``/stream``."""
    ping_interval_s: float
    """How often the server pings; our own keepalive pings at the same cadence."""
    perpetual_suffix: str
    """Appended to normalized symbols: ``BTC-USDT-PERP`` on USDⓈ-M, nothing on spot."""
    max_streams_per_connection: int = 1024
    control_msgs_per_second: int = 5

    def depth_weight(self, limit: int) -> int:
        """REST request weight of one depth snapshot with ``limit`` levels."""
        table = FUTURES_DEPTH_WEIGHT if self.routed else SPOT_DEPTH_WEIGHT
        for upper, weight in table:
            if limit <= upper:
                return weight
        return table[-1][1]


# (max limit, weight) rows, ascending. Spot: docs/binance.md §4.2; USDⓈ-M: §4.3.
SPOT_DEPTH_WEIGHT: Final = ((100, 5), (500, 25), (1000, 50), (5000, 250))
FUTURES_DEPTH_WEIGHT: Final = ((50, 2), (100, 5), (500, 10), (1000, 20))

USDM: Final = VenueSpec(
    name="binance-usdm",
    rest_url="https://fapi.binance.com",
    ws_url="wss://fstream.binance.com",
    exchange_info_path="/fapi/v1/exchangeInfo",
    depth_path="/fapi/v1/depth",
    time_path="/fapi/v1/time",
    depth_limits=(5, 10, 20, 50, 100, 500, 1000),
    default_depth_limit=1000,
    weight_limit_per_minute=2400,
    routed=True,
    ping_interval_s=180.0,
    perpetual_suffix="-PERP",
    control_msgs_per_second=10,
)

SPOT: Final = VenueSpec(
    name="binance-spot",
    rest_url="https://api.binance.com",
    ws_url="wss://stream.binance.com:9443",
    exchange_info_path="/api/v3/exchangeInfo",
    depth_path="/api/v3/depth",
    time_path="/api/v3/time",
    depth_limits=tuple(range(1, 5001)),
    default_depth_limit=5000,
    weight_limit_per_minute=6000,
    routed=False,
    ping_interval_s=20.0,
    perpetual_suffix="",
)

VENUES: Final[dict[str, VenueSpec]] = {USDM.name: USDM, SPOT.name: SPOT}

EXCHANGE_INFO_WEIGHT: Final = {USDM.name: 1, SPOT.name: 20}
TIME_WEIGHT: Final = 1


def _is_speed(part: str) -> bool:
    return part.endswith("ms") or part == "1s"


def stream_kind(stream: str) -> str:
    """The part of a stream name after the symbol, without a speed suffix.

    ``btcusdt@depth@100ms`` → ``depth``; ``btcusdt@depth20@100ms`` → ``depth20``;
    ``btcusdt@kline_1m`` → ``kline_1m``; ``!markPrice@arr@1s`` → ``!markPrice@arr``.
    """
    parts = stream.split("@")
    if stream.startswith("!"):
        return "@".join(p for p in parts if not _is_speed(p))
    return "@".join(p for p in parts[1:] if not _is_speed(p))


def stream_symbol(stream: str) -> str | None:
    """Lowercase native symbol of a per-symbol stream; ``None`` for ``!`` all-market streams."""
    if stream.startswith("!"):
        return None
    return stream.partition("@")[0]
