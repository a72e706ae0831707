"""Discovery: ``exchangeInfo`` → the run's :class:`~ingestd.venues.binance.symbols.ContractSet`.

Called once at start-up (and every ``discovery.refresh_s`` by the listing watcher,
:mod:`ingestd.producers.listings`, through :func:`fetch_exchange_info`). At start-up any failure
is a :class:`~ingestd.errors.StartupError` whose one-line message names the cause — host
unreachable, the HTTP status (with Binance's code and message), an IP ban and when it ends, or a
body that is not an exchangeInfo document — so the CLI can print it and exit 3 before anything
else starts.

The body's ``rateLimits`` also carries the live ``REQUEST_WEIGHT`` per minute; when it is lower
than the venue table's, the client's budget follows it (docs/binance.md §5: read the live value).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field

from ingestd.errors import BannedError, ParseError, RestError, StartupError, TransportError
from ingestd.producers.rest import RestClient
from ingestd.venues.binance.endpoints import EXCHANGE_INFO_WEIGHT, VenueSpec
from ingestd.venues.binance.symbols import ContractSet, parse_exchange_info

log = logging.getLogger("ingestd.discovery")


MIN_REFRESH_S: Final = 10.0
"""The shortest ``discovery.refresh_s``: listings change over hours, and a faster re-read (spot
weight 20) only spends the REST budget the snapshots and backfill need."""


class DiscoverySettings(BaseModel):
    """Following listings during the run (:mod:`ingestd.producers.listings`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    follow: bool = False
    """Re-read exchangeInfo every ``refresh_s``: contracts that start trading get streams on new
    connections and a book, contracts that stop are retired (``--follow-listings``)."""
    refresh_s: Annotated[float, Field(ge=MIN_REFRESH_S)] = 300.0
    """Seconds between two reads (USDⓈ-M weight 1, spot 20, from the shared REST budget); at least
    :data:`MIN_REFRESH_S`."""


def request_weight_limit(body: Any) -> int | None:
    """The ``REQUEST_WEIGHT`` limit per 1 minute advertised in an exchangeInfo body, if any."""
    if not isinstance(body, Mapping):
        return None
    for rl in body.get("rateLimits") or ():
        if (
            isinstance(rl, Mapping)
            and rl.get("rateLimitType") == "REQUEST_WEIGHT"
            and rl.get("interval") == "MINUTE"
            and rl.get("intervalNum") == 1
            and isinstance(rl.get("limit"), int)
            and rl["limit"] > 0
        ):
            return int(rl["limit"])
    return None


@dataclass(frozen=True, slots=True)
class ExchangeInfo:
    """What one exchangeInfo read gives: the trading contracts, every listed symbol's status and
    the live ``REQUEST_WEIGHT`` per minute (``None`` when the body names none)."""

    contracts: ContractSet
    statuses: Mapping[str, str]
    """Native symbol → ``status`` (``contractStatus``) of every symbol the body lists."""
    weight_limit: int | None
    recv_ts: int
    """When the body was read (ns, local clock)."""


def symbol_statuses(body: Any) -> dict[str, str]:
    """Native symbol → status of every entry of an exchangeInfo body (pure; odd entries skipped)."""
    out: dict[str, str] = {}
    symbols = body.get("symbols") if isinstance(body, Mapping) else None
    for sym in symbols or ():
        if not isinstance(sym, Mapping):
            continue
        native, status = sym.get("symbol"), sym.get("status", sym.get("contractStatus"))
        if isinstance(native, str) and isinstance(status, str):
            out[native] = status
    return out


async def fetch_exchange_info(client: RestClient, venue: VenueSpec, *, priority: int = 10) -> ExchangeInfo:
    """Read exchangeInfo through ``client`` (its weight budget, at ``priority``).

    Raises what the read raised (:class:`~ingestd.errors.BannedError`,
    :class:`~ingestd.errors.RestError`, :class:`~ingestd.errors.TransportError`,
    :class:`~ingestd.errors.ParseError`): start-up turns it into a :class:`StartupError`, the
    listing watcher logs it and tries again later. A live ``REQUEST_WEIGHT`` lower than the
    venue table's becomes the client's budget (a wrong budget costs a ban, a conservative one
    only costs throughput, so a higher figure is not trusted).
    """
    resp = await client.get(
        venue.exchange_info_path, None, weight=EXCHANGE_INFO_WEIGHT[venue.name], priority=priority
    )
    body = resp.json()
    contracts = parse_exchange_info(venue.name, body)
    live = request_weight_limit(body)
    if live is not None and live < venue.weight_limit_per_minute:
        budget = max(1, int(live * client.headroom))
        # A refresh that reads the same figure again changes nothing and logs nothing.
        if budget != client.budget.budget:
            log.info(
                "%s advertises REQUEST_WEIGHT %d/min (table: %d): budgeting %d/min",
                client.host,
                live,
                venue.weight_limit_per_minute,
                budget,
            )
            client.set_weight_limit(live)
    return ExchangeInfo(contracts, symbol_statuses(body), live, resp.recv_ts)


async def discover(client: RestClient, venue: VenueSpec) -> ContractSet:
    """Fetch exchangeInfo through ``client`` and return the trading contracts of ``venue``
    (USDⓈ-M: ``TRADING`` + ``PERPETUAL``; spot: ``TRADING``)."""
    url = client.base_url + venue.exchange_info_path
    try:
        contracts = (await fetch_exchange_info(client, venue)).contracts
    except BannedError as exc:
        until = datetime.fromtimestamp(exc.until, tz=UTC).isoformat(timespec="seconds")
        raise StartupError(
            f"{venue.name}: {client.host} has banned this IP until {until} (HTTP 418)"
        ) from exc
    except RestError as exc:
        if exc.status is None:
            raise StartupError(f"{venue.name}: cannot reach {url}: {exc}") from exc
        raise StartupError(f"{venue.name}: exchangeInfo failed: {exc}") from exc
    except TransportError as exc:
        raise StartupError(f"{venue.name}: cannot reach {url}: {exc}") from exc
    except ParseError as exc:
        raise StartupError(f"{venue.name}: {url} did not return an exchangeInfo body: {exc}") from exc
    log.info(
        "discovered %d %s contracts (%d unsafe names skipped)",
        len(contracts),
        venue.name,
        len(contracts.skipped_unsafe),
    )
    return contracts
