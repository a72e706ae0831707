"""Recorded captures → one replay timeline (pure parsing; the only I/O is reading the file).

Three on-disk formats are read (docs/binance.md §8.1):

* **hftbacktest** (``.gz`` or plain): ``<local_ns> <json>`` per line. Websocket lines are
  combined-stream frames ``{"stream":..,"data":..}``; the REST depth snapshot is a bare body with
  ``lastUpdateId`` whose symbol is the file's only symbol (or its ``symbol`` key on COIN-M)::

      1723161255088176367 {"stream":"btcusdt@trade","data":{"e":"trade","E":1723161256322,..}}
      1723161255319702566 {"lastUpdateId":5123107852948,"E":1723161256501,"T":..,"bids":[..],..}

* **ingestd raw dump** (``--json-dump DIR --raw``, may be gzip): ``<recv_ns> <source> <frame>``;
  ``source`` is the websocket path (``/public/stream``, ``/ws/btcusdt@trade``) or the REST path
  with its query (``/fapi/v1/depth?symbol=BTCUSDT&limit=1000``). REST depth lines give snapshots.
* **cryptofeed** raw capture: ``X.ws.N.0`` (``<wss-url> <-> <ts>`` then ``<recv_ts>: <json>``) and
  its sibling ``X.http.<N-1>.0`` (``<url> -> <ts>: <body>``, symbol in the URL query).

Every frame is kept as the exact bytes recorded, in combined-stream form (a bare frame recorded
on a raw ``/ws/<name>`` connection is wrapped once, so unwrapping gives the recorded bytes back).
The market is read from the payloads: depth diffs carrying ``pu`` are futures (USDⓈ-M; COIN-M
captures are served on the futures side too), diffs without it are spot.
"""

from __future__ import annotations

import gzip
import heapq
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import orjson

from ingestd.errors import ConfigError
from ingestd.venues.binance.endpoints import stream_kind, stream_symbol

Market = Literal["futures", "spot"]
Format = Literal["hftbacktest", "ingestd-raw", "cryptofeed"]

_STREAM_PREFIX = b'{"stream":"'
_DATA_INFIX = b'","data":'
_GZIP_MAGIC = b"\x1f\x8b"
_CF_FILE = re.compile(r"^(?P<x>.+)\.(?P<kind>ws|http)\.(?P<n>\d+)\.(?P<m>\d+)$")
_CF_WS_HEADER = re.compile(rb"^(\S+) <-> [\d.]+$")
_CF_HTTP_LINE = re.compile(rb"^(\S+) -> ([\d.]+): (.*)$")
_CF_WS_LINE = re.compile(rb"^([\d.]+): (.*)$")
_MAX_KEPT_GAP_NS = 60_000_000_000
"""A capture starting more than this after the others end is moved back to where they end."""


class CaptureError(ConfigError):
    """A capture file is missing, unreadable or not in a format the sim knows."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One recorded REST depth snapshot: the body exactly as received."""

    market: Market
    symbol: str
    """Upper-case native symbol (``BTCUSDT``)."""
    recv_ns: int
    body: bytes
    source: str = ""
    """Where it came from: a REST path/URL, or ``""`` for hftbacktest's bare line."""


@dataclass(slots=True)
class Capture:
    """One capture file, parsed: frames in recorded order plus its REST depth snapshots.

    ``frames[i]`` is the combined-stream frame received at ``ts[i]`` (ns) on stream
    ``streams[sid[i]]``.
    """

    name: str
    format: Format
    market: Market
    streams: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    sid: list[int] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    skipped_lines: int = 0
    """Lines that are neither a stream frame nor a depth snapshot (acks, other REST bodies)."""

    def __len__(self) -> int:
        return len(self.frames)

    def stream_counts(self) -> dict[str, int]:
        """Frames per recorded stream name."""
        counts = [0] * len(self.streams)
        for s in self.sid:
            counts[s] += 1
        return dict(zip(self.streams, counts, strict=True))

    def symbols(self) -> list[str]:
        """Upper-case native symbols named by the streams and snapshots, sorted."""
        out = {sym.upper() for n in self.streams if (sym := stream_symbol(n))}
        out.update(s.symbol for s in self.snapshots)
        return sorted(out)


