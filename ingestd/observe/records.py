"""Records the observe stage adds to the data flow: clock samples (channel ``clock``).

Registered in :data:`ingestd.records.RECORD_TYPES` on import, so Parquet, NDJSON, NATS and hooks
handle them like market records. One :class:`ClockSample` is written after each clock estimate
(a few round trips at start, then every ``clock.interval_s``): with them, every stored
``recv_ts`` can be put on the venue's clock afterwards (``recv_ts + offset_ms * 1e6``).
"""

from __future__ import annotations

from typing import ClassVar, Final

from ingestd.producers.clock import ClockEstimate
from ingestd.records import Record, register

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
