"""Duplicate filtering across websocket connections (pure: no I/O, no clock).

Keys. Every record has a key that grows along its stream: its channel's ordering key in the
channel table (:class:`~ingestd.channels.ChannelSpec`: depth ``final_update_id``, bookTicker
``update_id``, trade ``trade_id``, aggTrade ``agg_id``, kline ``(open_time, exchange_ts)``,
``exchange_ts`` for the rest). :class:`HighWaterMarks` keeps, per ``(stream, native)`` (all-market
array streams carry many symbols), the highest key emitted (the *mark*), the keys of the last
:data:`REPLAY_WINDOW` records emitted and which socket emitted last. The marks outlive
connections.

The rule. A record whose key is

* above the mark is new: it is emitted and raises the mark;
* equal to the mark is a copy only if it is *the same record* as one emitted at the mark (the
  channel's identity): always for id-keyed channels; for channels keyed on their millisecond
  event time (mark price, tickers, liquidations) only if its content is the same, because two
  different events may share a millisecond, and both are kept;
* below the mark is a copy if it is among the last :data:`REPLAY_WINDOW` keys emitted (a new
  connection replaying the last few records: a normal reconnect overlap adds nothing), or if a
  rotation partner set the mark (below);
* below the mark otherwise is an **id regression**: the venue's ids restarted lower (maintenance,
  a looping replay). That is a new sequence, not a copy: a ``gap`` record of kind ``id_reset``
  is emitted right before the record, and the mark starts again at its key. The same holds,
  whatever the window says, when the socket that set the mark itself goes back: a stream's own
  sequence never does, except when it restarts.

So a record is dropped only as a proven copy, and every drop is counted (``duplicates``). The price
of never losing one: a venue that replays *more* than the window after a reconnect gets that
replay stored twice, behind an ``id_reset`` record that says where (a normal Binance reconnect
replays nothing: each socket starts at "now").

Rotations. During a make-before-break rotation two sockets deliver the same streams, and either
may be ahead. A new socket that is *ahead* must not emit at once: that would raise the mark past
records the old socket still has queued, and those would be dropped as duplicates — lost. So the
new socket's records on a key are buffered until overlap is proven: the new socket delivered a
copy of an emitted record (it is behind: the buffer is all duplicates), or the old socket emitted
the first record the new one buffered (then the buffer continues the old socket's sequence exactly
and is released through the mark). From then on both sockets are complete in-order sources from
at or below the mark, and any interleaving of them through the mark loses nothing; one may lag the
other by far more than the replay window, so while both run (and, after the switch, until the
new socket catches up with the mark) a record below the mark that a partner emitted is a copy.
:class:`Handover` holds the proof state; :meth:`HighWaterMarks.release` flushes what is left when
the switch happens without proof (the hand-over deadline). An id restart that falls inside a
rotation is only recognised on a socket's own sequence going back; records of it one socket
delivers below a mark the other set are taken for that socket's lag, except after the switch: a
copy has its original's event time, so a record of the new socket below the mark but with an
event time later than anything the old socket emitted during the rotation is a restart (an
``id_reset``), not lag (it would otherwise be dropped until the new ids passed the old mark).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final

from ingestd.book.records import Gap, GapKind
from ingestd.channels import ChannelSpec
from ingestd.records import RECORD_TYPES, Record
from ingestd.venues.binance.channels import channel_spec
from ingestd.venues.binance.endpoints import USDM

StreamKey = tuple[str, str]
"""``(stream, native)``."""

REPLAY_WINDOW: Final = 64
"""Per ``(stream, native)``: how many of the last emitted records a new connection may replay
and still be recognised as a copy (further back is an id regression)."""
_UNKNOWN: Final = object()
MAX_TIES: Final = REPLAY_WINDOW
"""Records remembered at one mark to tell distinct ones sharing it from copies (content keys)."""


def key_for(channel: str, venue: str = USDM.name) -> ChannelSpec:
    """The spec whose ordering key orders records of ``channel`` (``None`` from
    :attr:`~ingestd.channels.ChannelSpec.order_key` means "cannot be deduped")."""
    return channel_spec(venue, RECORD_TYPES[channel])


class Handover:
    """A rotation candidate's proof of overlap with the primary, per ``(stream, native)``.

    ``owner`` names the candidate's socket (the ``source`` its records are admitted with)."""

    __slots__ = ("buffered", "caught", "emitted_ts", "held", "last", "needed", "owner")

    def __init__(self, owner: object = None) -> None:
        self.owner = owner
        self.last: dict[StreamKey, Any] = {}
        """Per key: the last key the candidate delivered (its own sequence, to see it go back)."""
        self.buffered: dict[StreamKey, tuple[Any, list[Record]]] = {}
        """Per key: the first buffered key and the records held back, in arrival order."""
        self.held = 0
        """Records currently buffered (all keys)."""
        self.caught: set[StreamKey] = set()
        """Keys where overlap is proven; the candidate's records go through the marks."""
        self.needed: set[StreamKey] = set()
        """Keys the primary emitted during the rotation that are not proven yet."""
        self.emitted_ts: dict[StreamKey, int] = {}
        """Per key: the latest event time (``exchange_ts``) the primary emitted during the
        rotation. A copy the candidate delivers later has its original's event time, never a
        later one (see :meth:`HighWaterMarks.release`)."""

    def ready(self) -> bool:
        """Every key either socket delivered during the rotation is proven."""
        return not self.buffered and not self.needed

    def unproven(self) -> int:
        """Keys that would switch sockets without proven overlap."""
        return len(self.needed | self.buffered.keys())


