"""Connection planning (pure): which streams ride on which websocket.

Rules (docs/binance.md §2.1, §2.2):

* USDⓈ-M streams go to the route their channel's spec names
  (:mod:`ingestd.venues.binance.channels`: ``/public`` for book data, ``/market`` for the rest);
  one connection never mixes routes, because a stream on the wrong route is acknowledged and then
  silent.
* Spot has no routes: every connection is ``/stream``.
* At most ``max_streams_per_connection`` streams per connection (and never more than the
  venue's own limit).
* All streams of one symbol on one route share a connection when they fit, so a reconnect
  makes few books resync; symbols are spread evenly over the connections a route needs.
* Deterministic: symbols are planned in sorted order, so the same contracts and channels always
  give the same plan, whatever order discovery returned them in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from ingestd.channels import ChannelSpec
from ingestd.config import StreamSettings
from ingestd.errors import ConfigError
from ingestd.venues.binance.channels import SELECTABLE, TABLES, stream_name, stream_specs
from ingestd.venues.binance.endpoints import VenueSpec
from ingestd.venues.binance.symbols import ContractSet


@dataclass(frozen=True, slots=True)
class ConnectionPlan:
    """One websocket: its name, route and the exact streams it subscribes (in URL order)."""

    name: str
    """``<venue>/<route>#<index>``: ``binance-usdm/public#0``, ``binance-spot/stream#0``."""
    route: str
    """``/public`` or ``/market`` on USDⓈ-M; ``""`` on spot."""
    streams: tuple[str, ...]
    natives: tuple[str, ...]
    """Native symbols (``BTCUSDT``) whose streams this connection carries."""

    @property
    def path(self) -> str:
        """URL path below the websocket base: ``/public/stream``, ``/stream`` on spot."""
        return f"{self.route}/stream"

    def url(self, ws_url: str) -> str:
        """Combined-stream URL: ``<ws_url><route>/stream?streams=a/b/c``."""
        return f"{ws_url.rstrip('/')}{self.path}?streams={'/'.join(self.streams)}"

    def source(self, ws_url: str) -> str:
        """The URL path a raw frame is recorded under (``/public/stream``), base path included."""
        return f"{urlsplit(ws_url).path.rstrip('/')}{self.path}"


def stream_names(
    native: str, specs: Sequence[ChannelSpec], settings: StreamSettings
) -> list[tuple[ChannelSpec, str]]:
    """``(spec, stream name)`` for one symbol, in ``specs`` order (stream specs only)."""
    params = {"interval": settings.kline_interval, "levels": settings.partial_depth_levels}
    return [(spec, stream_name(spec, native, **params)) for spec in specs]


def _check_channels(venue: VenueSpec, channels: Sequence[str]) -> list[ChannelSpec]:
    """The stream specs of ``channels`` (REST-only ones skipped); a channel that does not exist on
    ``venue`` is a :class:`ConfigError`."""
    wanted = list(dict.fromkeys(channels))
    table = TABLES[venue.name]
    unknown = [c for c in wanted if c not in SELECTABLE]
    if unknown:
        raise ConfigError(
            f"no such channel(s) {', '.join(unknown)}; channels are {', '.join(SELECTABLE)}", key="channels"
        )
    missing = [c for c in wanted if c not in table.selectable]
    if missing:
        raise ConfigError(f"channel(s) {', '.join(missing)} do not exist on {venue.name}", key="channels")
    return stream_specs(venue.name, wanted)


def _chunks(groups: list[tuple[str, list[str]]], cap: int) -> list[list[tuple[str, list[str]]]]:
    """Split per-symbol stream groups into connections of at most ``cap`` streams.

    Groups stay whole when a group fits in ``cap``; the symbols are then spread evenly over the
    fewest connections that hold them. A group larger than ``cap`` (more channels than the cap)
    is cut into ``cap``-sized pieces, each its own connection.
    """
    if not groups:
        return []
    size = max(len(streams) for _, streams in groups)
    if size > cap:
        pieces: list[list[tuple[str, list[str]]]] = []
        for native, streams in groups:
            pieces.extend([[(native, streams[i : i + cap])] for i in range(0, len(streams), cap)])
        return pieces
    per_conn = cap // size
    n_conns = -(-len(groups) // per_conn)
    base, extra = divmod(len(groups), n_conns)
    out = []
    start = 0
    for i in range(n_conns):
        take = base + (1 if i < extra else 0)
        out.append(groups[start : start + take])
        start += take
    return out


def plan_connections(
    venue: VenueSpec, contracts: ContractSet, channels: Sequence[str], settings: StreamSettings
) -> list[ConnectionPlan]:
    """Plan the websockets for every contract and channel on ``venue``.

    Raises :class:`~ingestd.errors.ConfigError` for a channel without a stream on this venue.
    ``depth_snapshot`` is REST and is skipped. Connections are ordered by route, then index.
    """
    wanted = _check_channels(venue, channels)
    cap = max(1, min(settings.max_streams_per_connection, venue.max_streams_per_connection))
    by_route: dict[str, list[tuple[str, list[str]]]] = {}
    for native in sorted(contracts.natives):
        per_route: dict[str, list[str]] = {}
        for spec, stream in stream_names(native, wanted, settings):
            route = spec.route or ""
            per_route.setdefault(route, []).append(stream)
        for route, streams in per_route.items():
            by_route.setdefault(route, []).append((native, streams))
    plans = []
    for route in sorted(by_route):
        label = route.lstrip("/") or "stream"
        for index, chunk in enumerate(_chunks(by_route[route], cap)):
            plans.append(
                ConnectionPlan(
                    name=f"{venue.name}/{label}#{index}",
                    route=route,
                    streams=tuple(s for _, streams in chunk for s in streams),
                    natives=tuple(dict.fromkeys(native for native, _ in chunk)),
                )
            )
    return plans
