"""``ingestd replay`` against a tree the daemon stored live from the sim (bundled real capture).

The live hook's calls are the ground truth: replay must give the same records, every field, in
the same order per (channel, symbol), with books rebuilt as of each record.
"""

from __future__ import annotations

import asyncio
import shutil
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pyarrow.parquet as pq
import pytest

from ingestd.book.book import OrderBook
from ingestd.book.records import Gap, GapKind
from ingestd.cli import main
from ingestd.config import StorageSettings
from ingestd.consumers.hooks import HookConsumer
from ingestd.consumers.parquet import ParquetWriter
from ingestd.errors import ConfigError
from ingestd.records import BookTicker, DepthDiff, Level, Record
from ingestd.replay import HookTarget, Replay, frame, records, run_hooks
from ingestd.replay.hooks import PACE_SLACK_S
from tests import replay_hooks
from tests.conftest import BUNDLED_CAPTURE
from tests.replay_data import Recorded, record

CHANNELS = "trade,book_ticker,depth_diff"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    return record(BUNDLED_CAPTURE, tmp_path_factory.mktemp("replay") / "data", channels=CHANNELS)


@pytest.fixture
def hooks() -> Iterator[None]:
    replay_hooks.reset()
    yield
    replay_hooks.reset()


def _by_key(recs: list[Record]) -> dict[tuple[str, str], list[Record]]:
    out: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in recs:
        out[(r.channel, r.symbol)].append(r)
    return out


def _replay(data: Path, *args: str) -> int:
    return main(["replay", "--data", str(data), *args])


def test_cli_replay_gives_the_live_hook_records_in_live_order(recorded: Recorded, hooks: None) -> None:
    assert _replay(recorded.data, "--hook", "tests.replay_hooks:record") == 0
    live, replayed = _by_key(recorded.live), _by_key(replay_hooks.SEEN)
    assert replayed.keys() == live.keys()
    for key, want in live.items():
        got = replayed[key]
        assert len(got) == len(want), key
        for a, b in zip(got, want, strict=True):
            assert type(a) is type(b)
            assert a == b, (key, a, b)  # every field: structs compare field by field
    counts = {ch: len(v) for (ch, _), v in replayed.items()}
    assert {ch: counts[ch] for ch in recorded.expected} == recorded.expected  # the capture's counts
    assert recorded.expected == {
        "trade": 21313,
        "book_ticker": 66089,
        "depth_diff": 6551,
        "depth_snapshot": 1,
    }
    assert counts["contract"] == 1


def test_python_api_matches_the_live_hook_too(recorded: Recorded) -> None:
    stream = records(recorded.data, channels=["trade", "depth_diff"], symbols=["BTCUSDT"])
    got = _by_key(list(stream))
    live = _by_key([r for r in recorded.live if r.channel in ("trade", "depth_diff")])
    assert got == live
    assert stream.books is None  # books=False by default in the notebook API


