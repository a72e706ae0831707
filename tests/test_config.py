"""Settings: precedence and every error path, each a one-line message naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestd.config import Settings, load_settings
from ingestd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_config_yaml_equals_the_defaults() -> None:
    assert load_settings(config_path=ROOT / "config.yaml", environ={}) == Settings()


def test_precedence_defaults_file_env_cli(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "symbols: [BTCUSDT]\nstorage:\n  data_dir: /from/file\n  rotate_rows: 10\nduration_s: 5\n"
        "hooks:\n  timeout_s: 3\n"
    )
    env = {"INGESTD_STORAGE__DATA_DIR": "/from/env", "INGESTD_DURATION_S": "7", "HOME": "/x"}
    cli = {"duration_s": 9.0}
    s = load_settings(config_path=cfg, environ=env, cli=cli)
    assert s.symbols == ("BTCUSDT",)  # file only
    assert s.storage.rotate_rows == 10  # file only
    assert s.storage.data_dir == Path("/from/env")  # env beats file
    assert s.duration_s == 9.0  # cli beats env and file
    assert s.hooks.timeout_s == 3.0
    assert s.storage.rotate_seconds == Settings().storage.rotate_seconds  # default kept


def test_env_lists_and_case() -> None:
    s = load_settings(environ={"INGESTD_SYMBOLS": "btcusdt, ethusdt,BTCUSDT", "INGESTD_CHANNELS": "trade"})
    assert s.symbols == ("BTCUSDT", "ETHUSDT")
    assert s.channels == ("trade",)


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(Exception, match="frozen"):
        s.duration_s = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("cli", "expected"),
    [
        ({"storag": {}}, r"^command line: storag: unknown key; allowed here: venue, symbols"),
        (
            {"storage": {"bogus": 1}},
            r"^command line: storage\.bogus: unknown key; allowed here: enabled, data_dir",
        ),
        (
            {"storage": {"rotate_rows": -1}},
            r"storage\.rotate_rows: Input should be greater than 0 \(got -1\)",
        ),
        ({"storage": {"rotate_rows": "many"}}, r"storage\.rotate_rows: Input should be a valid integer"),
        ({"channels": "trade,bogus"}, r"channels: unknown channel 'bogus'; allowed: trade, agg_trade"),
        ({"channels": ""}, r"channels: at least one channel is needed"),
        ({"symbols": "BTC/USDT"}, r"symbols: symbol 'BTC/USDT' is malformed"),
        ({"symbols": "../etc"}, r"symbols: symbol '../etc' is malformed"),
        ({"venue": "kraken"}, r"venue: Input should be 'binance-usdm' or 'binance-spot' \(got 'kraken'\)"),
        ({"duration_s": -1}, r"duration_s: Input should be greater than or equal to 0"),
        (
            {"snapshots": {"poll_interval_s": -5}},
            r"snapshots\.poll_interval_s: Input should be greater than or",
        ),
        (
            {"rest_url": "fapi.binance.com"},
            r"rest_url: 'fapi.binance.com' is not an http\(s\):// or ws\(s\):// URL",
        ),
        ({"hooks": {"specs": ["nocolon"]}}, r"hooks\.specs: hook 'nocolon' is not MODULE:FUNC"),
        ({"hooks": {"policy": "drop_newest"}}, r"hooks\.policy: Input should be 'block' or 'drop_oldest'"),
        ({"log": {"level": "LOUD"}}, r"log\.level: Input should be"),
        ({"discovery": {"refresh_s": 5}}, r"discovery\.refresh_s: .* greater than or equal to 10"),
        ({"venue": "binance-spot", "channels": "mark_price"}, r"mark_price does not exist on binance-spot"),
        ({"streams": {"max_streams_per_connection": 2000}}, r"streams\.max_streams_per_connection: .*1024"),
        (
            {"streams": {"partial_depth_levels": 7}},
            r"streams\.partial_depth_levels: Input should be 5, 10 or 20",
        ),
    ],
)
def test_each_mistake_is_one_clear_line(cli: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        load_settings(environ={}, cli=cli)
    assert "\n" not in str(info.value)


def test_error_names_the_layer_it_came_from(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("storage:\n  rotate_rows: 0\n")
    with pytest.raises(ConfigError, match=r"^config file .*c\.yaml: storage\.rotate_rows"):
        load_settings(config_path=cfg, environ={})
    with pytest.raises(ConfigError, match=r"^environment: storage\.rotate_rows"):
        load_settings(environ={"INGESTD_STORAGE__ROTATE_ROWS": "0"})


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_settings(config_path=tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(config_path=bad, environ={})
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(config_path=scalar, environ={})
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_settings(config_path=empty, environ={}) == Settings()
