"""Duplicate filtering across websocket connections (pure: no I/O, no clock).

Every record has a key that grows along its stream: its channel's ordering key in the channel
table (:class:`~ingestd.channels.ChannelSpec`: depth ``final_update_id``, bookTicker
``update_id``, trade ``trade_id``, aggTrade ``agg_id``, kline ``(open_time, exchange_ts)``,
``exchange_ts`` for the rest). :class:`HighWaterMarks` keeps the highest key emitted per
``(stream, native)`` — all-market array streams carry many symbols — and drops a record at or
below it. The marks outlive connections, so overlap after a reconnect or a rotation, or a venue
that replays from the start, adds no duplicates.

At the mark itself a record is a copy only if it is *the same record* as one emitted there (the
channel's identity): always for id-keyed channels; for channels keyed on their millisecond event
time (mark price, tickers, liquidations) only if its content is the same, because two different
events may share a millisecond, and both are kept.

During a make-before-break rotation two sockets deliver the same streams, and either may be
ahead. A new socket that is *ahead* must not emit at once: that would raise the mark past records
the old socket still has queued, and those would be dropped as duplicates — lost. So the new
socket's records on a key are buffered until overlap is proven: the new socket delivered a copy
of an emitted record (it is behind: the buffer is all duplicates), or the old socket emitted the
first record the new one buffered (then the buffer continues the old socket's sequence exactly and
is released through the mark). From then on both sockets are complete in-order sources from at or
below the mark, and any interleaving of them through the mark loses nothing. :class:`Handover`
holds that state; :meth:`HighWaterMarks.release` flushes what is left when the switch happens
without proof (the hand-over deadline).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from ingestd.channels import ChannelSpec
from ingestd.records import RECORD_TYPES, Record
from ingestd.venues.binance.channels import channel_spec
from ingestd.venues.binance.endpoints import USDM

StreamKey = tuple[str, str]
"""``(stream, native)``."""

MAX_TIES: Final = 64
"""Records remembered at one mark to tell distinct ones sharing it from copies (content keys)."""


def key_for(channel: str, venue: str = USDM.name) -> ChannelSpec:
    """The spec whose ordering key orders records of ``channel`` (``None`` from
    :attr:`~ingestd.channels.ChannelSpec.order_key` means "cannot be deduped")."""
    return channel_spec(venue, RECORD_TYPES[channel])


class Handover:
    """A rotation candidate's proof of overlap with the primary, per ``(stream, native)``."""

    __slots__ = ("buffered", "caught", "held", "needed")

    def __init__(self) -> None:
        self.buffered: dict[StreamKey, tuple[Any, list[Record]]] = {}
        """Per key: the first buffered key and the records held back, in arrival order."""
        self.held = 0
        """Records currently buffered (all keys)."""
        self.caught: set[StreamKey] = set()
        """Keys where overlap is proven; the candidate's records go through the marks."""
        self.needed: set[StreamKey] = set()
        """Keys the primary emitted during the rotation that are not proven yet."""

    def ready(self) -> bool:
        """Every key either socket delivered during the rotation is proven."""
        return not self.buffered and not self.needed

    def unproven(self) -> int:
        """Keys that would switch sockets without proven overlap."""
        return len(self.needed | self.buffered.keys())


class _Mark:
    """The highest key emitted on one ``(stream, native)``, and what was emitted at it."""

    __slots__ = ("key", "ties")

    def __init__(self, key: Any, r: Record, content: bool) -> None:
        self.key = key
        self.ties: list[Record] | None = [r] if content else None
        """Content-keyed channels: the records emitted at ``key``."""

    def copy(self, key: Any, r: Record, spec: ChannelSpec) -> bool:
        """``r`` (``key`` at or below the mark) is a copy of an emitted record."""
        if key == self.key:
            ties = self.ties
            return ties is None or any(spec.same(r, t) for t in ties)
        return True

    def tie(self, r: Record) -> None:
        """A distinct record at the mark's key (content-keyed channels)."""
        ties = self.ties
        assert ties is not None
        ties.append(r)
        if len(ties) > MAX_TIES:
            del ties[0]