class _Mark:
    """The state of one ``(stream, native)``: see the module docstring."""

    __slots__ = ("key", "lag_key", "lag_ts", "lagger", "ring", "src", "ties")

    def __init__(self, key: Any, r: Record, content: bool, src: object) -> None:
        self.key = key
        self.ring: deque[Any] = deque((key,), REPLAY_WINDOW)
        """Keys of the last records emitted."""
        self.ties: list[Record] | None = [r] if content else None
        """Content-keyed channels: the records emitted at ``key``."""
        self.src = src
        """The socket that emitted last."""
        self.lagger: object = None
        """A socket taken over from a rotation partner that is still behind the mark."""
        self.lag_key: Any = None
        """The last key ``lagger`` delivered."""
        self.lag_ts: int | None = None
        """The latest event time the old socket emitted before ``lagger`` took over: a record of
        ``lagger`` with a later one is no copy (its ids restarted), whatever its key says."""

    def own_prev(self, source: object) -> Any:
        """The last key ``source`` delivered here, when known (``None``: not known)."""
        if source is None:
            return None
        if self.src is source:
            return self.key
        return self.lag_key if self.lagger is source else None

    def copy(self, key: Any, r: Record, spec: ChannelSpec) -> bool:
        """``r`` (``key`` at or below the mark) is a copy of an emitted record."""
        if key == self.key:
            ties = self.ties
            return ties is None or any(spec.same(r, t) for t in ties)
        return key in self.ring

    def tie(self, r: Record) -> None:
        """A distinct record at the mark's key (content-keyed channels)."""
        ties = self.ties
        assert ties is not None
        ties.append(r)
        if len(ties) > MAX_TIES:
            del ties[0]


