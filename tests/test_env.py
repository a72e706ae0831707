"""Environment variables: ``INGESTD_CONFIG`` names the config file, and every ``INGESTD_*``
spelling the documentation uses (README, config.yaml, docs/, the Dockerfile, deploy/, bench/) is
either a settings path that loads or one of the documented special variables."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import ingestd.app
import ingestd.observe.logging
from ingestd.cli import main
from ingestd.config import CONFIG_ENV, ENV_NOT_SETTINGS, ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"\bINGESTD_[A-Z0-9][A-Z0-9_]*")
# NAME=value (shell, Dockerfile, prose) or NAME: value (compose YAML), the value maybe quoted.
ASSIGNMENT = re.compile(r"\b(INGESTD_[A-Z0-9][A-Z0-9_]*)(?:=|:[ \t]+)([\"']?)([^\s\"'`\\)]+)\2")


def documentation() -> dict[Path, str]:
    """Every file a user reads for settings: README, config.yaml, docs/, Dockerfile, deploy/, bench/."""
    files = [ROOT / "README.md", ROOT / "config.yaml", ROOT / "Dockerfile", ROOT / "bench" / "README.md"]
    files += sorted((ROOT / "docs").glob("*.md")) + sorted(
        p for p in (ROOT / "deploy").iterdir() if p.is_file()
    )
    return {p: p.read_text(encoding="utf-8") for p in files if p.is_file()}


DOCS = documentation()
NAMES = sorted({m.group(0) for text in DOCS.values() for m in NAME.finditer(text)})
ASSIGNED = sorted({(m.group(1), m.group(3)) for text in DOCS.values() for m in ASSIGNMENT.finditer(text)})


def get(settings: Settings, path: str) -> Any:
    node: Any = settings
    for part in path.split("."):
        node = getattr(node, part)
    return node


def nested(path: str, value: str) -> dict[str, Any]:
    """``storage.data_dir``, v → ``{"storage": {"data_dir": v}}``."""
    *parents, leaf = path.split(".")
    tree: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        tree = {part: tree}
    return tree


def settings_path(name: str) -> str | None:
    """``INGESTD_STORAGE__DATA_DIR`` → ``storage.data_dir`` if that is a settings field, else None."""
    parts = name[len(ENV_PREFIX) :].lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        if i < len(parts) - 1:
            if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
                return None
            model = ann
    return ".".join(parts)


def test_the_documentation_names_the_variables_users_need() -> None:
    # The scan must see the spellings the Dockerfile and README rely on, or it checks nothing.
    assert {CONFIG_ENV, "INGESTD_STORAGE__DATA_DIR", "INGESTD_API_KEY"} <= set(NAMES)
    assert any(name == "INGESTD_LOG__FORMAT" for name, _ in ASSIGNED)


@pytest.mark.parametrize("name", NAMES)
def test_every_documented_variable_is_a_setting_or_special(name: str) -> None:
    where = [str(p.relative_to(ROOT)) for p, text in DOCS.items() if name in text]
    assert name in ENV_NOT_SETTINGS or settings_path(name) is not None, (
        f"{name} (in {', '.join(where)}) is neither a settings path nor one of {sorted(ENV_NOT_SETTINGS)}"
    )


@pytest.mark.parametrize(("name", "value"), ASSIGNED)
def test_every_documented_assignment_loads(name: str, value: str) -> None:
    """``INGESTD_X=value`` as written in the docs loads, and sets exactly the setting the dotted
    path names (the same value a config file or flag would give it)."""
    if name in ENV_NOT_SETTINGS:
        assert load_settings(environ={name: value}) == Settings()  # read elsewhere, never a setting
        return
    path = settings_path(name)
    assert path is not None
    from_env = load_settings(environ={name: value})
    from_tree = load_settings(environ={}, cli=nested(path, value))
    assert from_env == from_tree


def test_special_variables_are_not_settings() -> None:
    env = {CONFIG_ENV: "/etc/ingestd/config.yaml", "INGESTD_API_KEY": "secret", "INGESTD_DURATION_S": "4"}
    s = load_settings(environ=env)
    assert s.duration_s == 4.0
    assert "secret" not in s.model_dump_json()


def dockerfile_env() -> dict[str, str]:
    """The ``ENV`` instructions of the Dockerfile (``KEY=VALUE`` pairs, continuation lines joined)."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(tok.split("=", 1) for tok in line[4:].split() if "=" in tok)
    return env


class _CapturedError(Exception):
    """Raised by the fake Daemon to stop the run command once it has its settings."""


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """The settings ``ingestd run`` builds, captured where it would construct the Daemon."""
    seen: list[Settings] = []

    def fake_daemon(settings: Settings, **_: Any) -> Any:
        seen.append(settings)
        raise _CapturedError

    monkeypatch.setattr(ingestd.app, "Daemon", fake_daemon)
    # The run command sets up the `ingestd` logger tree; keep this process's logging as it is.
    monkeypatch.setattr(ingestd.observe.logging, "setup_logging", lambda *a, **k: None)
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    return seen


def test_the_dockerfile_environment_starts_the_run_command(
    captured: list[Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image's ``ENV`` (with its config file, the repository's config.yaml) loads cleanly."""
    env = dockerfile_env()
    assert CONFIG_ENV in env, "the Dockerfile names the config file with INGESTD_CONFIG"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(CONFIG_ENV, str(ROOT / "config.yaml"))  # COPY config.yaml → that path
    with pytest.raises(_CapturedError):
        main(["--symbols", "BTCUSDT"])
    (s,) = captured
    for key, value in env.items():
        path = settings_path(key)
        if path is not None:
            assert str(get(s, path)) == value, f"{key}={value} gave {path}={get(s, path)!r}"


def test_ingestd_config_names_the_file_that_is_read(
    captured: list[Settings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = tmp_path / "from-env.yaml"
    cfg.write_text("symbols: [ETHUSDT]\nduration_s: 12\nstorage:\n  data_dir: /srv/md\n")
    monkeypatch.setenv(CONFIG_ENV, str(cfg))
    monkeypatch.setenv("INGESTD_DURATION_S", "13")  # the environment still beats the file
    with pytest.raises(_CapturedError):
        main([])
    (s,) = captured
    assert (s.symbols, s.duration_s, s.storage.data_dir) == (("ETHUSDT",), 13.0, Path("/srv/md"))


def test_config_flag_beats_ingestd_config(
    captured: list[Settings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env_file, flag_file = tmp_path / "env.yaml", tmp_path / "flag.yaml"
    env_file.write_text("symbols: [ETHUSDT]\n")
    flag_file.write_text("symbols: [BNBUSDT]\n")
    monkeypatch.setenv(CONFIG_ENV, str(env_file))
    with pytest.raises(_CapturedError):
        main(["--config", str(flag_file)])
    assert captured[0].symbols == ("BNBUSDT",)


def test_a_bad_file_named_by_ingestd_config_is_one_line_and_exit_2(
    captured: list[Settings],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("venue: binance-nowhere\n")
    monkeypatch.setenv(CONFIG_ENV, str(cfg))
    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ingestd: config error: config file {cfg}: venue:"), err
    assert len(err.splitlines()) == 1
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "missing.yaml"))
    assert main([]) == 2
    assert f"config file {tmp_path / 'missing.yaml'}" in capsys.readouterr().err
    assert not captured