class HighWaterMarks:
    """The highest key emitted per ``(stream, native)``, shared by all connections."""

    __slots__ = ("_marks",)

    def __init__(self) -> None:
        self._marks: dict[StreamKey, _Mark] = {}

    def __len__(self) -> int:
        return len(self._marks)

    def get(self, stream: str, native: str) -> Any:
        """The mark of one key, ``None`` before its first record."""
        m = self._marks.get((stream, native))
        return None if m is None else m.key

    def admit(
        self,
        stream: str,
        records: Sequence[Record],
        spec: ChannelSpec,
        *,
        candidate: Handover | None = None,
        rival: Handover | None = None,
    ) -> tuple[list[Record], int]:
        """``(records to emit, number dropped)`` for one frame's records of ``stream``.

        ``candidate``: the records come from a rotation's new socket, with this proof state.
        ``rival``: the records come from the primary while that candidate is open; records the
        candidate buffered may be released into the result.
        """
        marks = self._marks
        keyfn = spec.order_key
        content = spec.content
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
            m = marks.get(hk)
            if candidate is not None and hk not in candidate.caught:
                dropped += _hold(candidate, hk, m, key, r, spec=spec)
                continue
            if m is None:
                marks[hk] = _Mark(key, r, content)
            elif key > m.key:
                m.key = key
                if content:
                    m.ties = [r]
            elif m.copy(key, r, spec):
                dropped += 1
                continue
            else:
                m.tie(r)
            kept.append(r)
            if rival is not None and hk not in rival.caught:
                entry = rival.buffered.get(hk)
                if entry is not None and (key > entry[0] or (key == entry[0] and spec.same(r, entry[1][0]))):
                    # The primary reached the candidate's first buffered record: the buffer
                    # continues this sequence with nothing missing in between.
                    del rival.buffered[hk]
                    rival.held -= len(entry[1])
                    rival.caught.add(hk)
                    rival.needed.discard(hk)
                    dropped += self._through(hk, entry[1], spec, kept)
                else:
                    rival.needed.add(hk)
        return kept, dropped

    def release(
        self, handover: Handover, specs: Mapping[str, ChannelSpec]
    ) -> tuple[list[Record], dict[str, int]]:
        """Flush every buffer of ``handover`` through the marks (a switch without proof).

        ``specs`` maps stream name to the spec of its records. Returns the records to emit and
        the number dropped per stream.
        """
        kept: list[Record] = []
        dropped: dict[str, int] = {}
        for hk, (_, recs) in handover.buffered.items():
            n = self._through(hk, recs, specs[hk[0]], kept)
            if n:
                dropped[hk[0]] = dropped.get(hk[0], 0) + n
            handover.caught.add(hk)
        handover.buffered.clear()
        handover.held = 0
        return kept, dropped

    def _through(self, hk: StreamKey, records: list[Record], spec: ChannelSpec, out: list[Record]) -> int:
        marks = self._marks
        keyfn = spec.order_key
        dropped = 0
        for r in records:
            key = keyfn(r)
            m = marks.get(hk)
            if m is None:
                marks[hk] = _Mark(key, r, spec.content)
            elif key > m.key:
                m.key = key
                if spec.content:
                    m.ties = [r]
            elif m.copy(key, r, spec):
                dropped += 1
                continue
            else:
                m.tie(r)
            out.append(r)
        return dropped


def _hold(
    candidate: Handover, hk: StreamKey, m: _Mark | None, key: Any, r: Record, *, spec: ChannelSpec
) -> int:
    """A rotation candidate's record on a key not proven yet: held, or the proof. Returns the
    number of records dropped as copies."""
    if m is not None and (key < m.key or (key == m.key and m.copy(key, r, spec))):
        # Behind the primary: proven; whatever was buffered is older still.
        _, old = candidate.buffered.pop(hk, (None, []))
        candidate.held -= len(old)
        candidate.caught.add(hk)
        candidate.needed.discard(hk)
        return 1 + len(old)
    # Ahead (or a new record in the mark's millisecond): held until proven.
    entry = candidate.buffered.get(hk)
    if entry is None:
        candidate.buffered[hk] = (key, [r])
    else:
        entry[1].append(r)
    candidate.held += 1
    return 0