class HighWaterMarks:
    """The highest key emitted per ``(stream, native)``, shared by all connections."""

    __slots__ = ("_marks", "reset_log", "resets")

    def __init__(self) -> None:
        self._marks: dict[StreamKey, _Mark] = {}
        self.resets = 0
        """Id regressions seen (one ``id_reset`` gap record each)."""
        self.reset_log: list[tuple[str, Gap]] = []
        """``(stream, gap record)`` of each regression not yet taken by the owner (it logs and
        counts them, then clears the list)."""

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
        source: object = None,
        candidate: Handover | None = None,
        rival: Handover | None = None,
    ) -> tuple[list[Record], int]:
        """``(records to emit, number dropped)`` for one frame's records of ``stream``.

        ``source`` names the socket the records came from (``None``: unknown, judged by the
        replay window alone). ``candidate``: the records come from a rotation's new socket, with
        this proof state. ``rival``: the records come from the primary while that candidate is
        open; records the candidate buffered may be released into the result. An id regression
        puts its ``id_reset`` gap record into the result, right before the record.
        """
        marks = self._marks
        keyfn = spec.order_key
        content = spec.content
        rotating = candidate is not None or rival is not None
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
            prev: Any = _UNKNOWN
            if candidate is not None:
                prev = candidate.last.get(hk)
                candidate.last[hk] = key
                if hk not in candidate.caught:
                    dropped += _hold(candidate, hk, m, key, r, spec=spec)
                    continue
            if m is None:
                marks[hk] = _Mark(key, r, content, source)
            elif key > m.key:
                # The hot path (every new record): kept short on purpose.
                m.key = key
                m.ring.append(key)
                if content:
                    m.ties = [r]
                if m.src is not source:
                    m.src, m.lagger = source, None
            elif not self._new_below(
                m, key, r, spec, stream=stream, source=source, rotating=rotating, prev=prev, out=kept
            ):
                dropped += 1
                continue
            kept.append(r)
            if rival is not None:
                ts = r.exchange_ts
                if ts is not None and ts > rival.emitted_ts.get(hk, ts - 1):
                    rival.emitted_ts[hk] = ts
            if rival is not None and hk not in rival.caught:
                entry = rival.buffered.get(hk)
                if entry is not None and (key > entry[0] or (key == entry[0] and spec.same(r, entry[1][0]))):
                    # The primary reached the candidate's first buffered record: the buffer
                    # continues this sequence with nothing missing in between.
                    del rival.buffered[hk]
                    rival.held -= len(entry[1])
                    rival.caught.add(hk)
                    rival.needed.discard(hk)
                    dropped += self._through(stream, entry[1], spec, rival.owner, kept)
                else:
                    rival.needed.add(hk)
        return kept, dropped

    def _new_below(
        self,
        m: _Mark,
        key: Any,
        r: Record,
        spec: ChannelSpec,
        *,
        stream: str,
        source: object,
        rotating: bool,
        prev: Any,
        out: list[Record],
    ) -> bool:
        """``r`` has a key at or below the mark: ``True`` if it is to be emitted (a distinct
        record at the mark, or the first of a new sequence, whose gap record goes to ``out``),
        ``False`` if it is a copy. ``prev``: the last key ``source`` itself delivered here
        (``None``: not known; :data:`_UNKNOWN`: ask the mark)."""
        if prev is _UNKNOWN:
            prev = m.own_prev(source)
        if prev is not None and key < prev:
            out.append(self._reset(m, key, r, spec, stream=stream, source=source))  # own sequence went back
            return True
        lagging = source is not None and m.lagger is source
        if lagging:
            m.lag_key = key
            ts = r.exchange_ts
            if ts is not None and m.lag_ts is not None and ts > m.lag_ts:
                # Later than anything emitted before the switch: not a copy, a restart.
                out.append(self._reset(m, key, r, spec, stream=stream, source=source))
                return True
        if m.copy(key, r, spec):
            return False
        if key == m.key:
            m.tie(r)
            return True
        if rotating or lagging:
            return False  # a rotation partner emitted it: this socket lags behind it
        out.append(self._reset(m, key, r, spec, stream=stream, source=source))
        return True

    def _reset(self, m: _Mark, key: Any, r: Record, spec: ChannelSpec, *, stream: str, source: object) -> Gap:
        """Start a new sequence at ``r``; the ``id_reset`` gap record that says so."""
        old = m.key
        m.key = key
        m.ring = deque((key,), REPLAY_WINDOW)
        m.ties = [r] if spec.content else None
        m.src, m.lagger = source, None
        self.resets += 1
        gap = Gap(
            venue=r.venue,
            symbol=r.symbol,
            native=r.native,
            exchange_ts=r.exchange_ts,
            recv_ts=r.recv_ts,
            kind=GapKind.ID_RESET.value,
            reason=f"{stream}: {'/'.join(spec.order or spec.identity)} restarted at {_show(key)} "
            f"after {_show(old)}; a new sequence starts",
            last_update_id=old if type(old) is int else None,
            first_update_id=key if type(key) is int else None,
            final_update_id=None,
            started_ts=r.recv_ts,
            data_channel=spec.channel,
        )
        self.reset_log.append((stream, gap))
        return gap

    def release(
        self, handover: Handover, specs: Mapping[str, ChannelSpec]
    ) -> tuple[list[Record], dict[str, int]]:
        """Flush every buffer of ``handover`` through the marks (the switch to its socket).

        ``specs`` maps stream name to the spec of its records. Returns the records to emit and
        the number dropped per stream. From now on the candidate's socket is the only source; on
        every key where it is still behind a mark the old socket set, its records below that
        mark are copies until it catches up.
        """
        kept: list[Record] = []
        dropped: dict[str, int] = {}
        owner = handover.owner
        for hk, (_, recs) in handover.buffered.items():
            n = self._through(hk[0], recs, specs[hk[0]], owner, kept)
            if n:
                dropped[hk[0]] = dropped.get(hk[0], 0) + n
            handover.caught.add(hk)
        handover.buffered.clear()
        handover.held = 0
        if owner is not None:
            for hk in handover.caught:
                m = self._marks.get(hk)
                if m is not None and m.src is not owner:
                    m.lagger, m.lag_key = owner, handover.last.get(hk)
                    m.lag_ts = handover.emitted_ts.get(hk)
        return kept, dropped

    def _through(
        self, stream: str, records: list[Record], spec: ChannelSpec, source: object, out: list[Record]
    ) -> int:
        """Admit a candidate's buffered records (in its order) through the marks; rotation rules."""
        marks = self._marks
        keyfn = spec.order_key
        dropped = 0
        prev: Any = None
        for r in records:
            key = keyfn(r)
            hk = (stream, r.native)
            m = marks.get(hk)
            if m is None:
                marks[hk] = _Mark(key, r, spec.content, source)
            elif key > m.key:
                m.key = key
                m.ring.append(key)
                if spec.content:
                    m.ties = [r]
                m.src, m.lagger = source, None
            elif not self._new_below(
                m, key, r, spec, stream=stream, source=source, rotating=True, prev=prev, out=out
            ):
                prev = key
                dropped += 1
                continue
            prev = key
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


def _show(key: Any) -> str:
    return "/".join(map(str, key)) if isinstance(key, tuple) else str(key)
