"""Sharding over the real spot exchangeInfo (1,695 symbols, 1,262 trading, cryptofeed 2021-10).

Deterministic, no overlap, union = everything, balanced, and a listing change moves nothing else.
Also checks the compose recipe's shards cover 1..N exactly once.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest
import yaml
from pydantic import BaseModel, ValidationError

from ingestd.errors import ConfigError
from ingestd.shard import ShardSpec, parse_shard, select_shard, shard_label, shard_of
from ingestd.venues.binance.symbols import ContractSet, parse_exchange_info

ROOT = Path(__file__).resolve().parents[1]
EXCHANGE_INFO = "cryptofeed/2021-10_head/BINANCE.0"


@pytest.fixture(scope="module")
def spot_info(realdata: Path) -> dict[str, object]:
    """The exchangeInfo body: the line ``https://api.binance.com/api/v3/exchangeInfo -> <ts>: <body>``."""
    for line in (realdata / EXCHANGE_INFO).read_bytes().splitlines():
        if line.startswith(b"https://api.binance.com/api/v3/exchangeInfo -> "):
            body: dict[str, object] = orjson.loads(line.partition(b": ")[2])
            return body
    raise AssertionError(f"no exchangeInfo line in {EXCHANGE_INFO}")


@pytest.fixture(scope="module")
def all_symbols(spot_info: dict[str, object]) -> list[str]:
    symbols = spot_info["symbols"]
    assert isinstance(symbols, list)
    names = [s["symbol"] for s in symbols]
    assert len(names) == len(set(names)) == 1695
    return names


@pytest.fixture(scope="module")
def contracts(spot_info: dict[str, object]) -> ContractSet:
    cs = parse_exchange_info("binance-spot", spot_info)
    assert len(cs) == 1262
    return cs


def test_parse_shard() -> None:
    assert parse_shard("2/4") == (2, 4)
    assert parse_shard(" 1 / 1 ") == (1, 1)
    for bad in ("0/4", "5/4", "2", "a/b", "2/0", "-1/4", "1/4/2", "", "1/5000"):
        with pytest.raises(ConfigError) as info:
            parse_shard(bad)
        assert info.value.key == "shard"
        assert "\n" not in str(info.value)
        assert "--shard" in str(info.value)


def test_shard_spec_settings_type() -> None:
    class M(BaseModel):
        shard: ShardSpec | None = None

    assert M().shard is None
    assert M(shard="3/8").shard == (3, 8)  # type: ignore[arg-type]
    assert M.model_validate({"shard": [2, 2]}).shard == (2, 2)
    with pytest.raises(ValidationError, match="K must be between 1 and N=2"):
        M.model_validate({"shard": "3/2"})


def test_shard_label() -> None:
    assert shard_label(2, 4) == "shard-2-of-4"


def test_assignment_is_pinned() -> None:
    """The hash is part of the on-disk contract: changing it would reshuffle running fleets."""
    assert [shard_of("BTCUSDT", n) for n in (1, 2, 3, 4, 8, 16)] == [1, 2, 2, 4, 6, 6]
    assert [shard_of("ETHUSDT", n) for n in (1, 2, 3, 4, 8, 16)] == [1, 1, 3, 4, 6, 6]
    assert [shard_of("XRPUSDT", n) for n in (2, 4, 16)] == [1, 1, 1]


def test_stable_across_processes() -> None:
    """Not Python's salted hash(): a fresh interpreter with another PYTHONHASHSEED agrees."""
    names = ["BTCUSDT", "ETHUSDT", "BNBBTC", "RUNEEUR", "LRCBTC"]
    code = f"from ingestd.shard import shard_of; print([shard_of(s, 7) for s in {names!r}])"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
        cwd=ROOT,
    ).stdout
    assert out.strip() == str([shard_of(s, 7) for s in names])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_partition_is_complete_disjoint_and_ordered(contracts: ContractSet, n: int) -> None:
    parts = [select_shard(contracts, k, n) for k in range(1, n + 1)]
    natives = [c for p in parts for c in p.natives]
    assert sorted(natives) == sorted(contracts.natives)  # union = all, no overlap
    assert len(natives) == len(set(natives))
    for k, part in enumerate(parts, start=1):
        assert part.venue == "binance-spot"
        assert all(shard_of(c.native, n) == k for c in part)
        # The shard keeps the discovery order and the same Contract objects.
        order = [c.native for c in contracts if c.native in part]
        assert part.natives == order
        assert all(part.get(c.native) is c for c in part)
    assert parts == [select_shard(contracts, k, n) for k in range(1, n + 1)]  # deterministic


@pytest.mark.parametrize("n", [2, 3, 4, 8, 16])
def test_balanced(all_symbols: list[str], n: int) -> None:
    sizes = Counter(shard_of(s, n) for s in all_symbols)
    assert set(sizes) == set(range(1, n + 1))
    mean = len(all_symbols) / n
    # Independent uniform draws: sigma ~ sqrt(mean); 4 sigma (+ a floor) is "balanced within reason".
    slack = max(4 * mean**0.5, 0.05 * mean)
    assert all(abs(size - mean) <= slack for size in sizes.values()), dict(sizes)


def test_removing_a_symbol_moves_no_other(contracts: ContractSet) -> None:
    n = 4
    before = {c.native: shard_of(c.native, n) for c in contracts}
    for gone in (contracts.natives[0], contracts.natives[700], "BTCUSDT"):
        smaller = ContractSet(contracts.venue, tuple(c for c in contracts if c.native != gone))
        after = {c.native: k for k in range(1, n + 1) for c in select_shard(smaller, k, n)}
        assert gone not in after
        assert after == {s: k for s, k in before.items() if s != gone}


def test_adding_a_shard_moves_only_to_the_new_one(all_symbols: list[str]) -> None:
    for n in (2, 4, 7):
        moved = [s for s in all_symbols if shard_of(s, n) != shard_of(s, n + 1)]
        assert all(shard_of(s, n + 1) == n + 1 for s in moved)
        share = len(moved) / len(all_symbols)
        assert abs(share - 1 / (n + 1)) < 0.05, share


def test_select_shard_rejects_bad_k(contracts: ContractSet) -> None:
    with pytest.raises(ValueError, match="between 1 and N"):
        select_shard(contracts, 0, 2)
    with pytest.raises(ValueError, match="positive"):
        shard_of("BTCUSDT", 0)


def test_compose_recipe_covers_every_shard_once() -> None:
    doc = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text(encoding="utf-8"))
    services = doc["services"]
    nats_cmd = services["nats"]["command"]
    assert "-js" in nats_cmd
    assert "nats-data:/data" in services["nats"]["volumes"]
    shards = []
    for name, svc in services.items():
        cmd = svc.get("command", [])
        if "--shard" not in cmd:
            continue
        assert svc["build"]["context"] == ".."
        assert (ROOT / svc["build"]["dockerfile"]).is_file(), name
        assert cmd[cmd.index("--nats-url") + 1] == "nats://nats:4222"
        shards.append(parse_shard(cmd[cmd.index("--shard") + 1]))
    assert len(shards) >= 2
    ns = {n for _, n in shards}
    assert len(ns) == 1, "every shard must agree on N"
    assert sorted(k for k, _ in shards) == list(range(1, ns.pop() + 1))
    tail_cmd = services["tail"]["command"]
    assert tail_cmd[0] == "tail"
    assert tail_cmd[tail_cmd.index("--nats-url") + 1] == "nats://nats:4222"
