"""Replay: stored records back as the live record structs, with books and context as of each one.

:class:`Replay` merges the stored tree into one stream (:mod:`ingestd.replay.merge`) and, before
handing each record on, feeds it to the same machinery the daemon runs:

* ``depth_snapshot``, ``depth_diff`` and ``book_ticker`` go through a
  :class:`~ingestd.book.manager.BookManager` (the daemon's :class:`~ingestd.book.sync.BookSync`
  rules and bookTicker audit), so :attr:`Replay.books` is the book **as of the record being
  handed on**: every diff up to it applied, none after it. (A live hook reads the *current*
  book, which may already be ahead of the record it is handling: the daemon's book stage runs
  before the hooks' queues.) A ``disconnect`` entry of the stored gap log discards the book as
  the disconnect did live; every other gap the book stage finds again by itself. The gap
  records it derives are not handed on: the stored gap log is, in place.
* ``contract`` rows update :attr:`Replay.context` (a :class:`~ingestd.consumers.hooks.HookContext`
  like the daemon's: ``contracts``, ``price_precision``, ``min_qty``, ``books``), so it holds the
  definition valid at each moment. At the start it holds the latest definition stored before
  the window (or the first one stored, for data whose contracts were stored later).

The window ``[start, end)`` selects by event time, ``exchange_ts`` (where the venue sends none, a
REST trade's ``transaction_ts``, else ``recv_ts``), which is also what names the ``date``
partitions, so whole days are pruned by path.
The merge order stays ``recv_ts``. So that a book is exact when the window opens, its book data
is read from ``warmup_s`` before the latest stored snapshot before ``start`` (the diffs a live
book buffered while that snapshot was fetched come with it); those records feed the book only.
A book that ran for days without a gap therefore costs days of diffs to warm up: that is what
its state depends on.

Bad input raises :class:`~ingestd.errors.ConfigError` with one line saying what is wrong, before
anything is read. Unreadable files are reported, skipped and counted (:attr:`Replay.losses`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

from ingestd.book.book import OrderBook
from ingestd.book.manager import BookManager
from ingestd.book.records import Gap, GapKind
from ingestd.consumers.hooks import HookContext
from ingestd.errors import ConfigError
from ingestd.producers.contract_records import ContractRecord, contract_from_record
from ingestd.producers.events import ConnectionEvent, ConnectionEventKind
from ingestd.records import RECORD_TYPES, BookTicker, DepthDiff, DepthSnapshot, Record, event_time
from ingestd.replay.merge import merge
from ingestd.replay.source import Losses, PartReader, latest_event_before, list_parts
from ingestd.venues.binance.endpoints import VENUES
from ingestd.venues.binance.symbols import Contract, ContractSet

log = logging.getLogger("ingestd.replay")

DEFAULT_WARMUP_S: Final = 60.0
BOOK_CHANNELS: Final = frozenset({"depth_snapshot", "depth_diff", "book_ticker", "gap"})
"""What the books are rebuilt from: snapshots, diffs, the bookTicker audit, the gap log."""

TimeLike = int | float | str | datetime | date | None
"""A window bound: ns since the epoch, an aware ``datetime``, a ``date`` (00:00 UTC) or ISO text."""

BookFactory = Callable[[Contract], OrderBook]


def parse_time(value: TimeLike, what: str = "time") -> int | None:
    """A window bound → ns since the epoch (UTC). Text: a date (``2024-08-08``, 00:00 UTC), a
    time with a zone (``2024-08-08T23:55:00Z``; a time without a zone is refused rather than
    guessed), or ns since the epoch (``1723161398847000000``, as stored). Raises
    :class:`ConfigError` naming ``what`` and the bad value."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{what} {value!r}: not a time")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigError(f"{what} {value!r}: give a time zone")
        return _ns(value)
    if isinstance(value, date):
        return _ns(datetime(value.year, value.month, value.day, tzinfo=UTC))
    text = value.strip()
    if text.isdigit():
        return int(text)  # ns since the epoch, as stored
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return _ns(datetime(day.year, day.month, day.day, tzinfo=UTC))
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{what} {value!r}: not a date; want YYYY-MM-DD or an ISO 8601 time with a zone, "
            "e.g. 2024-08-08T23:55:00Z"
        ) from None
    if when.tzinfo is None:
        raise ConfigError(f"{what} {value!r}: give a time zone (e.g. {text}Z or {text}+00:00)")
    return _ns(when)


