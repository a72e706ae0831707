"""``ingestd export nautilus`` checked with nautilus_trader itself: its catalog, its OrderBook, a
real BacktestEngine. The stored trees are recorded live from the sim replaying real captures."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
from nautilus_trader.config import LoggingConfig, StrategyConfig
from nautilus_trader.model.book import OrderBook
from nautilus_trader.model.data import MarkPriceUpdate, OrderBookDeltas, QuoteTick, TradeTick
from nautilus_trader.model.enums import AccountType, AggressorSide, BookAction, BookType, OmsType, RecordFlag
from nautilus_trader.model.identifiers import InstrumentId, Venue
from nautilus_trader.model.objects import Currency, Money, Price, Quantity
from nautilus_trader.persistence.catalog import ParquetDataCatalog
from nautilus_trader.trading.strategy import Strategy

from ingestd.cli import main
from ingestd.config import StorageSettings
from ingestd.consumers.parquet import ParquetWriter
from ingestd.producers.contract_records import contract_records
from ingestd.records import Record
from ingestd.replay import frame
from ingestd.venues.binance.parse import FrameParser
from ingestd.venues.binance.symbols import parse_exchange_info
from tests.conftest import BUNDLED_CAPTURE
from tests.replay_data import Recorded, record

DATA = Path(__file__).parent / "data"
SPOT_CAPTURE = DATA / "spot_btcusdt_20240808_trades.gz"
KLINE_CAPTURE = DATA / "cryptofeed_usdm_klines.ws"


def _export(data: Path, catalog: Path, *args: str) -> int:
    return main(["export", "nautilus", "--data", str(data), "--catalog", str(catalog), *args])


@pytest.fixture(scope="module")
def usdm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recorded, ParquetDataCatalog]:
    root = tmp_path_factory.mktemp("nautilus")
    rec = record(BUNDLED_CAPTURE, root / "data", channels="trade,book_ticker,depth_diff")
    assert _export(rec.data, root / "catalog") == 0
    return rec, ParquetDataCatalog(str(root / "catalog"))


def _rows(data: Path, channel: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = frame(data, channel).to_pylist()
    return rows


def test_instrument_increments_are_the_stored_tick_and_step(
    usdm: tuple[Recorded, ParquetDataCatalog],
) -> None:
    rec, catalog = usdm
    (row,) = _rows(rec.data, "contract")
    (inst,) = catalog.instruments()
    assert type(inst).__name__ == "CryptoPerpetual"
    assert str(inst.id) == "BTCUSDT-PERP.BINANCE"
    assert Decimal(str(inst.price_increment)) == Decimal(row["tick_size"]) == Decimal("0.10")
    assert Decimal(str(inst.size_increment)) == Decimal(row["step_size"]) == Decimal("0.001")
    assert (inst.price_precision, inst.size_precision) == (1, 3)
    assert str(inst.quote_currency) == "USDT"
    assert inst.ts_init == row["recv_ts"]


def test_trade_ticks_equal_storage(usdm: tuple[Recorded, ParquetDataCatalog]) -> None:
    rec, catalog = usdm
    rows = _rows(rec.data, "trade")
    ticks = catalog.trade_ticks()
    assert len(ticks) == len(rows) == 21313
    for t, r in zip(ticks, sorted(rows, key=lambda r: r["recv_ts"]), strict=True):
        assert str(t.trade_id) == str(r["trade_id"])
        assert t.price == Price(r["price"], 1)
        assert t.size == Quantity(r["qty"], 3)
        assert t.aggressor_side == (AggressorSide.SELLER if r["is_buyer_maker"] else AggressorSide.BUYER)
        assert (t.ts_event, t.ts_init) == (r["exchange_ts"], r["recv_ts"])
        # On the tick grid: the exact decimal Binance wrote, nothing rounded.
        assert t.price.as_decimal() == Decimal(repr(r["price"]))
        assert t.size.as_decimal() == Decimal(repr(r["qty"]))


def test_quote_ticks_equal_storage(usdm: tuple[Recorded, ParquetDataCatalog]) -> None:
    rec, catalog = usdm
    rows = sorted(_rows(rec.data, "book_ticker"), key=lambda r: r["recv_ts"])
    quotes = catalog.quote_ticks()
    assert len(quotes) == len(rows) == 66089
    for q, r in zip(quotes, rows, strict=True):
        assert (q.bid_price, q.ask_price) == (Price(r["bid_price"], 1), Price(r["ask_price"], 1))
        assert (q.bid_size, q.ask_size) == (Quantity(r["bid_qty"], 3), Quantity(r["ask_qty"], 3))
        assert (q.ts_event, q.ts_init) == (r["exchange_ts"], r["recv_ts"])


def test_a_nautilus_order_book_fed_the_deltas_matches_every_book_ticker(
    usdm: tuple[Recorded, ParquetDataCatalog],
) -> None:
    rec, catalog = usdm
    (inst,) = catalog.instruments()
    tickers = {r["update_id"]: r for r in _rows(rec.data, "book_ticker")}
    diffs = {r["final_update_id"] for r in _rows(rec.data, "depth_diff")}
    deltas = catalog.order_book_deltas()
    assert deltas[0].action == BookAction.CLEAR
    assert deltas[0].flags & RecordFlag.F_SNAPSHOT
    (snap,) = _rows(rec.data, "depth_snapshot")
    assert deltas[0].sequence == snap["last_update_id"]
    book = OrderBook(inst.id, BookType.L2_MBP)
    checked = 0
    for d in deltas:
        book.apply_delta(d)
        if not d.flags & RecordFlag.F_LAST:
            continue
        assert book.sequence == d.sequence
        t = tickers.get(d.sequence)
        if t is None or d.sequence not in diffs:
            continue
        checked += 1
        got = (book.best_bid_price(), book.best_bid_size(), book.best_ask_price(), book.best_ask_size())
        want = (
            Price(t["bid_price"], 1),
            Quantity(t["bid_qty"], 3),
            Price(t["ask_price"], 1),
            Quantity(t["ask_qty"], 3),
        )
        assert got == want, d.sequence
    assert checked == 629  # every bookTicker whose update id is a stored diff's final id


class _CountConfig(StrategyConfig, frozen=True):
    instrument_id: InstrumentId


class _Counter(Strategy):
    """Counts what it is sent: trades, quotes and book deltas."""

    def __init__(self, config: _CountConfig) -> None:
        super().__init__(config)
        self.trades = self.quotes = self.deltas = 0

    def on_start(self) -> None:
        iid = self.config.instrument_id
        self.subscribe_trade_ticks(iid)
        self.subscribe_quote_ticks(iid)
        self.subscribe_order_book_deltas(iid, BookType.L2_MBP)

    def on_trade_tick(self, tick: TradeTick) -> None:
        self.trades += 1

    def on_quote_tick(self, tick: QuoteTick) -> None:
        self.quotes += 1

    def on_order_book_deltas(self, deltas: OrderBookDeltas) -> None:
        self.deltas += len(deltas.deltas)


def test_a_backtest_engine_runs_on_the_catalog_and_counts_it_all(
    usdm: tuple[Recorded, ParquetDataCatalog],
) -> None:
    _, catalog = usdm
    (inst,) = catalog.instruments()
    trades, quotes, deltas = catalog.trade_ticks(), catalog.quote_ticks(), catalog.order_book_deltas()
    engine = BacktestEngine(BacktestEngineConfig(logging=LoggingConfig(bypass_logging=True)))
    try:
        usdt = Currency.from_str("USDT")
        engine.add_venue(
            Venue("BINANCE"),
            OmsType.NETTING,
            AccountType.MARGIN,
            [Money(1_000_000, usdt)],
            book_type=BookType.L2_MBP,
        )
        engine.add_instrument(inst)
        for data in (deltas, quotes, trades):
            engine.add_data(data)
        strategy = _Counter(_CountConfig(instrument_id=inst.id))
        engine.add_strategy(strategy)
        engine.run()
        assert (strategy.trades, strategy.quotes, strategy.deltas) == (len(trades), len(quotes), len(deltas))
        assert len(deltas) > 400_000
    finally:
        engine.dispose()


def test_export_again_and_overlapping_is_idempotent(
    usdm: tuple[Recorded, ParquetDataCatalog], capsys: pytest.CaptureFixture[str]
) -> None:
    rec, catalog = usdm
    before = (len(catalog.trade_ticks()), len(catalog.quote_ticks()), len(catalog.order_book_deltas()))
    path = Path(catalog.path)
    assert _export(rec.data, path) == 0  # the same range again
    ets = sorted(r["exchange_ts"] for r in _rows(rec.data, "trade"))
    capsys.readouterr()
    assert _export(rec.data, path, "--from", str(ets[5000]), "--to", str(ets[9000])) == 0  # a part of it
    part = sum(ets[5000] <= e < ets[9000] for e in ets)
    assert f"{part:,} TradeTick" in capsys.readouterr().err
    cat = ParquetDataCatalog(str(path))
    trades = cat.trade_ticks()
    assert len(trades) == before[0]  # replaced in place, never doubled
    assert len({str(t.trade_id) for t in trades}) == before[0]
    assert len(cat.quote_ticks()) == before[1]
    assert len(cat.instruments()) == 1
    assert len(cat.order_book_deltas()) >= before[2]  # the part restarts its book from a snapshot


def test_window_export_starts_its_book_with_a_snapshot(
    usdm: tuple[Recorded, ParquetDataCatalog], tmp_path: Path
) -> None:
    rec, _ = usdm
    ets = sorted(r["exchange_ts"] for r in _rows(rec.data, "depth_diff"))
    lo, hi = ets[3000], ets[4000]
    assert _export(rec.data, tmp_path / "cat", "--from", str(lo), "--to", str(hi)) == 0
    cat = ParquetDataCatalog(str(tmp_path / "cat"))
    deltas = cat.order_book_deltas()
    assert deltas[0].action == BookAction.CLEAR
    assert deltas[0].flags & RecordFlag.F_SNAPSHOT
    sequences = [
        d.sequence for d in deltas if d.flags & RecordFlag.F_LAST and not d.flags & RecordFlag.F_SNAPSHOT
    ]
    in_window = [r["final_update_id"] for r in _rows(rec.data, "depth_diff") if lo <= r["exchange_ts"] < hi]
    assert sequences == sorted(in_window)[1:] or sequences == sorted(in_window)


def test_spot_exports_a_currency_pair_with_receive_time_quotes(tmp_path: Path) -> None:
    rec = record(
        SPOT_CAPTURE, tmp_path / "data", venue="binance-spot", channels="trade,book_ticker",
        expected={"trade": 9757, "book_ticker": 200},
    )  # fmt: skip
    assert _export(rec.data, tmp_path / "cat") == 0
    cat = ParquetDataCatalog(str(tmp_path / "cat"))
    (inst,) = cat.instruments()
    assert type(inst).__name__ == "CurrencyPair"
    assert str(inst.id) == "BTCUSDT.BINANCE"
    assert (inst.price_precision, inst.size_precision) == (2, 5)
    quotes = cat.quote_ticks()
    rows = sorted(_rows(rec.data, "book_ticker"), key=lambda r: r["recv_ts"])
    assert len(quotes) == len(rows) == 200
    assert all(r["exchange_ts"] is None for r in rows)  # spot bookTicker has no event time
    assert [(q.ts_event, q.ts_init) for q in quotes] == [(r["recv_ts"], r["recv_ts"]) for r in rows]
    assert len(cat.trade_ticks()) == 9757


def test_closed_klines_become_bars(tmp_path: Path) -> None:
    rec = record(
        KLINE_CAPTURE, tmp_path / "data", channels="kline,agg_trade",
        symbols="SUSHIUSDT,AKROUSDT,KEEPUSDT,CTKUSDT",
        expected={"kline": 67, "agg_trade": 91},
    )  # fmt: skip
    assert _export(rec.data, tmp_path / "cat") == 0
    cat = ParquetDataCatalog(str(tmp_path / "cat"))
    closed = [r for r in _rows(rec.data, "kline") if r["closed"]]
    assert len(closed) == 4  # the capture's four closed 1m bars
    bars = {str(b.bar_type.instrument_id): b for b in cat.bars()}
    assert len(bars) == 4
    insts = {str(i.id): i for i in cat.instruments()}
    for k in closed:
        b = bars[f"{k['native']}-PERP.BINANCE"]
        prec = insts[f"{k['native']}-PERP.BINANCE"].price_precision
        assert str(b.bar_type).endswith("-1-MINUTE-LAST-EXTERNAL")
        assert (b.open, b.high, b.low, b.close) == tuple(
            Price(k[f], prec) for f in ("open", "high", "low", "close")
        )
        assert b.volume.as_decimal() == Decimal(repr(k["volume"]))
        assert (b.ts_event, b.ts_init) == (k["close_time"], k["recv_ts"])
    # aggTrade is the only trade channel stored: it becomes the TradeTicks
    assert len(cat.trade_ticks()) == 91


def test_mark_prices_from_real_frames(tmp_path: Path) -> None:
    body = json.loads((DATA / "nautilus_trader" / "http_futures_market_exchange_info.json").read_text())
    contracts = parse_exchange_info("binance-usdm", body)
    parser = FrameParser("binance-usdm", contracts)
    out: list[Record] = list(contract_records(None, contracts, 1_617_300_000_000_000_000))
    recv = 1_617_309_000_000_000_000
    for line in (DATA / "parse_frames.ndjson").read_text().splitlines():
        item = json.loads(line)
        if item["market"] == "usdm" and "markPrice" in item["frame"]:
            recv += 1_000_000
            out += parser.parse(item["frame"].encode(), recv)[1]
    marks = [r for r in out if r.channel == "mark_price"]
    assert len(marks) >= 2

    async def store() -> None:
        writer = ParquetWriter(StorageSettings(data_dir=tmp_path / "data"))
        await writer.start()
        await writer.consume(out)
        await writer.close()

    asyncio.run(store())
    assert _export(tmp_path / "data", tmp_path / "cat") == 0
    got = ParquetDataCatalog(str(tmp_path / "cat")).query(MarkPriceUpdate)
    assert len(got) == len(marks)
    by_key = {(f"{r.native}-PERP.BINANCE", r.recv_ts): r for r in marks}
    assert len(by_key) == len(marks)
    for m in got:
        r = by_key[(str(m.instrument_id), m.ts_init)]
        assert m.value == Price(r.mark_price, 8)
        assert m.ts_event == r.exchange_ts


def test_without_the_extra_it_says_which_to_install(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['nautilus_trader'] = None  # as if the extra were not installed\n"
        "from ingestd.cli import main\n"
        f"argv = ['export', 'nautilus', '--data', {str(tmp_path)!r}, '--catalog', {str(tmp_path / 'c')!r}]\n"
        "sys.exit(main(argv))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr.strip()
        == "ingestd export nautilus: needs nautilus_trader: pip install 'ingestd[nautilus]'"
    )


def test_bad_export_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _export(tmp_path / "missing", tmp_path / "cat") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("does not exist")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "cat").exists()
