"""Non-finite numbers are malformed input (issue 13).

msgspec's lax decoding (``strict=False``, which turns Binance's decimal strings into floats) and
``float()`` both accept ``"NaN"``, ``"inf"`` and ``"Infinity"``. A NaN price can never be deleted
from a book dict (``nan != nan``) and ``max()`` over it is undefined, so such a frame, REST body or
poller row is rejected by the parser (a counted ``ParseError``), on every channel, book levels
included. The frames are the real slices of ``tests/data/parse_frames.ndjson``; each numeric
string in them is replaced in turn.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from ingestd.app import Daemon
from ingestd.errors import ParseError
from ingestd.producers.discovery import discover
from ingestd.producers.pollers import POLLS, PollerSettings
from ingestd.producers.rest import RestClient
from ingestd.records import Record
from ingestd.sim import SimVenue
from ingestd.venues.binance import wire
from ingestd.venues.binance.endpoints import USDM, stream_kind
from ingestd.venues.binance.history import parse_agg_trades, parse_historical_trades
from ingestd.venues.binance.parse import parse_depth_snapshot
from ingestd.venues.binance.symbols import Contract
from tests.faults_util import (
    CF_FUTURES,
    CaptureTruth,
    admitted,
    assert_storage_is_capture,
    books_synced,
    fault_settings,
    gaps,
    real_capture,
    running,
    until,
)
from tests.test_parse import IN_SCOPE, RECV, SNAPSHOTS, VENUE, contract, parser_for

BAD = ("NaN", "inf", "-Infinity")
"""Strings msgspec (lax) and ``float()`` both turn into non-finite floats."""


def _numeric(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        float(v)
    except ValueError:
        return False
    return True


def _paths(node: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths of the numeric strings in a payload; of a level list, its first and last level."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*at, k))
    elif isinstance(node, list):
        picks = range(len(node)) if len(node) <= 2 else (0, len(node) - 1)
        for i in picks:
            yield from _paths(node[i], (*at, i))
    elif _numeric(node):
        yield at


def _replaced(data: Any, path: tuple[Any, ...], value: str) -> Any:
    out = orjson.loads(orjson.dumps(data))
    node = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return out


def _non_finite(rec: Record) -> list[str]:
    bad = []
    for name, v in msgspec.structs.asdict(rec).items():
        values = [x for lv in v for x in lv] if isinstance(v, list) else [v]
        if any(isinstance(x, float) and not math.isfinite(x) for x in values):
            bad.append(name)
    return bad


def _cases() -> list[tuple[str, dict[str, Any], tuple[Any, ...]]]:
    out = []
    for item in IN_SCOPE:
        frame = orjson.loads(item["frame"])
        out.extend((item["market"], frame, path) for path in _paths(frame["data"]))
    return out


CASES = _cases()


def test_the_slices_hold_numbers_on_every_channel() -> None:
    kinds = {stream_kind(c[1]["stream"]).lstrip("!").split("@")[0].split("_")[0] for c in CASES}
    want = {"depth", "depth20", "bookTicker", "trade", "aggTrade", "kline", "ticker", "markPrice"}
    assert want | {"forceOrder"} <= kinds
    assert len(CASES) > 300


@pytest.mark.parametrize("bad", BAD)
def test_a_non_finite_number_anywhere_in_a_frame_rejects_it(bad: str) -> None:
    """Each numeric string of each real frame, replaced by ``bad``: the frame is rejected with a
    ParseError naming the stream, or (a field ingestd does not keep) parses to exactly the
    records of the untouched frame. No record ever carries a non-finite number."""
    rejected = kept_unused = 0
    for market, frame, path in CASES:
        p = parser_for(market)
        _, want = p.parse(orjson.dumps(frame), RECV)
        broken = {**frame, "data": _replaced(frame["data"], path, bad)}
        try:
            _, got = p.parse(orjson.dumps(broken), RECV)
        except ParseError as exc:
            named = exc.stream
            assert named == frame["stream"]
            rejected += 1
            continue
        where = f"{frame['stream']} {'.'.join(map(str, path))}={bad}"
        assert not [_non_finite(r) for r in got if _non_finite(r)], f"{where}: non-finite record"
        assert got == want, f"{where}: parsed to other records"
        kept_unused += 1
    assert rejected > 300
    assert kept_unused < rejected / 10  # only fields no record keeps (kline "B", "ignore")


def test_non_finite_levels_reject_depth_diffs_on_the_cached_fast_path() -> None:
    """The second frame of a stream takes the one-pass route; the check must be there too."""
    market, frame, _ = next(c for c in CASES if c[1]["stream"].endswith("@depth@0ms"))
    p = parser_for(market)
    p.parse(orjson.dumps(frame), RECV)  # the route is cached now
    for side in ("b", "a"):
        for bad in BAD:
            data = _replaced(frame["data"], (side, 0, 0), bad)
            with pytest.raises(ParseError, match="non-finite"):
                p.parse(orjson.dumps({**frame, "data": data}), RECV)
            data = _replaced(frame["data"], (side, 0, 1), bad)  # a quantity
            with pytest.raises(ParseError, match="non-finite"):
                p.parse(orjson.dumps({**frame, "data": data}), RECV)


@pytest.mark.parametrize("item", SNAPSHOTS, ids=[f"{s['market']}:{s['native']}" for s in SNAPSHOTS])
def test_a_rest_snapshot_with_a_non_finite_level_is_a_bad_body(item: dict[str, Any]) -> None:
    venue = VENUE[item["market"]]
    c = contract(venue, item["native"])
    body = orjson.loads(item["body"])
    for side in ("bids", "asks"):
        for i in (0, len(body[side]) - 1):
            for j in (0, 1):
                broken = _replaced(body, (side, i, j), "NaN")
                with pytest.raises(ParseError, match="non-finite") as err:
                    parse_depth_snapshot(venue, c, orjson.dumps(broken), RECV)
                assert err.value.stream is not None
                assert "depth?symbol=" in err.value.stream


@pytest.mark.asyncio
async def test_poller_rows_with_non_finite_numbers_are_rejected(bundled_capture: Path) -> None:
    """Every poller's real (sim) answer, each numeric string replaced by NaN: a ParseError, or
    the same records (a field no record keeps)."""
    settings = PollerSettings.model_validate({p.key: 60.0 for p in POLLS})
    checked = rejected = 0
    async with SimVenue([bundled_capture]) as sim, RestClient(sim.rest_url, USDM) as client:
        (btc,) = await discover(client, USDM)
        for poll in POLLS:
            resp = await client.get(poll.path, poll.params(btc, settings), weight=poll.weight)
            body = resp.json()
            want = poll.parse(USDM.name, btc, body, 1, settings)
            assert want, poll.key
            for path in _paths(body):
                for bad in ("NaN", "inf", "1e999"):
                    broken = _replaced(body, path, bad)
                    checked += 1
                    try:
                        got = poll.parse(USDM.name, btc, broken, 1, settings)
                    except ParseError:
                        rejected += 1
                        continue
                    assert got == want, (poll.key, path, bad)
    assert checked > 30
    assert rejected > checked * 0.8


def _floats(t: Any, at: str) -> Iterator[tuple[str, Any]]:
    """Every float a msgspec type can hold, with where it sits."""
    if isinstance(t, msgspec.inspect.FloatType):
        yield at, t
    elif isinstance(t, msgspec.inspect.StructType):
        for f in t.fields:
            yield from _floats(f.type, f"{at}.{f.name}")
    elif isinstance(t, msgspec.inspect.UnionType):
        for u in t.types:
            yield from _floats(u, at)
    elif isinstance(t, msgspec.inspect.ListType):
        yield from _floats(t.item_type, f"{at}[]")
    elif isinstance(t, msgspec.inspect.TupleType):
        for i, u in enumerate(t.item_types):
            yield from _floats(u, f"{at}[{i}]")


def test_every_number_of_every_wire_shape_must_be_finite() -> None:
    """Whatever channel a payload belongs to (every stream, the REST depth snapshot), each of its
    floats, nested ones and book levels included, is decoded as a finite number."""
    shapes = [
        obj
        for obj in vars(wire).values()
        if isinstance(obj, type) and issubclass(obj, msgspec.Struct) and obj.__module__ == wire.__name__
    ]
    assert len(shapes) > 12
    found = [
        (f"{cls.__name__}{at}", t) for cls in shapes for at, t in _floats(msgspec.inspect.type_info(cls), "")
    ]
    assert len(found) > 60
    loose = [at for at, t in found if t.ge != -sys.float_info.max or t.le != sys.float_info.max]
    assert loose == []


@pytest.mark.asyncio
async def test_non_finite_frames_are_counted_per_stream_and_never_reach_books_or_storage(
    tmp_path: Path,
) -> None:
    """Before the real capture, the venue sends a copy of each public stream's first frame with a
    NaN price. Each copy is counted on its stream and skipped: the books sync on the real frames
    (no gap), and storage holds exactly the capture (the copy, had it passed, would have been
    stored and its real twin dropped as a duplicate of its id)."""
    truth = CaptureTruth.load(real_capture(CF_FUTURES))
    data = tmp_path / "data"
    bad: list[bytes] = []
    for name, (channel, _native) in sorted(truth.streams.items()):
        if channel not in ("depth_diff", "book_ticker"):
            continue
        first = truth.capture.frames[truth.capture.sid.index(truth.capture.streams.index(name))]
        frame = orjson.loads(first)
        path = next(p for p in _paths(frame["data"]) if p[0] in ("b", "a"))  # a price or a level
        bad.append(orjson.dumps({**frame, "data": _replaced(frame["data"], path, "NaN")}))
    async with SimVenue([CF_FUTURES], speed=20, resume="continue") as sim:
        sim.faults.stall(sticky=True)
        daemon = Daemon(fault_settings(sim, data, snapshots={"limit": 100, "weight_headroom": 1.0}))
        async with running(daemon):
            await until(lambda: sim.stats().connections_open == 2, what="connected")
            assert sim.faults.inject(bad, route="/public") == 1
            sim.faults.resume()
            await until(lambda: admitted(daemon) >= truth.count(), what="every good frame")
            await until(lambda: books_synced(daemon, truth.natives), what="books synced")
            stats = daemon.stats()["streams"]
    errors = {name: st["parse_errors"] for name, st in stats["streams"].items() if st["parse_errors"]}
    assert errors == {
        name: 1 for name, (ch, _) in truth.streams.items() if ch in ("depth_diff", "book_ticker")
    }
    assert stats["parse_errors"] == len(bad) == 8
    assert_storage_is_capture(data, truth)
    assert gaps(data) == []


@pytest.mark.parametrize(
    ("name", "parse"),
    [("http_spot_market_agg_trades.json", parse_agg_trades), ("http_spot_market_historical_trades.json",
                                                               parse_historical_trades)],
)  # fmt: skip
def test_rest_trade_history_with_a_non_finite_number_is_a_bad_body(
    realdata: Path, name: str, parse: Callable[..., list[Record]]
) -> None:
    """The backfill's REST history rows (real spot bodies, nautilus_trader): a non-finite price or
    quantity makes the body malformed, like a frame's."""
    spot_btc = Contract("binance-spot", "BTCUSDT", "BTC-USDT", "BTC", "USDT", 0.01, 2, 0.00001, 0.00001)
    body = orjson.loads((realdata / "nautilus_trader" / name).read_bytes())
    assert parse("binance-spot", spot_btc, orjson.dumps(body), 1)
    keys = [k for k in ("p", "q", "price", "qty") if k in body[0]]
    assert len(keys) == 2
    for key in keys:
        for bad in BAD:
            with pytest.raises(ParseError, match="non-finite"):
                parse("binance-spot", spot_btc, orjson.dumps(_replaced(body, (0, key), bad)), 1)
