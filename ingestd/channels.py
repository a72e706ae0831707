"""What a channel is, as data: one :class:`ChannelSpec` per channel per venue.

A spec is the single source of truth for every fact about a channel that more than one stage
needs: where it comes from (stream template and route, or REST, or the daemon itself), its record
and wire types and the builder between them, which fields make two records *the same record*
(identity), which key orders a stream's records, its cadence and the prices to validate. The
venue's table (:mod:`ingestd.venues.binance.channels`) lists the specs; the parser, the connection
planner, the duplicate filter, the NATS publisher, the staleness watchdog, readiness, the metrics
validation, config validation and the sim all read it. Nothing else defines these facts.

Identity
    ``identity`` names the fields whose values make a record unique within its
    ``(venue, channel, native)``: a trade id, an update id, a kline's ``(open_time,
    exchange_ts)``. Where no field is unique (mark price, tickers and liquidations are keyed on
    their millisecond event time, and two different events may share it) ``content`` is set:
    the identity is then those fields *plus everything the record says* (every field but
    ``recv_ts``, :func:`content_of`). The duplicate filter, the ``Nats-Msg-Id`` and a replay merge
    all derive from it, so they agree on what a duplicate is.

Order
    ``order`` (by default the identity fields) is the key that grows along a stream: the
    duplicate filter keeps a high-water mark of it per ``(stream, native)``. A record whose key is
    ``None`` cannot be ordered and always passes.

Cadence
    :class:`Cadence` says what silence on a stream means; the stale watchdog and ``/readyz``
    read it.
"""

from __future__ import annotations

import enum
import hashlib
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from ingestd.records import Record

KeyFn = Callable[[Any], Any]
"""A record → its ordering key (``None``: the record cannot be ordered)."""


class Cadence(enum.StrEnum):
    """What drives a stream's frames, so what its silence means."""

    BOOK = "book"
    """Pushed on the venue's own clock whatever trading does: book data (depth, bookTicker) and
    mark price, several times a second on any listed contract. Silence is a stall."""
    TRADE = "trade"
    """Moves with trading (trades, klines, tickers): quiet for minutes on a thin contract."""
    EVENT = "event"
    """Only when something happens (liquidations): silence says nothing at all."""


class Source(enum.StrEnum):
    """Where a channel's records come from."""

    STREAM = "stream"
    """A websocket stream (``template``): a user may ask for it in ``channels``."""
    SNAPSHOT = "snapshot"
    """REST depth snapshots: a user may ask for them in ``channels``; books request them too."""
    POLL = "poll"
    """A REST poller (``pollers.*`` settings)."""
    DERIVED = "derived"
    """Made by the daemon itself: the gap log, book views, clock samples."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelSpec:
    """Every fact about one channel on one venue (see the module docstring)."""

    channel: str
    """The record's ``channel``: Parquet partition, NATS subject token, bus topic."""
    record: type[Record]
    source: Source
    identity: tuple[str, ...]
    """Fields whose values name the record within its ``(venue, channel, native)``."""
    content: bool = False
    """The identity fields are not unique on their own: the rest of the content counts too."""
    order: tuple[str, ...] = ()
    """Fields of the key that grows along a stream; empty: the identity fields."""
    cadence: Cadence | None = None
    """Streams only: what drives its frames (staleness, readiness)."""
    prices: tuple[str, ...] = ()
    """Price fields that must be finite and positive (metrics validation)."""
    event_time: bool = True
    """Every payload carries an event time, so ``exchange_ts is None`` is a defect (spot
    bookTicker and spot depth snapshots carry none)."""
    template: str | None = None
    """Stream name with ``{s}`` (lowercase native) and named parameters (``{interval}``)."""
    all_market: str | None = None
    """The all-market stream carrying the same payloads (``!ticker@arr``), speed suffix stripped."""
    route: str | None = None
    """URL route of the stream (``/public``, ``/market``); ``""`` on an unrouted venue."""
    wire: type[msgspec.Struct] | None = None
    """The payload's wire shape (:mod:`ingestd.venues.binance.wire`)."""
    build: Callable[..., Record] | None = None
    """``(route, contract, wire, recv_ts) -> record`` (streams)."""
    symbol_of: Callable[[Any], str] | None = None
    """Reads the payload's native symbol; ``None`` when the payload names none."""
    documented: bool = True
    """The venue documents this channel. ``False``: frames may arrive, but nothing promises they
    will (USDⓈ-M ``@trade``); start-up warns about it."""
    instead: str | None = None
    """With ``documented=False``: the documented channel carrying the same facts (start-up names it)."""
    order_key: KeyFn = field(init=False, repr=False, compare=False)
    """Built from ``order``: a record → its ordering key."""
    message_key: Callable[[Any], str] = field(init=False, repr=False, compare=False)
    """Built from the identity: a record → ``"<id>[:<id>…][:<content digest>]"``."""

    def __post_init__(self) -> None:
        fields = set(self.record.__struct_fields__)
        if self.channel != self.record.channel:
            raise ValueError(f"{self.channel}: record {self.record.__name__} is of {self.record.channel!r}")
        for name in (*self.identity, *self.order, *self.prices):
            if name not in fields:
                raise ValueError(f"{self.channel}: {self.record.__name__} has no field {name!r}")
        if not self.identity:
            raise ValueError(f"{self.channel}: a channel needs an identity")
        if (self.source is Source.STREAM) != (self.template is not None) or (
            self.template is not None and (self.cadence is None or self.build is None or self.wire is None)
        ):
            raise ValueError(f"{self.channel}: a stream has a template, cadence, wire and builder; no other")
        object.__setattr__(self, "order_key", _key_fn(self.order or self.identity))
        object.__setattr__(self, "message_key", _message_key_fn(self.identity, self.content))

    @property
    def selectable(self) -> bool:
        """A user may name it in ``channels``."""
        return self.source in (Source.STREAM, Source.SNAPSHOT)

    def same(self, a: Record, b: Record) -> bool:
        """``a`` and ``b`` are the same record (by identity; they may differ in ``recv_ts``)."""
        if self.content:
            return content_of(a) == content_of(b)
        return all(getattr(a, f) == getattr(b, f) for f in self.identity)


