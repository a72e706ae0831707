"""Duplicate filtering across websocket connections (pure: no I/O, no clock).

Every record has an id that grows along its stream: depth ``final_update_id``, bookTicker
``update_id``, trade ``trade_id``, aggTrade ``agg_id``, kline ``(open_time, exchange_ts)`` and
``exchange_ts`` for everything else. :class:`HighWaterMarks` keeps the highest id emitted per
``(stream, native)`` — all-market array streams carry many symbols — and drops a record at or
below it. The marks outlive connections, so overlap after a reconnect or a rotation, or a venue
that replays from the start, adds no duplicates.

During a make-before-break rotation two sockets deliver the same streams. The new socket may be
*ahead* of the old one (the old one still has frames queued): emitting its records at once would
raise the mark past records the old socket has yet to deliver, and those would be dropped as
duplicates — lost. So the new socket's records on a key are held back (the old socket delivers
them) until overlap is proven: the new socket delivered a record at or below the mark, or the old
socket emitted up to the highest record the new one held back. From then on both sockets are
complete in-order sources from at or below the mark, and any interleaving of them through the
mark loses nothing. :class:`Handover` tracks that proof.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any, Final

from ingestd.records import Record

StreamKey = tuple[str, str]
"""``(stream, native)``."""

KeyFn = Callable[[Any], Any]


def _kline_key(r: Any) -> tuple[int, int] | None:
    return None if r.exchange_ts is None else (r.open_time, r.exchange_ts)


KEYS: Final[dict[str, KeyFn]] = {
    "depth_diff": attrgetter("final_update_id"),
    "partial_depth": attrgetter("final_update_id"),
    "book_ticker": attrgetter("update_id"),
    "trade": attrgetter("trade_id"),
    "agg_trade": attrgetter("agg_id"),
    "kline": _kline_key,
}
"""Channel → the id that orders its records; any other channel uses ``exchange_ts``."""

EXCHANGE_TS: Final[KeyFn] = attrgetter("exchange_ts")


def key_for(channel: str) -> KeyFn:
    """The ordering key of records of ``channel``. ``None`` from it means "cannot be deduped"."""
    return KEYS.get(channel, EXCHANGE_TS)


class Handover:
    """A rotation candidate's proof of overlap with the primary, per ``(stream, native)``."""

    __slots__ = ("caught", "held", "needed")

    def __init__(self) -> None:
        self.held: dict[StreamKey, Any] = {}
        """Highest key the candidate held back because the primary had not emitted it yet."""
        self.caught: set[StreamKey] = set()
        """Keys where overlap is proven; the candidate's records go through the marks."""
        self.needed: set[StreamKey] = set()
        """Keys the primary emitted during the rotation that are not proven yet."""

    def ready(self) -> bool:
        """Every key either socket delivered during the rotation is proven."""
        return not self.held and not self.needed

    def unproven(self) -> int:
        """Keys that would switch sockets without proven overlap."""
        return len(self.needed | self.held.keys())


class HighWaterMarks:
    """The highest key emitted per ``(stream, native)``, shared by all connections."""

    __slots__ = ("_marks",)

    def __init__(self) -> None:
        self._marks: dict[StreamKey, Any] = {}

    def __len__(self) -> int:
        return len(self._marks)

    def get(self, stream: str, native: str) -> Any:
        """The mark of one key, ``None`` before its first record."""
        return self._marks.get((stream, native))

    def admit(
        self,
        stream: str,
        records: Sequence[Record],
        keyfn: KeyFn,
        *,
        candidate: Handover | None = None,
        rival: Handover | None = None,
    ) -> tuple[list[Record], int]:
        """``(records to emit, number dropped)`` for one frame's records of ``stream``.

        ``candidate``: the records come from a rotation's new socket, with this proof state.
        ``rival``: the records come from the primary while that candidate is open.
        """
        marks = self._marks
        kept: list[Record] = []
        dropped = 0
        for r in records:
            key = keyfn(r)
            if key is None:
                if candidate is None:
                    kept.append(r)
                else:
                    dropped += 1  # cannot be ordered: only the primary emits it
                continue
            hk = (stream, r.native)
            prev = marks.get(hk)
            if candidate is not None and hk not in candidate.caught:
                if prev is not None and key <= prev:
                    candidate.caught.add(hk)
                    candidate.held.pop(hk, None)
                    candidate.needed.discard(hk)
                else:
                    candidate.held[hk] = key
                dropped += 1
                continue
            if prev is not None and key <= prev:
                dropped += 1
                continue
            marks[hk] = key
            kept.append(r)
            if rival is not None and hk not in rival.caught:
                held = rival.held.get(hk)
                if held is not None and key >= held:
                    del rival.held[hk]
                    rival.caught.add(hk)
                    rival.needed.discard(hk)
                else:
                    rival.needed.add(hk)
        return kept, dropped