def test_two_replays_are_byte_identical(
    recorded: Recorded, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    assert _replay(recorded.data) == 0
    first = capsysbinary.readouterr().out
    assert _replay(recorded.data) == 0
    second = capsysbinary.readouterr().out
    assert first == second
    assert first.count(b"\n") == len(recorded.live)


class _TopBook(OrderBook):
    """The replay's book of a symbol, noting its top after every diff it applies."""

    tops: ClassVar[dict[int, tuple[Any, Any]]] = {}

    def apply(self, bids: Iterable[Level], asks: Iterable[Level], final_update_id: int | None = None) -> None:
        super().apply(bids, asks, final_update_id)
        if final_update_id is not None:
            self.tops[final_update_id] = (self.best_bid(), self.best_ask())


def test_replayed_books_match_every_book_ticker_at_a_diff_final_id(recorded: Recorded) -> None:
    _TopBook.tops = {}
    stream = Replay(recorded.data, channels=["book_ticker", "depth_diff"], book_factory=lambda c: _TopBook())
    as_of: dict[int, tuple[Any, Any]] = {}
    tickers: list[BookTicker] = []
    for rec in stream:
        if isinstance(rec, DepthDiff):
            view = stream.books.get(rec.symbol) if stream.books is not None else None
            if view is None:
                continue  # not synced yet: held for the snapshot, applied when it comes
            assert view.last_update_id == rec.final_update_id  # the book as of this diff, no later one
            as_of[rec.final_update_id] = (view.best_bid(), view.best_ask())
        elif isinstance(rec, BookTicker):
            tickers.append(rec)
    # Every state the replayed book went through (diffs held for the snapshot are applied inside
    # the snapshot's record, so ctx.books never shows those states; the book itself does).
    every = _TopBook.tops
    matched = [t for t in tickers if t.update_id in every]
    assert len(matched) == 629  # every bookTicker whose update id is a stored diff's final id
    for t in matched:
        assert every[t.update_id] == ((t.bid_price, t.bid_qty), (t.ask_price, t.ask_qty)), t
    seen = [t for t in matched if t.update_id in as_of]
    assert len(seen) > 500
    for t in seen:
        assert as_of[t.update_id] == every[t.update_id]
    books = stream.stats()["books"]
    assert (books["audit_mismatches"], books["resyncs"]) == (0, 0)


def test_window_is_event_time_and_books_warm_up(recorded: Recorded) -> None:
    trades = frame(recorded.data, "trade")
    ets = sorted(trades.column("exchange_ts").to_pylist())
    lo, hi = ets[10_000], ets[12_000]
    stream = records(recorded.data, channels=["trade", "depth_diff"], start=lo, end=hi, books=True)
    got: dict[str, int] = defaultdict(int)
    first_book = None
    for rec in stream:
        assert rec.exchange_ts is not None
        assert lo <= rec.exchange_ts < hi
        got[rec.channel] += 1
        if rec.channel == "depth_diff" and first_book is None:
            first_book = stream.books.get(rec.symbol) if stream.books is not None else None
            assert first_book is not None  # synced already: warmed up from the snapshot before lo
            assert first_book.last_update_id == rec.final_update_id
    assert got["trade"] == sum(lo <= e < hi for e in ets)
    diffs = frame(recorded.data, "depth_diff", start=lo, end=hi)
    assert got["depth_diff"] == diffs.num_rows > 0


def test_frame_is_one_channel_in_recv_order(recorded: Recorded) -> None:
    t = frame(recorded.data, "book_ticker", symbols=["BTC-USDT-PERP"])
    assert t.num_rows == 66089
    recv = t.column("recv_ts").to_pylist()
    assert recv == sorted(recv)
    assert set(t.column("symbol").to_pylist()) == {"BTC-USDT-PERP"}
    assert set(t.column("venue").to_pylist()) == {"binance-usdm"}
    live = [r for r in recorded.live if isinstance(r, BookTicker)]
    assert t.column("update_id").to_pylist() == [r.update_id for r in live]
    empty = frame(recorded.data, "kline")
    assert empty.num_rows == 0
    assert "close" in empty.column_names
    try:
        import polars  # noqa: F401, PLC0415
    except ImportError:
        with pytest.raises(ConfigError, match="pip install polars"):
            frame(recorded.data, "trade", polars=True)
    else:
        assert len(frame(recorded.data, "trade", polars=True)) == 21313


@pytest.mark.asyncio
async def test_speed_paces_calls_at_the_recorded_rate(recorded: Recorded, hooks: None) -> None:
    # The sim sent the capture at speed 0: its ~22 k trades arrived within about a second.
    replay = Replay(recorded.data, channels=["trade"], books=False)
    consumer = HookConsumer("paced", replay_hooks.paced, channels=None, timeout_s=5, context=replay.context)
    start = asyncio.get_running_loop().time()
    await run_hooks(replay, [HookTarget(consumer)], speed=2.0)
    calls = replay_hooks.CALLED_AT
    assert len(calls) == 21313
    r0, _ = calls[0]
    assert (calls[-1][0] - r0) / 1e9 > 0.1  # enough recorded time to pace
    for r, t in calls:
        # Never ahead of the recorded pace, counted from before the replay began (a lower bound
        # only: a busy machine is later, not earlier; the first call itself may come late, as it
        # waits for its batch, so it is no anchor).
        assert t - start >= (r - r0) / 1e9 / 2.0 - PACE_SLACK_S


def test_hook_errors_are_counted_not_fatal(recorded: Recorded, capsys: pytest.CaptureFixture[str]) -> None:
    assert _replay(recorded.data, "--channels", "trade", "--hook", "tests.replay_hooks:failing") == 0
    err = capsys.readouterr().err
    assert "hook tests.replay_hooks:failing: 21313 error(s), 0 timeout(s)" in err
    assert "hook refuses trade" in err


def _write_gap(data: Path, gap: Gap) -> None:
    async def write() -> None:
        writer = ParquetWriter(StorageSettings(data_dir=data), file_prefix="test")
        await writer.start()
        await writer.consume([gap])
        await writer.close()

    asyncio.run(write())


def test_gap_log_is_delivered_in_place_and_a_disconnect_discards_the_book(
    recorded: Recorded, tmp_path: Path, hooks: None
) -> None:
    data = tmp_path / "data"
    shutil.copytree(recorded.data, data)
    diffs = [r for r in recorded.live if isinstance(r, DepthDiff)]
    cut = diffs[3000]
    gap = Gap(
        venue=cut.venue, symbol=cut.symbol, native=cut.native, exchange_ts=None, recv_ts=cut.recv_ts + 1,
        kind=GapKind.DISCONNECT.value, reason="binance-usdm/public#0 disconnected: test", last_update_id=None,
        first_update_id=None, final_update_id=None, started_ts=cut.recv_ts + 1,
    )  # fmt: skip
    _write_gap(data, gap)
    assert _replay(data, "--channels", "depth_diff,gap", "--hook", "tests.replay_hooks:record") == 0
    seen = replay_hooks.SEEN
    at = seen.index(gap)
    assert seen[at - 1] == cut  # in place: right after the record it follows in recv_ts
    after = [
        u for rec, u, _, _ in replay_hooks.TOPS if isinstance(rec, DepthDiff) and rec.recv_ts > gap.recv_ts
    ]
    assert after
    assert all(u is None for u in after)  # no snapshot after the outage: the book stays down
    before = [
        u for rec, u, _, _ in replay_hooks.TOPS if isinstance(rec, DepthDiff) and rec.recv_ts < gap.recv_ts
    ]
    assert before[-1] == cut.final_update_id


def test_unreadable_files_are_named_skipped_and_counted(
    recorded: Recorded, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(recorded.data, data)
    venue = data / "venue=binance-usdm"
    (trade_file,) = sorted((venue / "channel=trade").rglob("*.parquet"))
    raw = trade_file.read_bytes()
    trade_file.write_bytes(raw[: len(raw) // 2])  # truncated: no footer
    ticker_file = max((venue / "channel=book_ticker").rglob("*.parquet"), key=lambda p: p.stat().st_size)
    ticker_rows = pq.ParquetFile(ticker_file).metadata.num_rows
    body = bytearray(ticker_file.read_bytes())
    body[1000:400_000] = bytes(399_000)  # data pages zeroed, footer intact
    ticker_file.write_bytes(bytes(body))
    junk = next((venue / "channel=depth_diff").glob("symbol=*/date=*")) / "junk.parquet"
    junk.write_bytes(b"not a parquet file at all")

    assert _replay(data, "--hook", "tests.replay_hooks:record") == 0  # goes on
    err = capsys.readouterr().err
    for bad in (trade_file, ticker_file, junk):
        assert str(bad) in err
    assert "3 unreadable file(s) skipped" in err
    assert f"{ticker_rows:,} rows lost" in err
    got = {k[0]: len(v) for k, v in _by_key(replay_hooks.SEEN).items()}
    assert "trade" not in got
    assert got["book_ticker"] == 66089 - ticker_rows
    assert got["depth_diff"] == 6551  # the rest is all there


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "{missing}"], "does not exist"),
        (["--data", "{file}"], "is not a directory"),
        (["--data", "{empty}"], "holds no stored data"),
        (["--data", "{data}", "--channels", "trade,bogus"], "unknown channel 'bogus'"),
        (["--data", "{data}", "--from", "2024-08-09", "--to", "2024-08-08"], "is not before --to"),
        (["--data", "{data}", "--from", "2024-13-45"], "not a date"),
        (["--data", "{data}", "--from", "yesterday"], "not a date"),
        (["--data", "{data}", "--to", "2024-08-08T10:00:00"], "give a time zone"),
        (["--data", "{data}", "--symbols", "ETHUSDT"], "no stored data for symbol ETHUSDT"),
        (["--data", "{data}", "--venue", "binance-spot"], "no stored data for venue binance-spot"),
        (["--data", "{data}", "--venue", "kraken"], "unknown venue 'kraken'"),
        (["--data", "{data}", "--hook", "tests.replay_hooks:nope"], "has no attribute 'nope'"),
        (["--data", "{data}", "--speed", "-1"], "must be >= 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    recorded: Recorded, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "nope", "file": tmp_path / "file", "empty": tmp_path / "empty"}
    argv = [a.format(data=recorded.data, **paths) for a in args]
    code = 0
    try:
        code = main(["replay", *argv])
    except SystemExit as exc:  # argparse's own errors (a malformed --speed)
        code = int(exc.code or 0)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err
    assert len(err.splitlines()) == 1, err
