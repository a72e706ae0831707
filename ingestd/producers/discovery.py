"""Discovery: ``exchangeInfo`` → the run's :class:`~ingestd.venues.binance.symbols.ContractSet`.

Called once at start-up. Any failure is a :class:`~ingestd.errors.StartupError` whose one-line
message names the cause — host unreachable, the HTTP status (with Binance's code and message),
an IP ban and when it ends, or a body that is not an exchangeInfo document — so the CLI can
print it and exit 3 before anything else starts.

The body's ``rateLimits`` also carries the live ``REQUEST_WEIGHT`` per minute; when it is lower
than the venue table's, the client's budget follows it (docs/binance.md §5: read the live value).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ingestd.errors import BannedError, ParseError, RestError, StartupError, TransportError
from ingestd.producers.rest import RestClient
from ingestd.venues.binance.endpoints import EXCHANGE_INFO_WEIGHT, VenueSpec
from ingestd.venues.binance.symbols import ContractSet, parse_exchange_info

log = logging.getLogger("ingestd.discovery")


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


async def discover(client: RestClient, venue: VenueSpec) -> ContractSet:
    """Fetch exchangeInfo through ``client`` and return the trading contracts of ``venue``
    (USDⓈ-M: ``TRADING`` + ``PERPETUAL``; spot: ``TRADING``)."""
    url = client.base_url + venue.exchange_info_path
    try:
        resp = await client.get(
            venue.exchange_info_path, None, weight=EXCHANGE_INFO_WEIGHT[venue.name], priority=10
        )
        body = resp.json()
        contracts = parse_exchange_info(venue.name, body)
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

    live = request_weight_limit(body)
    if live is not None and live < venue.weight_limit_per_minute:
        # Lower than the table: the exchange's own figure wins. A higher figure is not trusted:
        # a wrong budget costs a ban, a conservative one only costs throughput.
        log.info(
            "%s advertises REQUEST_WEIGHT %d/min (table: %d): budgeting %d/min",
            client.host,
            live,
            venue.weight_limit_per_minute,
            int(live * client.headroom),
        )
        client.set_weight_limit(live)
    log.info(
        "discovered %d %s contracts (%d unsafe names skipped)",
        len(contracts),
        venue.name,
        len(contracts.skipped_unsafe),
    )
    return contracts