def _ns(when: datetime) -> int:
    delta = when.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def format_ns(ts: int) -> str:
    """ns since the epoch → ``2024-08-08T23:55:00.123Z``."""
    when = datetime.fromtimestamp(ts // 1_000_000_000, UTC)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{(ts // 1_000_000) % 1000:03d}Z"


def native_of(symbol: str) -> str:
    """``BTC-USDT-PERP`` / ``BTC-USDT`` → ``BTCUSDT`` (Binance natives are base + quote)."""
    return symbol.removesuffix("-PERP").replace("-", "")


def event_ts(rec: Record) -> int:
    """The time a window selects on: ``exchange_ts``; where there is none, a REST trade's
    ``transaction_ts``, else ``recv_ts`` (:func:`ingestd.records.event_time`, as partitioned)."""
    return event_time(rec)


def _stored(root: Path, pattern: str) -> list[str]:
    return sorted({p.name.partition("=")[2] for p in root.glob(pattern) if p.is_dir()})


class Replay:
    """Stored records of one venue, merged by ``recv_ts``, with books and context as of each.

    Iterate it once: each record is yielded after :attr:`books` and :attr:`context` have taken
    it in. ``channels`` are the channels handed on (default: every stored one);
    ``symbols`` native (``BTCUSDT``) or normalized (``BTC-USDT-PERP``) names; ``venue`` may be
    left out when the tree holds one venue. ``books=False`` skips the order books (faster when
    no one reads them). ``book_factory`` gives each symbol's :class:`OrderBook` (exports pass a
    subclass that records every change).
    """

    def __init__(
        self,
        data: str | Path,
        *,
        venue: str | None = None,
        symbols: Iterable[str] | None = None,
        channels: Iterable[str] | None = None,
        start: TimeLike = None,
        end: TimeLike = None,
        books: bool = True,
        warmup_s: float = DEFAULT_WARMUP_S,
        max_buffered: int = 10_000,
        book_factory: BookFactory | None = None,
    ) -> None:
        root = Path(data)
        if not root.exists():
            raise ConfigError(f"data directory {str(root)!r} does not exist")
        if not root.is_dir():
            raise ConfigError(f"data directory {str(root)!r} is not a directory")
        venues = _stored(root, "venue=*")
        if not venues or not any(root.glob("venue=*/channel=*/symbol=*/date=*/*.parquet")):
            raise ConfigError(
                f"data directory {str(root)!r} holds no stored data "
                "(expected venue=…/channel=…/symbol=…/date=…/*.parquet)"
            )
        self.venue = self._venue(venue, venues)
        self.root = root
        self.start = parse_time(start, "--from")
        self.end = parse_time(end, "--to")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ConfigError(f"--from {format_ns(self.start)} is not before --to {format_ns(self.end)}")
        vroot = root / f"venue={self.venue}"
        stored_channels = _stored(vroot, "channel=*")
        self.channels = self._channels(channels, stored_channels)
        self.symbols = self._symbols(symbols, _stored(vroot, "channel=*/symbol=*"))
        self.warmup_ns = int(warmup_s * 1e9)
        self.max_buffered = max_buffered
        self.losses = Losses()
        self.context = HookContext()
        self.delivered = 0
        self.per_channel: dict[str, int] = {}
        self.book_errors = 0
        self.derived_gaps: dict[str, int] = {}
        """Gaps the rebuilt books found, by kind (compare with the stored gap log)."""
        self.position_ts: int | None = None
        """Event time (:func:`event_ts`) of the last record handed on."""
        self.current: Record | None = None
        """The record being taken in (set before the books see it: exports read its times)."""
        self.contract_rows: dict[str, ContractRecord] = {}
        """Per native, the stored row of the definition valid at the start."""
        self._contracts: dict[str, Contract] = {}
        self._book_contracts: tuple[Contract, ...] = ()
        self._started = False
        with_books = books and "depth_diff" in stored_channels
        self._read = self.channels | {"contract"} | (BOOK_CHANNELS if with_books else frozenset())
        self._load_contracts()
        self.books: BookManager | None = (
            self._book_manager(max_buffered, book_factory) if with_books else None
        )
        self.context.books = self.books

    # -- set-up -----------------------------------------------------------------------------

    @staticmethod
    def _venue(venue: str | None, stored: list[str]) -> str:
        if venue is not None:
            if venue not in VENUES:
                raise ConfigError(f"unknown venue {venue!r}; known: {', '.join(VENUES)}")
            if venue not in stored:
                raise ConfigError(f"no stored data for venue {venue} (stored: {', '.join(stored)})")
            return venue
        known = [v for v in stored if v in VENUES]
        if len(known) != 1:
            raise ConfigError(f"the data holds venues {', '.join(stored)}: choose one with --venue")
        return known[0]

    @staticmethod
    def _channels(channels: Iterable[str] | None, stored: list[str]) -> frozenset[str]:
        if channels is None:
            return frozenset(c for c in stored if c in RECORD_TYPES)
        wanted = [c.strip() for c in channels if c.strip()]
        bad = [c for c in wanted if c not in RECORD_TYPES]
        if bad:
            raise ConfigError(
                f"unknown channel {', '.join(map(repr, bad))}; known: {', '.join(sorted(RECORD_TYPES))}"
            )
        if not wanted:
            raise ConfigError("at least one channel is needed")
        return frozenset(wanted)

    @staticmethod
    def _symbols(symbols: Iterable[str] | None, stored: list[str]) -> frozenset[str] | None:
        if symbols is None:
            return None
        by_native: dict[str, list[str]] = {}
        for s in stored:
            by_native.setdefault(native_of(s), []).append(s)
        chosen: set[str] = set()
        missing: list[str] = []
        for raw in symbols:
            name = raw.strip()
            if not name:
                continue
            found = [name] if name in stored else by_native.get(name.upper(), [])
            if found:
                chosen.update(found)
            else:
                missing.append(name)
        if missing:
            raise ConfigError(f"no stored data for symbol {', '.join(missing)}")
        if not chosen:
            raise ConfigError("--symbols names no symbol")
        return frozenset(chosen)

    def _readers(
        self, channels: frozenset[str], lo: int | None, hi: int | None, *, symbol: str | None = None
    ) -> list[PartReader]:
        symbols = self.symbols if symbol is None else frozenset({symbol})
        parts = list_parts(
            self.root, venues=frozenset({self.venue}), channels=channels, symbols=symbols, lo=lo, hi=hi
        )
        return [PartReader(p, self.losses, lo=lo, hi=hi) for p in parts]

    def part_readers(self, channel: str) -> list[PartReader]:
        """Readers of ``channel``'s stored parts in the window (for :func:`~ingestd.replay.frame`)."""
        return self._readers(frozenset({channel}), self.start, self.end)

    def _load_contracts(self) -> None:
        """The definitions valid at ``start`` (the first stored, where none is older)."""
        # Read them all: with captures replayed by the sim, definitions (stamped at the run) can
        # be later than the data's event times.
        for reader in self._readers(frozenset({"contract"}), None, None):
            for batch in reader.batches():
                for rec in batch:
                    assert isinstance(rec, ContractRecord)
                    have = self._contracts.get(rec.native)
                    if have is None or (self.start is not None and rec.recv_ts <= self.start):
                        self._contracts[rec.native] = contract_from_record(rec)
                        self.contract_rows[rec.native] = rec
        self._publish_contracts()

    def _publish_contracts(self) -> None:
        ctx = self.context
        ctx.contracts = ContractSet(self.venue, tuple(self._contracts.values()))
        # Updated in place: a hook that kept a reference sees the new values.
        precision, min_qty = ctx.contracts.price_precision(), ctx.contracts.min_qty()
        for gone in [k for k in ctx.price_precision if k not in precision]:
            del ctx.price_precision[gone]
        for gone in [k for k in ctx.min_qty if k not in min_qty]:
            del ctx.min_qty[gone]
        ctx.price_precision.update(precision)
        ctx.min_qty.update(min_qty)

    def _book_manager(self, max_buffered: int, book_factory: BookFactory | None) -> BookManager:
        symbols = _stored(self.root / f"venue={self.venue}" / "channel=depth_diff", "symbol=*")
        contracts = []
        for symbol in symbols:
            if self.symbols is not None and symbol not in self.symbols:
                continue
            native = native_of(symbol)
            c = self._contracts.get(native)
            if c is None:  # data stored before contract rows were: the book needs only the names
                base, _, rest = symbol.partition("-")
                c = Contract(self.venue, native, symbol, base, rest.removesuffix("-PERP"), 0.0, 8, 0.0, 0.0)
            contracts.append(c)
        self._book_contracts = tuple(contracts)
        return BookManager(
            self.venue,
            ContractSet(self.venue, self._book_contracts),
            market="futures" if VENUES[self.venue].routed else "spot",
            request_snapshot=self._snapshot_requested,
            max_buffered=max_buffered,
            book_factory=book_factory,
        )

    def _snapshot_requested(self, native: str, urgent: bool) -> None:
        """Live, this fetched a snapshot; the one it got is in the stored stream already."""

    # -- the stream ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Record]:
        if self._started:
            raise RuntimeError("a Replay runs once; make a new one to replay again")
        self._started = True
        lo, hi = self.start, self.end
        if self.books is None or lo is None:
            return self._records(merge(self._readers(self._read, lo, hi)))
        # Book data of the books' symbols is read from before the window (warm-up).
        book_symbols = {c.symbol for c in self._book_contracts}
        readers = [
            r
            for r in self._readers(self._read, lo, hi)
            if not (r.part.channel in BOOK_CHANNELS and r.part.symbol in book_symbols)
        ]
        for symbol in sorted(book_symbols):
            readers += self._readers(
                self._read & BOOK_CHANNELS, self._warm_start(symbol, lo), hi, symbol=symbol
            )
        return self._records(merge(readers))

    def _warm_start(self, symbol: str, lo: int) -> int:
        """Where ``symbol``'s book data is read from so its book is exact when the window opens:
        ``warmup_s`` before the latest snapshot before ``lo`` (the diffs a live book held while
        that snapshot was fetched come with it), or before ``lo`` when there is none."""
        parts = list_parts(
            self.root,
            venues=frozenset({self.venue}),
            channels=frozenset({"depth_snapshot"}),
            symbols=frozenset({symbol}),
            lo=None,
            hi=lo,
        )
        snap = latest_event_before(parts, lo)
        return (lo if snap is None else snap) - self.warmup_ns

    def _records(self, merged: Iterator[Record]) -> Iterator[Record]:
        wanted = self.channels
        books = self.books
        lo = self.start
        counts = self.per_channel
        for rec in merged:
            self.current = rec
            cls = type(rec)
            if books is not None and (cls is DepthDiff or cls is DepthSnapshot or cls is BookTicker):
                self._book(books, rec)
            elif cls is ContractRecord:
                assert isinstance(rec, ContractRecord)
                # A contract that stopped trading (a --follow-listings delisting) leaves the
                # context, as it left the live one.
                if rec.status == "TRADING":
                    self._contracts[rec.native] = contract_from_record(rec)
                else:
                    self._contracts.pop(rec.native, None)
                self._publish_contracts()
            elif cls is Gap and books is not None:
                assert isinstance(rec, Gap)
                if rec.kind == GapKind.DISCONNECT:
                    self._disconnect(books, rec)
            channel = rec.channel
            if channel not in wanted or (lo is not None and event_ts(rec) < lo):
                continue  # a book record of the warm-up, or one only the books asked for
            self.delivered += 1
            counts[channel] = counts.get(channel, 0) + 1
            self.position_ts = event_ts(rec)
            yield rec

    def _book(self, books: BookManager, rec: Record) -> None:
        try:
            derived = books.process((rec,))
        except Exception:
            # As live: a book bug must not cost the replay; logged once with its traceback.
            self.book_errors += 1
            if self.book_errors == 1:
                log.exception("replay: order-book processing failed on %s; counting", rec.channel)
            return
        self._count_gaps(derived)

    def _disconnect(self, books: BookManager, gap: Gap) -> None:
        event = ConnectionEvent(
            ConnectionEventKind.DISCONNECTED, "replay", (), (gap.native,), gap.recv_ts, gap.reason
        )
        self._count_gaps(books.on_connection_event(event))

    def _count_gaps(self, derived: list[Record]) -> None:
        for r in derived:
            if isinstance(r, Gap):
                self.derived_gaps[r.kind] = self.derived_gaps.get(r.kind, 0) + 1

    def stats(self) -> dict[str, Any]:
        """Records handed on (total and per channel), unreadable files and rows lost, books."""
        out: dict[str, Any] = {
            "venue": self.venue,
            "records": self.delivered,
            "per_channel": dict(sorted(self.per_channel.items())),
            "files_skipped": len(self.losses.files),
            "rows_lost": self.losses.rows,
            "bytes_unreadable": self.losses.bytes,
            "position_ts": self.position_ts,
        }
        if self.books is not None:
            out["books"] = self.books.stats()["totals"]
            out["book_errors"] = self.book_errors
            out["derived_gaps"] = dict(self.derived_gaps)
        return out
