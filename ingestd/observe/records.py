"""Records the observe stage adds to the data flow: clock samples (channel ``clock``) and the
gap log's silent-stream notices of a run without order books.

Registered in :data:`ingestd.records.RECORD_TYPES` on import, so Parquet, NDJSON, NATS and hooks
handle them like market records. One :class:`ClockSample` is written after each clock estimate
(a few round trips at start, then every ``clock.interval_s``): with them, every stored
``recv_ts`` can be put on the venue's clock afterwards (``recv_ts + offset_ms * 1e6``).
"""

from __future__ import annotations

from typing import ClassVar, Final

from ingestd.book.records import Gap, GapKind
from ingestd.producers.clock import ClockEstimate
from ingestd.producers.events import ConnectionEvent
from ingestd.records import Record, register
from ingestd.venues.binance.endpoints import stream_symbol
from ingestd.venues.binance.symbols import ContractSet

CLOCK_SYMBOL: Final = "SERVER_TIME"
"""``symbol`` and ``native`` of a clock sample: it belongs to the venue's REST host, not to a
contract. Safe as a path part (Parquet hive directory) and as a NATS subject token."""


class ClockSample(Record, frozen=True, kw_only=True, gc=False):
    """One server-clock estimate (channel ``clock``).

    ``exchange_ts`` is the venue's ``serverTime`` (ns) of the chosen sample and ``recv_ts`` the
    local wall clock (ns) when its answer arrived; ``local_mid_ts`` is the local wall clock at
    the round trip's midpoint, where the server is assumed to have stamped its time. So
    ``offset_ms = (exchange_ts - local_mid_ts) / 1e6``, positive when the server is ahead, exact
    to within ``rtt_ms / 2``. ``samples`` is how many round trips the best one was chosen from;
    ``host`` is the REST host that answered.
    """

    channel: ClassVar[str] = "clock"

    offset_ms: float
    rtt_ms: float
    local_mid_ts: int
    samples: int
    host: str


register(ClockSample)


def clock_sample(venue: str, host: str, est: ClockEstimate) -> ClockSample:
    """The record of one estimate. Pure."""
    rtt_ns = round(est.rtt_ms * 1e6)
    return ClockSample(
        venue=venue,
        symbol=CLOCK_SYMBOL,
        native=CLOCK_SYMBOL,
        exchange_ts=est.server_time_ms * 1_000_000,
        # The answer arrived half a round trip after the midpoint (ClockSync measured it so).
        recv_ts=est.local_mid_ns + rtt_ns // 2,
        offset_ms=est.offset_ms,
        rtt_ms=est.rtt_ms,
        local_mid_ts=est.local_mid_ns,
        samples=est.samples,
        host=host,
    )


def silent_stream_notices(venue: str, contracts: ContractSet, ev: ConnectionEvent) -> list[Record]:
    """``silent_stream`` gap records (notices: no episode, no ``resync``) for a ``STREAM_SILENT``
    event, one per contract of the silent streams. With depth diffs the book manager writes them
    (with the book's last id); without, this does, so the gap log names every silent stream."""
    streams: dict[str, list[str]] = {}
    for stream in ev.streams:
        streams.setdefault((stream_symbol(stream) or "").upper(), []).append(stream)
    out: list[Record] = []
    for native in dict.fromkeys((*ev.natives, *streams)):
        contract = contracts.get(native)
        if contract is None:
            continue
        what = ", ".join(streams.get(native, ())) or "its streams"
        out.append(
            Gap(
                venue=venue,
                symbol=contract.symbol,
                native=contract.native,
                exchange_ts=None,
                recv_ts=ev.ts,
                transaction_ts=None,
                kind=GapKind.SILENT_STREAM.value,
                reason=f"{ev.connection}: no first frame on {what}",
                last_update_id=None,
                first_update_id=None,
                final_update_id=None,
                started_ts=ev.ts,
            )
        )
    return out