def _key_fn(names: tuple[str, ...]) -> KeyFn:
    if len(names) == 1:
        return operator.attrgetter(names[0])
    get = operator.attrgetter(*names)

    def key(r: Any) -> tuple[Any, ...] | None:
        k: tuple[Any, ...] = get(r)
        return None if None in k else k

    return key


def _message_key_fn(names: tuple[str, ...], content: bool) -> Callable[[Any], str]:
    get = operator.attrgetter(*names)
    if len(names) == 1 and not content:
        return lambda r: str(get(r))
    if len(names) == 1:
        return lambda r: f"{get(r)}:{content_digest(r)}"
    if not content:
        return lambda r: ":".join(map(str, get(r)))
    return lambda r: ":".join((*map(str, get(r)), content_digest(r)))


_RECV_AT: dict[type[Any], int] = {}
_MSGPACK: Final = msgspec.msgpack.Encoder()


def content_of(record: Record) -> tuple[Any, ...]:
    """Everything ``record`` says: its fields but ``recv_ts`` (when we heard it is not content)."""
    values = msgspec.structs.astuple(record)
    cls = type(record)
    at = _RECV_AT.get(cls)
    if at is None:
        at = _RECV_AT[cls] = cls.__struct_fields__.index("recv_ts")
    return values[:at] + values[at + 1 :]


def content_digest(record: Record) -> str:
    """16 hex digits naming :func:`content_of` ``record``: stable across processes and across a
    JSON or MessagePack round trip (floats are encoded as float64, levels as arrays)."""
    return hashlib.blake2b(_MSGPACK.encode(content_of(record)), digest_size=8).hexdigest()


def fallback_spec(record: type[Record]) -> ChannelSpec:
    """The spec of a record type no venue table lists (a test probe, a later stage's record):
    identified by its content, ordered by event time."""
    return ChannelSpec(
        channel=record.channel, record=record, source=Source.DERIVED, identity=("exchange_ts",), content=True
    )


class ChannelTable(Mapping[str, ChannelSpec]):
    """The specs of one venue, by channel name (a read-only mapping)."""

    def __init__(self, venue: str, specs: Iterable[ChannelSpec]) -> None:
        self.venue = venue
        self._specs: dict[str, ChannelSpec] = {}
        for spec in specs:
            if spec.channel in self._specs:
                raise ValueError(f"{venue}: channel {spec.channel!r} is listed twice")
            self._specs[spec.channel] = spec
        self.selectable: tuple[str, ...] = tuple(c for c, s in self._specs.items() if s.selectable)
        """Channels a user may name in ``channels``, in table order."""
        self.streamed: tuple[ChannelSpec, ...] = tuple(s for s in self._specs.values() if s.template)

    def __getitem__(self, channel: str) -> ChannelSpec:
        return self._specs[channel]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def spec_for(self, record: type[Record]) -> ChannelSpec:
        """The spec of ``record``'s channel; for one the table does not list, :func:`fallback_spec`."""
        spec = self._specs.get(record.channel)
        return spec if spec is not None else fallback_spec(record)