class _Builder:
    """Accumulates frames of one file; stream ids in order of first appearance."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.cap_streams: list[str] = []
        self.ts: list[int] = []
        self.sid: list[int] = []
        self.frames: list[bytes] = []
        self.snapshots: list[tuple[int, bytes, str, str | None]] = []
        self.skipped = 0
        self.hints: list[Market] = []

    def frame(self, ts: int, name: str, frame: bytes) -> None:
        sid = self.ids.get(name)
        if sid is None:
            sid = self.ids[name] = len(self.cap_streams)
            self.cap_streams.append(name)
        self.ts.append(ts)
        self.sid.append(sid)
        self.frames.append(frame)

    def snapshot(self, ts: int, body: bytes, source: str, symbol: str | None) -> None:
        self.snapshots.append((ts, body, source, symbol))

    def finish(self, name: str, fmt: Format) -> Capture:
        market = _detect_market(self.cap_streams, self.sid, self.frames, self.hints)
        only = {s.upper() for n in self.cap_streams if (s := stream_symbol(n))}
        snaps: list[Snapshot] = []
        for ts, body, source, symbol in self.snapshots:
            sym = symbol
            if sym is None:
                try:
                    parsed = orjson.loads(body)
                except orjson.JSONDecodeError:
                    self.skipped += 1
                    continue
                if isinstance(parsed, dict) and isinstance(parsed.get("symbol"), str):
                    sym = parsed["symbol"]
                elif len(only) == 1:
                    sym = next(iter(only))
                else:
                    raise CaptureError(
                        f"{name}: a depth snapshot names no symbol and the capture holds "
                        f"{len(only)} symbols ({', '.join(sorted(only)) or 'none'})"
                    )
            snaps.append(Snapshot(market, sym.upper(), ts, body, source))
        return Capture(
            name=name,
            format=fmt,
            market=market,
            streams=self.cap_streams,
            ts=self.ts,
            sid=self.sid,
            frames=self.frames,
            snapshots=snaps,
            skipped_lines=self.skipped,
        )


def _detect_market(
    names: Sequence[str], sids: Sequence[int], frames: Sequence[bytes], hints: list[Market]
) -> Market:
    """Payload evidence first (depth diffs with/without ``pu``), then URL hints, else futures."""
    first: dict[int, bytes] = {}
    for s, f in zip(sids, frames, strict=True):
        if s not in first:
            first[s] = f
    for s, f in first.items():
        if stream_kind(names[s]).startswith("depth") and b'"depthUpdate"' in f:
            return "futures" if b'"pu":' in f else "spot"
    for s, f in first.items():
        kind = stream_kind(names[s])
        if kind == "bookTicker":
            return "futures" if b'"e":"bookTicker"' in f else "spot"
        if kind in ("trade", "aggTrade"):
            if b'"M":' in f:
                return "spot"
            return "futures"
    if hints:
        return hints[0]
    return "futures"


def _combined_name(frame: bytes) -> str | None:
    """Stream name of a combined-stream frame; ``None`` when the frame is not one."""
    if frame.startswith(_STREAM_PREFIX):
        end = frame.find(b'"', len(_STREAM_PREFIX))
        if end > 0 and frame.startswith(_DATA_INFIX, end):
            return frame[len(_STREAM_PREFIX) : end].decode()
    if not frame.startswith(b"{"):
        return None
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    if isinstance(msg, dict) and isinstance(msg.get("stream"), str) and "data" in msg:
        return str(msg["stream"])
    return None


def wrap(name: str, data: bytes) -> bytes:
    """Combined-stream frame around a bare payload (compact, as Binance writes it)."""
    return b"".join((_STREAM_PREFIX, name.encode(), _DATA_INFIX, data, b"}"))


def unwrap(name: str, frame: bytes) -> bytes:
    """The ``data`` part of a combined frame, as the exact recorded bytes when the layout allows."""
    head = len(_STREAM_PREFIX) + len(name.encode()) + len(_DATA_INFIX)
    if (
        frame.startswith(_STREAM_PREFIX)
        and frame.startswith(_DATA_INFIX, head - len(_DATA_INFIX))
        and frame.endswith(b"}")
    ):
        return frame[head:-1]
    return orjson.dumps(orjson.loads(frame)["data"])


def _ns(text: bytes) -> int:
    """``b"1626992741.06217"`` seconds → ns without float rounding."""
    whole, _, frac = text.partition(b".")
    return int(whole) * 1_000_000_000 + int((frac + b"000000000")[:9])


def _url_market(url: str) -> Market | None:
    parts = urlsplit(url)
    host, segments = parts.netloc, set(parts.path.split("/"))
    if host.startswith(("fstream", "dstream", "fapi", "dapi")) or segments & {
        "fapi",
        "dapi",
        "public",
        "market",
    }:
        return "futures"
    if host.startswith(("stream.binance", "api", "data-api", "www.binance")) or "api" in segments:
        return "spot"
    return None


def _query_symbol(url: str) -> str | None:
    values = parse_qs(urlsplit(url).query).get("symbol")
    return values[0].upper() if values else None


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    for no, raw in enumerate(data.split(b"\n"), 1):
        line = raw.rstrip(b"\r")
        if line.strip():
            yield no, line


def _read_hftbacktest(lines: Iterable[tuple[int, bytes]], b: _Builder, name: str) -> None:
    for no, line in lines:
        ts_text, _, body = line.partition(b" ")
        try:
            ts = int(ts_text)
        except ValueError as exc:
            raise CaptureError(f"{name}:{no}: not '<ns> <json>'") from exc
        stream = _combined_name(body)
        if stream is not None:
            b.frame(ts, stream, body)
        elif body.startswith(b'{"lastUpdateId"') or b'"lastUpdateId":' in body[:200]:
            b.snapshot(ts, body, "", None)
        else:
            b.skipped += 1


def _read_ingestd_raw(lines: Iterable[tuple[int, bytes]], b: _Builder, name: str) -> None:
    for no, line in lines:
        parts = line.split(b" ", 2)
        if len(parts) != 3 or not parts[1].startswith(b"/"):
            raise CaptureError(f"{name}:{no}: not '<recv_ns> <source> <frame>'")
        try:
            ts = int(parts[0])
        except ValueError as exc:
            raise CaptureError(f"{name}:{no}: bad receive time {parts[0][:30]!r}") from exc
        source, frame = parts[1].decode(), parts[2]
        hint = _url_market(source)
        if hint is not None and hint not in b.hints:
            b.hints.append(hint)
        path = source.partition("?")[0]
        if path.startswith(("/fapi/", "/api/", "/dapi/")):
            if path.endswith("/depth"):
                b.snapshot(ts, frame, source, _query_symbol(source))
            else:
                b.skipped += 1
            continue
        stream = _combined_name(frame)
        if stream is not None:
            b.frame(ts, stream, frame)
            continue
        # A raw /ws/<name> connection carries bare payloads; one name in the path says whose.
        _, ws, names = path.partition("/ws/")
        if ws and names and "/" not in names and not frame.startswith(b'{"result"'):
            b.frame(ts, names, wrap(names, frame))
        else:
            b.skipped += 1


def _read_cryptofeed_ws(data: bytes, b: _Builder, name: str) -> None:
    lines = _lines(data)
    first = next(lines, None)
    if first is None or not (m := _CF_WS_HEADER.match(first[1])):
        raise CaptureError(f"{name}: not a cryptofeed websocket capture (no '<url> <-> <ts>' header)")
    hint = _url_market(m.group(1).decode())
    if hint is not None:
        b.hints.append(hint)
    for no, line in lines:
        lm = _CF_WS_LINE.match(line)
        if lm is None:
            raise CaptureError(f"{name}:{no}: not '<recv_ts>: <json>'")
        body = lm.group(2)
        stream = _combined_name(body)
        if stream is None:
            b.skipped += 1
        else:
            b.frame(_ns(lm.group(1)), stream, body)


def _read_cryptofeed_http(data: bytes, b: _Builder, name: str) -> None:
    for no, line in _lines(data):
        m = _CF_HTTP_LINE.match(line)
        if m is None:
            raise CaptureError(f"{name}:{no}: not '<url> -> <ts>: <body>'")
        url = m.group(1).decode()
        hint = _url_market(url)
        if hint is not None and hint not in b.hints:
            b.hints.append(hint)
        if urlsplit(url).path.endswith("/depth"):
            b.snapshot(_ns(m.group(2)), m.group(3), url, _query_symbol(url))
        else:
            b.skipped += 1


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw.startswith(_GZIP_MAGIC) else raw
    except FileNotFoundError as exc:
        raise CaptureError(f"capture not found: {path}") from exc
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise CaptureError(f"capture unreadable: {path}: {exc}") from exc


def _cryptofeed_sibling(path: Path, kind: str, n: int, x: str, m: str) -> Path | None:
    """``X.ws.N.0`` ↔ ``X.http.<N-1>.0`` (how cryptofeed numbers its recorder files)."""
    other = "http" if kind == "ws" else "ws"
    near = path.with_name(f"{x}.{other}.{n - 1 if kind == 'ws' else n + 1}.{m}")
    if near.is_file():
        return near
    found = sorted(path.parent.glob(f"{x}.{other}.*.{m}"))
    return found[0] if len(found) == 1 else None


def load_capture(path: Path | str) -> Capture:
    """Read one capture file (any of the three formats; gzip or plain), detecting the format.

    A cryptofeed ``X.ws.N.0`` brings its sibling ``X.http.<N-1>.0`` snapshots along (and the
    other way round). Raises :class:`CaptureError` for a missing, unreadable or unknown file.
    """
    path = Path(path)
    data = _read_bytes(path)
    name = str(path)
    head = next(_lines(data[:65536]), (0, b""))[1]
    b = _Builder()
    cf = _CF_FILE.match(path.name)
    if head.startswith(b"configuration: "):
        raise CaptureError(f"{name}: a cryptofeed exchangeInfo file; pass its X.ws.N.0 capture instead")
    if _CF_WS_HEADER.match(head) or _CF_HTTP_LINE.match(head):
        ws_path: Path | None = path
        http_path: Path | None = None
        if cf is not None:
            sib = _cryptofeed_sibling(path, cf["kind"], int(cf["n"]), cf["x"], cf["m"])
            ws_path, http_path = (path, sib) if cf["kind"] == "ws" else (sib, path)
        elif _CF_HTTP_LINE.match(head):
            ws_path, http_path = None, path
        if ws_path is not None:
            _read_cryptofeed_ws(data if ws_path == path else _read_bytes(ws_path), b, str(ws_path))
        if http_path is not None:
            _read_cryptofeed_http(data if http_path == path else _read_bytes(http_path), b, str(http_path))
        return b.finish(name, "cryptofeed")
    first_field, _, rest = head.partition(b" ")
    if first_field.isdigit() and rest.startswith(b"/"):
        _read_ingestd_raw(_lines(data), b, name)
        return b.finish(name, "ingestd-raw")
    if first_field.isdigit() and rest.startswith((b"{", b"[")):
        _read_hftbacktest(_lines(data), b, name)
        return b.finish(name, "hftbacktest")
    raise CaptureError(f"{name}: unknown capture format (first line starts {head[:60]!r})")


# --------------------------------------------------------------------------- timeline


def _keyed(ts: Sequence[int], shift: int, k: int) -> Iterator[tuple[int, int, int]]:
    """(shifted time, capture number, index) of each frame: the merge key keeps file order."""
    for i, t in enumerate(ts):
        yield t + shift, k, i


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """One stream of the timeline. ``symbol`` is lower-case (``None`` for ``!`` streams)."""

    sid: int
    market: Market
    name: str
    symbol: str | None
    kind: str

    @property
    def is_depth_diff(self) -> bool:
        return self.kind == "depth"


class Timeline:
    """All captures merged into one replay order, with lookups the venue needs.

    Captures that overlap in time are merged by receive time (each file keeps its own order);
    a capture that starts more than a minute after the others end is moved back to start where
    they end, so captures from different years do not make a paced replay wait years.
    """

    def __init__(self, captures: Sequence[Capture]) -> None:
        if not captures:
            raise CaptureError("no capture given")
        self.captures = tuple(captures)
        self.streams: list[StreamInfo] = []
        self._by_name: dict[tuple[Market, str], int] = {}
        self._by_key: dict[tuple[Market, str | None, str], int] = {}
        shifts = self._shifts()
        maps = [[self._sid(c.market, n) for n in c.streams] for c in self.captures]
        merged: Iterable[tuple[int, int, int]]
        if len(self.captures) == 1:
            c = self.captures[0]
            merged = ((t, 0, i) for i, t in enumerate(c.ts))
        else:
            merged = heapq.merge(*(_keyed(c.ts, shifts[k], k) for k, c in enumerate(self.captures)))
        self.ts: list[int] = []
        self.sid: list[int] = []
        self.frames: list[bytes] = []
        self.ordinal: list[int] = []
        self.counts: list[int] = [0] * len(self.streams)
        for t, k, i in merged:
            c = self.captures[k]
            s = maps[k][c.sid[i]]
            self.ts.append(t)
            self.sid.append(s)
            self.frames.append(c.frames[i])
            self.ordinal.append(self.counts[s])
            self.counts[s] += 1
        self.snapshots: dict[tuple[Market, str], list[Snapshot]] = {}
        for k, c in enumerate(self.captures):
            for snap in c.snapshots:
                shifted = Snapshot(snap.market, snap.symbol, snap.recv_ns + shifts[k], snap.body, snap.source)
                self.snapshots.setdefault((snap.market, snap.symbol), []).append(shifted)
        for lst in self.snapshots.values():
            lst.sort(key=lambda s: s.recv_ns)
        self._symbol_sids: dict[tuple[Market, str], list[int]] = {}
        for st in self.streams:
            if st.symbol is not None:
                self._symbol_sids.setdefault((st.market, st.symbol.upper()), []).append(st.sid)

    def _shifts(self) -> list[int]:
        spans = [(c.ts[0], c.ts[-1]) if c.ts else (0, 0) for c in self.captures]
        order = sorted(range(len(spans)), key=lambda k: spans[k][0])
        shifts = [0] * len(spans)
        end: int | None = None
        for k in order:
            start, stop = spans[k]
            if not self.captures[k].ts:
                continue
            if end is not None and start - end > _MAX_KEPT_GAP_NS:
                shifts[k] = end - start
            end = max(end if end is not None else stop + shifts[k], stop + shifts[k])
        return shifts

    def _sid(self, market: Market, name: str) -> int:
        sid = self._by_name.get((market, name))
        if sid is None:
            sid = len(self.streams)
            info = StreamInfo(sid, market, name, stream_symbol(name), stream_kind(name))
            self.streams.append(info)
            self._by_name[(market, name)] = sid
            self._by_key.setdefault((market, info.symbol, info.kind), sid)
        return sid

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def markets(self) -> set[Market]:
        return {c.market for c in self.captures}

    def resolve(self, market: Market, requested: str) -> int | None:
        """The stream that serves a subscription: same name, else same kind and symbol.

        The speed suffix never matters: a capture's ``btcusdt@depth@0ms`` serves a request
        for ``btcusdt@depth@100ms``.
        """
        sid = self._by_name.get((market, requested))
        if sid is not None:
            return sid
        sym = stream_symbol(requested)
        return self._by_key.get((market, sym.lower() if sym else None, stream_kind(requested)))

    def symbols(self, market: Market) -> list[str]:
        """Upper-case native symbols served on ``market``, sorted."""
        out = {sym for (m, sym) in self._symbol_sids if m == market}
        out.update(sym for (m, sym) in self.snapshots if m == market)
        return sorted(out)

    def symbol_sids(self, market: Market, symbol: str) -> list[int]:
        return self._symbol_sids.get((market, symbol.upper()), [])

    def data(self, i: int) -> bytes:
        """Frame ``i`` without its combined-stream wrapper (for raw ``/ws/<name>`` connections)."""
        return unwrap(self.streams[self.sid[i]].name, self.frames[i])

    def parsed(self, i: int) -> Any:
        """Frame ``i``'s ``data`` payload, decoded (slow path; snapshots and exchangeInfo only)."""
        return orjson.loads(self.frames[i])["data"]
